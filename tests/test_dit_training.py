"""Memory windows, the error-aware objective, and a short run that learns."""

import json

import pytest
import torch

from helpers import make_dataset
from matrixgame.data.windows import WindowConfig, window_kwargs, without_past
from matrixgame.diffusion.flow_matching import add_noise, flow_matching_loss
from matrixgame.models.actions import ActionConfig
from matrixgame.models.dit import DiTConfig, MatrixGameDiT
from matrixgame.models.vae import VAE_PRESETS, WanVAE
from matrixgame.train.dit_task import DiTTask
from matrixgame.train.latents import LatentClips, cache_latents
from matrixgame.train.memory_sampling import WindowDataset
from matrixgame.train.trainer import TrainConfig, Trainer, _collate

SMALL = DiTConfig(
    dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=16, out_dim=16, text_dim=8, text_len=1,
    action=ActionConfig(blocks=(0,), heads=2, hidden_size=8, keyboard_hidden_dim=32,
                        mouse_hidden_dim=32, rope_dim_list=(4, 6, 6)),
)  # fmt: skip


@pytest.fixture(scope="module")
def latents(module_tmp):
    root = module_tmp("lat")
    data = make_dataset(root / "data", clips=2, frames=57, height=64, width=64)
    torch.manual_seed(0)
    vae = WanVAE(VAE_PRESETS["tiny"]).eval()
    cache_latents(data, vae, root / "latents", 64, 64, progress=False)
    return LatentClips(root / "latents")


def test_windows_take_memory_from_before_the_window(latents):
    ds = WindowDataset(latents, WindowConfig(past=2, current=3, memory=2, stride=1))
    assert latents.clips[0]["latents"].shape == (16, 15, 4, 4)  # 57 frames -> 15 latents
    for i in range(len(ds)):
        item = ds[i]
        start = int(item["first_index"])
        assert (item["memory_index"] >= 1).all() and (item["memory_index"] < start).all()
        assert item["memory_index"].tolist() == sorted(item["memory_index"].tolist())
        assert item["past"].shape[1] == 2 and item["current"].shape[1] == 3
        assert item["keyboard"].shape == (20, 6) and item["mouse"].shape == (20, 2)
        assert item["plucker"].shape == (6 * 16 * 16, 2 + 5, 4, 4)


def test_sink_latent_leads_the_memory(latents):
    ds = WindowDataset(latents, WindowConfig(past=2, current=3, memory=2, sink=True))
    item = ds[len(ds) - 1]
    assert item["memory_index"][0] == 0 and len(item["memory_index"]) == 3
    assert item["memory"].shape[1] == 3 and item["plucker"].shape[1] == 3 + 5


@pytest.mark.parametrize("camera_rope", [False, True])
def test_task_modes_and_error_buffer(latents, camera_rope):
    ds = WindowDataset(latents, WindowConfig(past=2, current=3, memory=2, camera_rope=camera_rope))
    batch = _collate([ds[0], ds[1]])
    torch.manual_seed(0)
    model = MatrixGameDiT(SMALL)
    seen = set()
    tasks = [
        DiTTask(image_only=1.0),
        DiTTask(image_only=0.0, drop_memory=1.0, drop_past=0.0),
        DiTTask(image_only=0.0, drop_past=1.0, drop_memory=0.0),
        DiTTask(image_only=0.0, drop_past=1.0, drop_memory=1.0),
        DiTTask(image_only=0.0, drop_past=0.0, drop_memory=0.0),
    ]
    for task in tasks:
        loss, logs = task.loss(model, batch, 0)
        loss.backward()
        seen.add(logs["mode"])
        assert torch.isfinite(loss) and logs["buffer"] == 2 * 3  # residuals of the current latents
    assert seen == {"image", "memory", "no past"}


class _Seen(torch.nn.Module):
    """A stand-in DiT that keeps its inputs and predicts zero velocity."""

    def forward(self, x, t, context=None, **kwargs):
        self.x, self.t = x, t
        return torch.zeros_like(x, requires_grad=True)


class _Kept(_Seen):
    """... keeping its conditioning too."""

    def forward(self, x, t, context=None, **kwargs):
        self.kwargs = kwargs
        return super().forward(x, t, context)


@pytest.mark.parametrize("camera_rope", [False, True])
def test_a_window_without_its_past_is_what_training_generates_from_memory_alone(
    latents, camera_rope
):
    """`without_past` (a session's window generated from its memory alone) gives the model
    what the training's drop-past mode gives it: the current latents alone, the same actions,
    camera rays, RoPE offsets, memory and positions."""
    ds = WindowDataset(latents, WindowConfig(past=2, current=3, memory=2, camera_rope=camera_rope))
    batch = _collate([ds[len(ds) - 1], ds[len(ds) - 2]])
    model = _Kept()
    DiTTask(image_only=0.0, drop_past=1.0, drop_memory=0.0, drop_actions=0.0).loss(model, batch, 0)
    assert model.x.shape[2] == 3  # no past latents
    want = window_kwargs(without_past(batch, latents.frames_per_latent))
    assert set(model.kwargs) == set(want)
    for key, value in want.items():
        assert torch.equal(model.kwargs[key], value), key


def test_past_noise_noises_the_past_and_tells_the_model_its_level(latents):
    """--past-noise: each window's past latents are noised to one level from [0, max] and
    the model is given that level as their timestep; 0 leaves the past clean at t = 0."""
    ds = WindowDataset(latents, WindowConfig(past=2, current=3, memory=2))
    batch = _collate([ds[i] for i in range(4)])
    model = _Seen()
    for past_noise in (0.0, 0.4):
        torch.manual_seed(0)
        DiTTask(image_only=0.0, drop_past=0.0, past_noise=past_noise).loss(model, batch, 0)
        past_t, current_t = model.t[:, :2], model.t[:, 2:]
        seen_past = model.x[:, :, :2]
        assert (current_t > 0).all() and (past_t == past_t[:, :1]).all()  # one level a window
        if past_noise == 0:
            assert (past_t == 0).all() and torch.equal(seen_past, batch["past"])
        else:
            level = past_t[:, 0] / 1000
            assert (level > 0).all() and (level < past_noise).all() and level.std() > 0
            # the past moved towards noise by its level: x = (1 - s) x0 + s eps
            eps = (seen_past - (1 - level.view(-1, 1, 1, 1, 1)) * batch["past"]) / \
                level.view(-1, 1, 1, 1, 1)  # fmt: skip
            assert 0.8 < float(eps.std()) < 1.2


def validation_loss(model, batch) -> float:
    """Flow loss at fixed noise and noise levels, memory + past context, no corruption."""
    g = torch.Generator().manual_seed(123)
    cur, past = batch["current"], batch["past"]
    noise = torch.randn(cur.shape, generator=g)
    total = 0.0
    for s in (0.3, 0.6, 0.9):
        sigma = torch.full((cur.shape[0],), s)
        t = torch.cat(
            [
                torch.zeros(cur.shape[0], past.shape[2]),
                torch.full((cur.shape[0], cur.shape[2]), 1000 * s),
            ],
            1,
        )
        with torch.no_grad():
            x = torch.cat([past, add_noise(cur, sigma, noise)], 2)
            v = model(x, t, **window_kwargs(batch))
        total += float(flow_matching_loss(v[:, :, past.shape[2] :], cur, noise)[0])
    return total / 3


def train_briefly(clips: LatentClips, out) -> tuple[float, float]:
    """Validation loss on two held-out windows before and after 60 steps of training."""
    ds = WindowDataset(clips, WindowConfig(past=2, current=3, memory=2, stride=1))
    held_out = _collate([ds[len(ds) - 1], ds[len(ds) - 2]])
    torch.manual_seed(0)
    model = MatrixGameDiT(SMALL)
    before = validation_loss(model, held_out)
    cfg = TrainConfig(out=str(out), steps=60, batch_size=2, lr=1e-3, warmup=5, checkpoint_every=60)
    Trainer(model, DiTTask(), ds, cfg).fit(progress=False)
    return before, validation_loss(model, held_out)


@pytest.mark.slow
def test_a_short_run_lowers_the_validation_loss(latents, tmp_path):
    before, after = train_briefly(latents, tmp_path / "run")
    assert after < 0.8 * before, (before, after)


def test_sample_strips(latents, tmp_path):
    from matrixgame.train.run_log import RunLog
    from matrixgame.train.samples import generate_current, strip

    ds = WindowDataset(latents, WindowConfig(past=2, current=3, memory=2))
    batch = _collate([ds[0]])
    torch.manual_seed(0)
    generated = generate_current(MatrixGameDiT(SMALL).eval(), batch, steps=2)
    assert generated.shape == batch["current"].shape and torch.isfinite(generated).all()
    vae = WanVAE(VAE_PRESETS["tiny"]).eval()
    image = strip(vae, batch["current"], generated, frames=4)
    assert image.shape == (2 * 64, 4 * 64, 3) and image.dtype.name == "uint8"
    run = RunLog(tmp_path / "run", tensorboard=False)
    run(5, {"loss": 1.5, "mode": "memory"})
    assert run.image("rollout", 5, image).exists()
    from PIL import Image

    from matrixgame.train.samples import side_by_side

    video = side_by_side(vae, batch["current"], generated)
    assert video.shape == (1 + 4 * 2, 64, 128, 3)  # a clip's first piece: 1 + 4 (F - 1) frames
    with Image.open(run.video("rollout", 5, video)) as gif:
        assert gif.n_frames == video.shape[0]
    assert '"loss": 1.5' in (tmp_path / "run" / "log.jsonl").read_text()


@pytest.mark.slow
def test_a_short_run_on_recorded_doom_lowers_the_validation_loss(tmp_path):
    pytest.importorskip("vizdoom")
    from matrixgame.data.engine.recorder import RecordConfig, record_dataset

    data = tmp_path / "doom"
    cfg = RecordConfig(out=str(data), maps=("E1M1",), frames=240, clip_frames=120,
                       loop_fraction=0.0, heldout_every=0, depth=False)  # fmt: skip
    record_dataset(cfg, progress=False)
    torch.manual_seed(0)
    cache_latents(
        data, WanVAE(VAE_PRESETS["tiny"]).eval(), tmp_path / "lat", 64, 64, progress=False
    )
    before, after = train_briefly(LatentClips(tmp_path / "lat"), tmp_path / "run")
    assert after < 0.8 * before, (before, after)


def test_train_dit_command(latents, tmp_path):
    from matrixgame.cli import main

    folder = tmp_path / "dit"
    args = ["train", "dit", "--latents", str(latents.root), "--out", str(folder),
            "--steps", "2", "--batch-size", "1", "--checkpoint-every", "2",
            "--past", "2", "--current", "3", "--memory", "2", "--sink"]  # fmt: skip
    assert main(args) == 0
    assert (folder / "checkpoints" / "latest").read_text().strip() == "00000002"
    config = json.loads((folder / "checkpoints" / "00000002" / "config.json").read_text())
    assert config["window"]["sink"] is True and config["window"]["memory"] == 2
    missing = ["train", "dit", "--latents", str(tmp_path / "none"), "--out", str(folder)]
    assert main(missing) == 2  # a clear error, not a traceback
