"""The streaming world session: it replays a recording exactly as the evaluation's rollout,
integrates actions into poses, retrieves memory from its pool as the training windows do,
and refuses bad input without changing its state."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers import off_init, random_poses
from matrixgame.data.windows import WindowConfig, retrieve_memory
from matrixgame.geometry.frustum import Frusta, ViewVolume, frustum_samples
from matrixgame.inference.memory import MemoryPool
from matrixgame.inference.rollout import RolloutConfig, rollout
from matrixgame.inference.session import Start, WorldSession, replay
from matrixgame.models.dit import DIT_PRESETS, MatrixGameDiT
from matrixgame.models.vae import VAE_PRESETS, WanVAE

H = W = 64  # the tiny VAE: 16x -> 4x4 latents


def _world(current: int = 2, sink: bool = False, camera_rope: bool = False):
    torch.manual_seed(0)
    dit = MatrixGameDiT(DIT_PRESETS["tiny"]).eval()
    vae = WanVAE(VAE_PRESETS["tiny"]).eval()
    window = WindowConfig(past=2, current=current, memory=2, sink=sink, camera_rope=camera_rope)
    return SimpleNamespace(dit=dit, vae=vae, window=window, height=H, width=W, meta={})


def _clip(latents: int = 12, seed: int = 0) -> dict:
    """A latent clip: random latents and a smooth walk (so views overlap), random actions."""
    g = torch.Generator().manual_seed(seed)
    n = 1 + 4 * (latents - 1)
    yaw = torch.cumsum(torch.randn(n, generator=g, dtype=torch.float64) * 8, 0)
    from matrixgame.geometry import pose_from_angles

    pos = torch.cumsum(torch.randn(n, 3, generator=g, dtype=torch.float64), 0)
    pos[:, 2] = 0
    frame_c2w = pose_from_angles(pos, yaw, torch.zeros(n, dtype=torch.float64)).float()
    return {
        "latents": torch.randn(16, latents, 4, 4, generator=g),
        "c2w": frame_c2w[[0] + [4 * j for j in range(1, latents)]],
        "frame_c2w": frame_c2w,
        "keyboard": (torch.rand(n, 6, generator=g) > 0.7).float(),
        "mouse": torch.randn(n, 2, generator=g) * 0.1,
        "K": torch.tensor([32.0, 32.0, 32.0, 32.0]),
    }


@pytest.mark.parametrize(("sink", "camera_rope"), [(False, False), (True, False), (False, True)])
def test_replay_equals_the_evaluation_rollout_bit_for_bit(sink, camera_rope):
    world, clip = _world(sink=sink, camera_rope=camera_rope), _clip()
    context, total = 5, 11
    reference = rollout(world.dit, clip, context, total, world.window, H, W, 1.0,
                        RolloutConfig(steps=2, shift=3.0, seed=3))  # fmt: skip
    session = WorldSession(world, steps=2, shift=3.0, seed=3, metres_per_unit=1.0, decode=False)
    latents = replay(session, Start.from_clip(clip, context), clip, total)
    assert torch.equal(latents, reference.latents)
    session_off = WorldSession(world, steps=2, shift=3.0, seed=3, memory=False,
                               metres_per_unit=1.0, decode=False)  # fmt: skip
    off = rollout(world.dit, clip, context, total, world.window, H, W, 1.0,
                  RolloutConfig(steps=2, shift=3.0, memory=False, seed=3))  # fmt: skip
    assert torch.equal(replay(session_off, Start.from_clip(clip, context), clip, total),
                       off.latents)  # fmt: skip
    if camera_rope:  # the offsets reach the model (weights moved off their initial zeros)
        off_init(world.dit)
        runs = [rollout(world.dit, clip, context, total, window, H, W, 1.0,
                        RolloutConfig(steps=2, shift=3.0, seed=3)).latents[:, context:]
                for window in (world.window, _world(sink=sink).window)]  # fmt: skip
        assert not torch.allclose(*runs, atol=1e-4)


def test_a_noised_past_is_sampled_alike_in_the_session_and_the_rollout():
    """A world trained with noise on its past plays with its sampler's ``past_noise``: the
    session replays the rollout's latents bit for bit, and the noise changes them."""
    world, clip = _world(), _clip()
    off_init(world.dit)  # off the initial weights, so that the past's timestep matters
    context, total = 5, 9
    noisy = rollout(world.dit, clip, context, total, world.window, H, W, 1.0,
                    RolloutConfig(steps=2, shift=3.0, seed=3, past_noise=0.2))  # fmt: skip
    played = SimpleNamespace(**{**vars(world), "meta": {"sampler": {"past_noise": 0.2}}})
    session = WorldSession(played, steps=2, shift=3.0, seed=3, metres_per_unit=1.0, decode=False)
    assert session.past_noise == 0.2
    assert torch.equal(replay(session, Start.from_clip(clip, context), clip, total), noisy.latents)
    clean = rollout(world.dit, clip, context, total, world.window, H, W, 1.0,
                    RolloutConfig(steps=2, shift=3.0, seed=3))  # fmt: skip
    assert not torch.allclose(clean.latents[:, context:], noisy.latents[:, context:], atol=1e-3)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="past_noise"):
            WorldSession(world, past_noise=bad)


def test_steps_decode_in_stream_what_the_whole_sequence_decodes_to():
    world, clip = _world(), _clip()
    session = WorldSession(world, steps=2, metres_per_unit=1.0)
    start = Start.from_clip(clip, 3)
    frames, latents = [session.reset(start)], [start.latents]
    for _ in range(3):
        seg = session.step(torch.zeros(8, 6), torch.zeros(8, 2))
        assert seg.frames.shape == (8, H, W, 3) and seg.frames.dtype == np.uint8
        frames.append(seg.frames)
        latents.append(seg.latents)
    with torch.no_grad():
        whole = world.vae.decode(torch.cat(latents, 1)[None])[0]
    from matrixgame.train.vae_task import to_uint8

    expected = to_uint8(whole.permute(1, 2, 3, 0)).numpy()
    # the session decodes a segment's latents in one call, the whole sequence one latent a
    # call: the same sums, rounded apart at most by a level of uint8 here and there
    difference = np.abs(np.concatenate(frames).astype(int) - expected)
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3


def test_actions_are_integrated_into_poses_with_momentum():
    world = _world(current=1)
    session = WorldSession(world, steps=1, decode=False)  # doom kinematics
    clip = _clip()
    clip["keyboard"].zero_()  # standing still at the start
    clip["mouse"].zero_()
    session.reset(Start.from_clip(clip, 3))
    start = session.state.frame_c2w[-1].clone()
    forward = torch.zeros(4, 6)
    forward[:, 0] = 1  # W held
    first = session.step(forward, torch.zeros(4, 2)).c2w
    second = session.step(forward, torch.zeros(4, 2)).c2w
    steps = torch.cat([start[None], first, second])[:, :3, 3].diff(dim=0).norm(dim=1)
    assert steps[0] == 0  # the first new frame follows the context's last action (none)
    assert (steps[2:].diff() > 0).all()  # Doom's momentum: the speed builds up
    view = start[:3, 2]  # camera z (forward) in the world
    moved = second[-1, :3, 3] - start[:3, 3]
    assert torch.dot(moved, view) > 0.99 * moved.norm()  # straight ahead


def test_bad_input_is_refused_and_leaves_the_state_unchanged():
    world, clip = _world(), _clip()
    session = WorldSession(world, steps=1, metres_per_unit=1.0)
    with pytest.raises(ValueError, match="reset"):
        session.step(torch.zeros(8, 6), torch.zeros(8, 2))
    session.reset(Start.from_clip(clip, 3))
    before = session.state
    latents = before.latents.clone()
    bad = [
        (torch.zeros(4, 6), torch.zeros(4, 2), "keyboard \\[8, 6\\]"),
        (torch.zeros(8, 6), torch.full((8, 2), float("nan")), "NaN|finite"),
        (torch.full((8, 6), 0.5), torch.zeros(8, 2), "0 or 1"),
        (torch.zeros(8, 6), torch.full((8, 2), 1e6), "mouse deltas"),
        ("left", torch.zeros(8, 2), "."),
    ]
    for keyboard, mouse, message in bad:
        with pytest.raises(ValueError, match=message):
            session.step(keyboard, mouse)
        assert session.state is before and torch.equal(session.state.latents, latents)
    with pytest.raises(ValueError, match="Start"):
        session.reset("E1M1")
    with pytest.raises(ValueError, match="this world takes"):
        session.reset(Start.from_clip({**clip, "latents": torch.randn(16, 12, 2, 2)}, 3))
    with pytest.raises(ValueError, match="1..12 latents"):
        Start.from_clip(clip, 13)
    assert session.state is before


def test_an_image_start_generates_without_memory():
    world = _world()
    session = WorldSession(world, steps=1)
    image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    start = Start.from_image(world.vae, image, torch.tensor([32.0, 32.0, 32.0, 32.0]), H, W)
    assert session.reset(start).shape == (1, H, W, 3)
    seg = session.step(torch.zeros(8, 6), torch.zeros(8, 2))
    assert seg.memory_index == [] and seg.frames.shape == (8, H, W, 3)
    with pytest.raises(ValueError, match="uint8"):
        Start.from_image(world.vae, image.astype(np.float32), torch.ones(4), H, W)


def test_pool_retrieval_equals_the_training_windows_selection():
    g = torch.Generator().manual_seed(4)
    c2w = random_poses(300, g, extent=6.0)
    view = ViewVolume.from_fov(64, 64, 90.0, 0.1, 8.0)
    pool = MemoryPool(view)
    for start in range(0, 300, 7):  # added in uneven pieces, as a session does
        pool.add(torch.zeros(1, min(7, 300 - start), 1, 1), c2w[start : start + 7], start)
    for s, last in ((50, 52), (120, 125), (299, 299)):
        expected = retrieve_memory(c2w, s, last, 5, view)
        assert torch.equal(pool.retrieve(c2w[last], s, 5), expected)


def test_pool_cap_and_deduplication():
    g = torch.Generator().manual_seed(5)
    view = ViewVolume.from_fov(64, 64, 90.0, 0.1, 8.0)
    pool = MemoryPool(view, cap=10)
    c2w = random_poses(25, g, extent=4.0)
    pool.add(torch.arange(25.0).view(1, 25, 1, 1), c2w, 0)
    # the first, then the latest: down to 7/8 of the cap at once
    assert pool.positions.tolist() == [0, *range(17, 25)]
    pool.add(torch.full((1, 1, 1, 1), 25.0), random_poses(1, g, extent=4.0), 25)
    assert pool.positions.tolist() == [0, *range(17, 26)]  # up to the cap again
    assert pool.latent(torch.tensor([0, 20]))[0, :, 0, 0].tolist() == [0.0, 20.0]
    with pytest.raises(ValueError, match="not all in the pool"):
        pool.latent(torch.tensor([3]))
    same = torch.eye(4, dtype=torch.float64).repeat(6, 1, 1)  # six copies of one view
    same[3:, 0, 3] = 2.0  # three copies of a view beside it (partly overlapping)
    dup = MemoryPool(view)
    dup.add(torch.zeros(1, 6, 1, 1), same, 0)
    plain = dup.retrieve(same[1], 6, 2)
    unique = dup.retrieve(same[1], 6, 2, dedup=0.9)
    assert len(plain) == len(unique) == 2
    assert (same[plain][:, 0, 3] == 0).all()  # plain top-k: two copies of the same view
    assert sorted(same[unique][:, 0, 3].tolist()) == [0.0, 2.0]  # one of each view
    with pytest.raises(ValueError, match="cap"):
        MemoryPool(view, cap=1)


def test_a_session_outgrows_the_rope_table():
    """Past ``rope_positions`` latents the window's positions shift down together (RoPE is
    relative), so a long session keeps stepping."""
    from dataclasses import replace

    world = _world(current=2)
    world.dit = MatrixGameDiT(replace(DIT_PRESETS["tiny"], rope_positions=12)).eval()
    session = WorldSession(world, steps=1, metres_per_unit=1.0, decode=False)
    session.reset(Start.from_clip(_clip(), 5))
    for _ in range(6):  # to 17 latents, beyond the table of 12
        seg = session.step(torch.zeros(8, 6), torch.zeros(8, 2))
        assert torch.isfinite(seg.latents).all()
    assert session.state.length == 17 and session.state.latents.shape[1] == 2  # the tail
    memory, first = session._positions(torch.tensor([1, 9]), 14, 18)
    assert memory.tolist() == [0, 3] and first == 8


def test_a_pool_grown_one_latent_at_a_time_equals_one_built_at_once():
    g = torch.Generator().manual_seed(6)
    view = ViewVolume.from_fov(64, 64, 90.0, 0.1, 8.0)
    c2w = random_poses(70, g, extent=4.0)
    latents = torch.randn(3, 70, 2, 2, generator=g)
    for cap in (None, 40):
        whole, grown = MemoryPool(view, cap), MemoryPool(view, cap)
        whole.add(latents, c2w, 0)
        for i in range(70):
            grown.add(latents[:, i : i + 1], c2w[i : i + 1], i)
        assert len(grown) <= (cap or 70)
        keep = grown.positions
        assert torch.equal(grown.latent(keep), latents[:, keep])
        assert torch.equal(grown.pose(keep), c2w[keep])
        reference = Frusta.from_poses(c2w[keep], view)
        assert torch.equal(grown.frusta.planes, reference.planes)
        if cap is None:
            assert torch.equal(grown.latents, whole.latents)
            assert torch.equal(grown.retrieve(c2w[-1], 70, 4), whole.retrieve(c2w[-1], 70, 4))


def test_the_releases_reference_scheme_equals_its_per_frame_selection():
    from matrixgame.geometry.frustum import select_memory_reference

    g = torch.Generator().manual_seed(7)
    view = ViewVolume.from_fov(64, 64, 90.0, 0.1, 8.0)
    c2w = random_poses(40, g, extent=3.0)
    pool = MemoryPool(view)
    pool.add(torch.randn(2, 40, 1, 1, generator=g), c2w, 0)
    refs = random_poses(5, g, extent=3.0)
    chosen = pool.retrieve_by_reference(refs, 30)
    everything = torch.cat([c2w, refs])
    reference, _ = select_memory_reference(everything, list(range(40, 45)), list(range(1, 30)),
                                           view, frustum_samples(view))  # fmt: skip
    assert chosen.tolist() == reference
    world, clip = _world(), _clip()
    session = WorldSession(world, steps=1, metres_per_unit=1.0, decode=False,
                           retrieval="reference")  # fmt: skip
    latents = replay(session, Start.from_clip(clip, 5), clip, 11)
    assert latents.shape[1] == 11 and torch.isfinite(latents).all()
    with pytest.raises(ValueError, match="retrieval"):
        WorldSession(world, retrieval="nearest")


def test_guidance_adds_each_dropped_conditions_difference():
    """Classifier-free guidance on the actions and the memory: one Euler step is linear in
    the velocity, so the guided sample is x + (a - 1) (x - x_null_actions) + (m - 1) (x -
    x_no_memory) of the unguided samples from the same noise (the actions' branch batched
    with the window); the session takes the world's weights unless told otherwise."""
    from matrixgame.data.windows import window_inputs, with_null_actions, without_memory
    from matrixgame.inference.rollout import Guidance, denoise_window

    world, clip = _world(), _clip()
    off_init(world.dit, 0.05)  # a trained model's action layers are not at their zero init
    item = window_inputs(clip, 3, world.window, H, W, 1.0, 2, True)
    batch = {k: v[None] for k, v in item.items()}
    assert batch["memory"].shape[2] == 2

    def sample(b, actions=1.0, memory=1.0):
        gen = torch.Generator().manual_seed(5)
        return denoise_window(world.dit, b, 2, steps=1, shift=3.0, generator=gen,
                              guidance=Guidance(actions, memory))  # fmt: skip

    x, x_na, x_nm = sample(batch), sample(with_null_actions(batch)), sample(without_memory(batch))
    assert not torch.allclose(x, x_na) and not torch.allclose(x, x_nm)  # both matter
    for a, m in ((0.0, 1.0), (2.5, 1.0), (1.0, 3.0), (2.0, 1.5)):
        expected = x + (a - 1) * (x - x_na) + (m - 1) * (x - x_nm)
        torch.testing.assert_close(sample(batch, a, m), expected, rtol=1e-4, atol=1e-5)
    # a window without memory has nothing to guide
    torch.testing.assert_close(sample(without_memory(batch), 1.0, 3.0), x_nm)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="guidance"):
            Guidance(actions=bad)
    guided = SimpleNamespace(**{**vars(world), "meta": {"sampler": {"guidance": {"actions": 2.5}}}})
    assert WorldSession(guided).guidance == Guidance(2.5, 1.0)
    assert WorldSession(guided, guidance={"memory": 2.0}).guidance == Guidance(2.5, 2.0)
    assert WorldSession(guided, guidance=Guidance()).guidance == Guidance()
    with pytest.raises(ValueError, match="guidance"):
        WorldSession(world, guidance={"memory": -2})
    with pytest.raises(ValueError, match="guidance"):
        WorldSession(world, guidance={"action": 2})


def test_a_world_folders_guidance_is_checked_and_played_with(tmp_path):
    from helpers import make_world_folder
    from matrixgame.inference.rollout import Guidance
    from matrixgame.worlds import shipped

    folder = make_world_folder(tmp_path / "world")
    config = shipped.read_config(folder)
    for bad in ({"actions": -1}, {"actions": "4"}, {"actions": True}, {"action": 4}, [4]):
        shipped.write_config(folder, {**config, "sampler": {**config["sampler"], "guidance": bad}})
        with pytest.raises(ValueError, match="sampler.guidance"):
            shipped.read_config(folder)
    good = {**config["sampler"], "guidance": {"actions": 3.0}}
    shipped.write_config(folder, {**config, "sampler": good})
    assert WorldSession(shipped.load_world(folder)).guidance == Guidance(3.0, 1.0)
    for bad in (1.0, -0.5, "0.2", True, float("nan")):
        shipped.write_config(folder, {**config, "sampler": {**good, "past_noise": bad}})
        with pytest.raises(ValueError, match="sampler.past_noise"):
            shipped.read_config(folder)
    shipped.write_config(folder, {**config, "sampler": {**good, "past_noise": 0.15}})
    assert WorldSession(shipped.load_world(folder)).past_noise == 0.15


def _facing(yaw: float, frames: int) -> torch.Tensor:
    """``[frames, 4, 4]`` poses at the origin, all facing ``yaw`` degrees."""
    from matrixgame.geometry import pose_from_angles

    zeros = torch.zeros(frames, dtype=torch.float64)
    return pose_from_angles(torch.zeros(frames, 3, dtype=torch.float64),
                            zeros + yaw, zeros)  # fmt: skip


def test_a_revisit_is_generated_from_its_memory_alone():
    """Facing the start's view again after turning away: the memory sees the window's view
    and the past does not, so with a revisit margin the window is generated from memory
    alone (the model gets the current latents without the past, as training's drop-past
    mode); facing away it keeps its past; without a margin never. Bad margins are named."""
    world = _world()
    clip = _clip(latents=5)
    clip["frame_c2w"], clip["c2w"] = _facing(0, 17), _facing(0, 5)
    calls = []
    forward = world.dit.forward

    def spy(x, *args, **kwargs):
        calls.append(x.shape[2])
        return forward(x, *args, **kwargs)

    world.dit.forward = spy
    keyboard, mouse = torch.zeros(8, 6), torch.zeros(8, 2)
    for margin, want in ((0.0, [False, False, True]), (None, [False, False, False])):
        session = WorldSession(world, steps=1, decode=False, revisit_margin=margin)
        session.reset(Start.from_clip(clip, 5))
        seen = []
        for yaw in (180, 180, 0):  # turn away, stay, face the start again
            calls.clear()
            segment = session.step(keyboard, mouse, c2w=_facing(yaw, 8))
            seen.append(segment.from_memory)
            assert calls == [2 if segment.from_memory else 4]  # current (+ past) latents
            assert len(segment.memory_index) == 2
        assert seen == want, margin
    for bad in (2.0, "0", True):
        with pytest.raises(ValueError, match="revisit_margin"):
            WorldSession(world, revisit_margin=bad)
    world.meta = {"sampler": {"revisit_margin": -3}}
    with pytest.raises(ValueError, match="revisit_margin"):
        WorldSession(world)


def test_the_pool_scores_given_positions_as_a_batched_overlap_does():
    from matrixgame.geometry.frustum import overlap_sampled

    g = torch.Generator().manual_seed(6)
    c2w = random_poses(40, g, extent=6.0)
    view = ViewVolume.from_fov(64, 64, 90.0, 0.1, 8.0)
    pool = MemoryPool(view, cap=16)
    for start in range(0, 40, 5):
        pool.add(torch.zeros(1, 5, 1, 1), c2w[start : start + 5], start)
    kept = pool.positions  # the first latent and the latest ones (the cap evicted the rest)
    want = overlap_sampled(c2w[7], c2w[kept[[0, 3, -1]]], view)
    assert torch.equal(pool.overlap(c2w[7], kept[[0, 3, -1]]), want)
    with pytest.raises(ValueError, match="not all in the pool"):
        pool.overlap(c2w[7], torch.tensor([2]))  # evicted


def test_the_evaluation_plays_each_worlds_revisit_margin_unless_told_another():
    from matrixgame.eval.protocols import EvalConfig, eval_session

    world = _world()
    world.meta = {"sampler": {"revisit_margin": 0.0}}
    assert eval_session(world, EvalConfig(), True, 1.0).revisit_margin == 0.0
    assert eval_session(world, EvalConfig(revisit_margin=1.0), True, 1.0).revisit_margin == 1.0
    world.meta = {}
    assert eval_session(world, EvalConfig(), True, 1.0).revisit_margin is None
