"""Worlds whose autoencoder packs fewer frames into a latent than Wan2.2's four (2 or 1, for
fast-moving games): the VAE, the latent cache, the training windows, the session and the
world config all follow the VAE's temporal factor."""

from dataclasses import asdict, replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from matrixgame.data.shards import Clip
from matrixgame.data.windows import WindowConfig
from matrixgame.geometry import pose_from_angles
from matrixgame.inference.rollout import RolloutConfig, rollout
from matrixgame.inference.session import Start, WorldSession, replay
from matrixgame.models.dit import DIT_PRESETS, MatrixGameDiT
from matrixgame.models.vae import VAE_PRESETS, FeatureCache, WanVAE
from matrixgame.train.latents import latent_clip

H = W = 64
TEMPORAL = {4: (False, True, True), 2: (False, False, True), 1: (False, False, False)}


def _vae(f: int) -> WanVAE:
    torch.manual_seed(0)
    return WanVAE(replace(VAE_PRESETS["tiny"], temporal_downsample=TEMPORAL[f])).eval()


def _world(f: int, current: int = 2) -> SimpleNamespace:
    tiny = DIT_PRESETS["tiny"]
    torch.manual_seed(0)
    dit = MatrixGameDiT(replace(tiny, action=replace(tiny.action, frames_per_latent=f))).eval()
    window = WindowConfig(past=2, current=current, memory=2, frames_per_latent=f)
    return SimpleNamespace(dit=dit, vae=_vae(f), window=window, height=H, width=W, meta={})


def _recording(frames: int, seed: int = 0) -> Clip:
    """A recorded clip: random frames along a smooth walk with random actions."""
    g = torch.Generator().manual_seed(seed)
    yaw = torch.cumsum(torch.randn(frames, generator=g, dtype=torch.float64) * 5, 0)
    pos = torch.cumsum(torch.randn(frames, 3, generator=g, dtype=torch.float64), 0)
    pos[:, 2] = 0
    video = torch.randint(0, 256, (frames, H, W, 3), generator=g, dtype=torch.uint8)
    return Clip(video.numpy(), pose_from_angles(pos, yaw, torch.zeros(frames)).numpy(),
                np.array([32.0, 32.0, 32.0, 32.0]),
                (torch.rand(frames, 6, generator=g) > 0.7).float().numpy(),
                (torch.randn(frames, 2, generator=g) * 0.1).numpy(), np.arange(frames), None,
                {"width": W, "height": H})  # fmt: skip


@pytest.mark.parametrize("f", [2, 1])
def test_the_vae_streams_f_frames_per_latent_equal_to_whole_clips(f):
    vae = _vae(f)
    x = torch.rand(1, 3, 1 + 3 * f, H, W) * 2 - 1
    with torch.no_grad():
        whole = vae.encode(x)
        assert whole.shape[2] == 4  # the first frame alone, then f frames per latent
        cache = FeatureCache()
        pieces = [vae.encode(x[:, :, : 1 + f], cache), vae.encode(x[:, :, 1 + f :], cache)]
        torch.testing.assert_close(torch.cat(pieces, 2), whole, rtol=1e-4, atol=1e-5)
        video = vae.decode(whole)
        assert video.shape[2] == 1 + 3 * f
        cache = FeatureCache()
        streamed = torch.cat([vae.decode(whole[:, :, i : i + 1], cache) for i in range(4)], 2)
        torch.testing.assert_close(streamed, video, rtol=1e-4, atol=1e-5)
        if f > 1:
            with pytest.raises(ValueError, match=f"1 \\+ {f}k frames"):
                vae.encode(x[:, :, : 1 + f + 1])


def test_latent_clips_take_each_latents_pose_from_its_last_frame():
    clip = _recording(21)
    lat = latent_clip(_vae(2), clip, H, W)
    assert lat["latents"].shape[1] == 11 and len(lat["frame_c2w"]) == 21
    torch.testing.assert_close(lat["c2w"], torch.as_tensor(clip.c2w[::2], dtype=torch.float32))


@pytest.mark.parametrize("f", [2, 1])
def test_a_session_replays_a_recording_exactly_as_the_reference_rollout(f):
    world = _world(f)
    lat = latent_clip(world.vae, _recording(1 + 11 * f), H, W)
    context, total = 5, 11
    reference = rollout(world.dit, lat, context, total, world.window, H, W, 1.0,
                        RolloutConfig(steps=2, shift=3.0, seed=3))  # fmt: skip
    session = WorldSession(world, steps=2, shift=3.0, seed=3, metres_per_unit=1.0, decode=False)
    start = Start.from_clip(lat, context, frames_per_latent=f)
    assert torch.equal(replay(session, start, lat, total), reference.latents)
    assert reference.frames == 1 + 10 * f


def test_a_segment_is_f_frames_per_latent_and_its_poses_follow_the_actions():
    world = _world(2, current=2)
    lat = latent_clip(world.vae, _recording(21), H, W)
    session = WorldSession(world, steps=1, seed=0)
    frames = session.reset(Start.from_clip(lat, 5, frames_per_latent=2))
    assert len(frames) == 9 and session.frames_per_step == 4
    forward = torch.zeros(4, 6)
    forward[:, 0] = 1
    seg = session.step(forward, torch.zeros(4, 2))
    assert seg.frames.shape == (4, H, W, 3) and seg.c2w.shape == (4, 4, 4)
    # the new latents' poses are their last frames' (frames 1 and 3 of the segment)
    torch.testing.assert_close(session.state.c2w[-2:], seg.c2w[1::2])
    with pytest.raises(ValueError, match="keyboard \\[4, 6\\]"):
        session.step(torch.zeros(8, 6), torch.zeros(8, 2))
    with pytest.raises(ValueError, match="hold 4 frames each; this world's hold 2"):
        session.reset(Start.from_clip(lat, 3))  # a start cut at 4 frames per latent


def test_windows_refuse_latents_of_another_frames_per_latent(tmp_path):
    from helpers import make_dataset
    from matrixgame.train.latents import LatentClips, cache_latents
    from matrixgame.train.memory_sampling import WindowDataset

    data = make_dataset(tmp_path / "data", clips=1, frames=41, height=H, width=W)
    cache_latents(data, _vae(2), tmp_path / "latents", H, W, progress=False)
    clips = LatentClips(tmp_path / "latents")
    assert clips.frames_per_latent == 2 and clips.clips[0]["latents"].shape[1] == 21
    item = WindowDataset(clips, WindowConfig(past=2, current=2, memory=2, frames_per_latent=2))[0]
    assert item["keyboard"].shape == (8, 6)  # f (P + C) frames of actions
    with pytest.raises(ValueError, match="hold 2 frames each, the window expects 4"):
        WindowDataset(clips, WindowConfig(past=2, current=2, memory=2))


def test_a_world_config_must_agree_with_its_vae_on_frames_per_latent(tmp_path):
    from helpers import make_world_folder
    from matrixgame.worlds import shipped

    folder = make_world_folder(tmp_path / "world")
    config = shipped.read_config(folder)
    config["window"] = {**config["window"], "frames_per_latent": 2}
    shipped.write_config(folder, config)
    with pytest.raises(ValueError, match="window.frames_per_latent is 2, the tiny VAE's"):
        shipped.read_config(folder)
    config["window"]["frames_per_latent"] = 0
    shipped.write_config(folder, config)
    with pytest.raises(ValueError, match="window"):
        shipped.read_config(folder)
    assert asdict(WindowConfig())["frames_per_latent"] == 4  # older configs: Wan2.2's four


def test_clip_windows_follow_the_vaes_latent_schedule(tmp_path):
    """A VAE of f frames per latent trains on windows of 1 + f k frames, memory on its grid."""
    from helpers import make_dataset
    from matrixgame.data.dataset import ClipDataset

    root = make_dataset(tmp_path / "data", frames=24)
    ds = ClipDataset(root, frames=7, memory=3, frames_per_latent=2)  # 1 + 2 * 3
    item = ds[len(ds) - 1]
    assert item["frames"].shape[0] == 7
    chosen = item["memory_index"][item["memory_valid"]]
    assert len(chosen) == 3 and ((chosen - 1) % 2 == 0).all() and (chosen < item["start"]).all()
    with pytest.raises(ValueError, match=r"frames must be 1 \+ 2k"):
        ClipDataset(root, frames=6, frames_per_latent=2)
    with pytest.raises(ValueError, match=r"frames must be 1 \+ 4k"):
        ClipDataset(root, frames=7)  # the default: four frames per latent
