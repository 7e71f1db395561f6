"""Inverse dynamics: which keys and turn took the camera from frame t to frame t + 1, read
from pixels alone (GameWorld Score's action accuracy, with our own network trained on our
own recordings: nothing downloaded).

Doom's player keeps momentum (velocity is multiplied by 0.906 every tic), so one frame pair
does not fix the keys: the model sees frames t - before .. t + after, the motion before and
after the action, and predicts W/S/A/D (four independent presses) and the yaw delta. Pitch
is not predicted: Doom's view stays level. The same network's pooled features of these
short windows give the Fréchet distance between generated and real video.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from matrixgame.data.shards import Manifest, read_clip
from matrixgame.train.vae_task import frames_to_model, to_uint8

Tensor = torch.Tensor
KEYS = ("W", "S", "A", "D")


@dataclass(frozen=True)
class IDMConfig:
    height: int = 96
    width: int = 128
    before: int = 2  # frames before the action's frame t that the model sees
    after: int = 2  # frames after t (t + 1 shows the action's effect; later ones its trend)
    channels: tuple[int, ...] = (32, 64, 96, 128)  # each stage halves the size
    yaw_scale: float = 0.4  # yaw deltas are regressed in these units (Doom's full turn rate)

    @property
    def frames(self) -> int:
        return self.before + 1 + self.after


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, 2, 1), nn.GroupNorm(8, cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(8, cout), nn.SiLU(),
    )  # fmt: skip


class InverseDynamics(nn.Module):
    """Early fusion: the frames and their differences enter the first convolution together,
    so motion is measured at full resolution (the change of speed that tells a held key
    from momentum is a fraction of a pixel)."""

    def __init__(self, config: IDMConfig = IDMConfig()) -> None:
        super().__init__()
        self.config = config
        n = config.frames
        chans = (3 * n + 3 * (n - 1), *config.channels)
        stages = zip(chans, chans[1:], strict=False)
        self.trunk = nn.Sequential(*[_stage(a, b) for a, b in stages])
        self.head = nn.Linear(chans[-1], len(KEYS) + 1)

    def features(self, frames: Tensor) -> Tensor:
        """``frames [B, n, 3, H, W]`` (t - before .. t + after; float in [-1, 1]) -> ``[B, C]``:
        the trunk's map averaged over space (also the features of the Fréchet distance)."""
        diffs = frames[:, 1:] - frames[:, :-1]
        x = torch.cat([frames, diffs], 1).flatten(1, 2)  # [B, 3 (2n - 1), H, W]
        return self.trunk(x).mean(dim=(2, 3))

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """Key logits ``[B, 4]`` and the yaw delta ``[B]`` of the action taken at frame t."""
        out = self.head(self.features(frames))
        return out[:, : len(KEYS)], out[:, -1] * self.config.yaw_scale


def _resize(video: np.ndarray | Tensor, height: int, width: int) -> Tensor:
    """uint8 ``[T, H, W, 3]`` -> float ``[T, 3, h, w]`` in [-1, 1], area-resized."""
    return frames_to_model(torch.as_tensor(video)[None], height, width)[0].transpose(0, 1)


class IDMDataset(torch.utils.data.Dataset):
    """Frame triples of a recorded dataset's clips at the IDM's size, with the action taken
    at the middle frame. Clips are resized once and kept in memory as uint8."""

    def __init__(self, root: str | Path, config: IDMConfig, split: str | None = "train",
                 max_frames: int | None = None) -> None:  # fmt: skip
        self.config = config
        manifest = Manifest.load(root)
        names = [n for n, e in sorted(manifest.shards.items()) if split in (None, e.get("split"))]
        if not names:
            raise ValueError(f"{root}: no clips in split {split!r}")
        self.clips, self.index, total = [], [], 0
        for name in names:
            clip = read_clip(Path(root) / name)
            video = _resize(clip.frames, config.height, config.width)
            frames = to_uint8(video)  # [T, 3, h, w]
            keys = torch.as_tensor(clip.keyboard[:, : len(KEYS)]).float()
            yaw = torch.as_tensor(clip.mouse[:, 1]).float()
            self.clips.append((frames, keys, yaw))
            span = range(config.before, len(frames) - config.after)
            self.index += [(len(self.clips) - 1, t) for t in span]
            total += len(frames)
            if max_frames and total >= max_frames:
                break
        if not self.index:
            raise ValueError(f"{root}: clips too short for frame triples")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        c, t = self.index[i]
        frames, keys, yaw = self.clips[c]
        cfg = self.config
        return {"frames": frames[t - cfg.before : t + cfg.after + 1], "keys": keys[t],
                "yaw": yaw[t]}  # fmt: skip


class IDMTask:
    """Cross-entropy on each key plus a smooth-L1 loss on the yaw (in ``yaw_scale`` units)."""

    def loss(self, model, batch: dict, step: int) -> tuple[Tensor, dict]:
        frames = batch["frames"].float() / 127.5 - 1.0
        logits, yaw = model(frames)
        scale = model.config.yaw_scale if hasattr(model, "config") else 1.0
        key_loss = F.binary_cross_entropy_with_logits(logits, batch["keys"])
        yaw_loss = F.smooth_l1_loss(yaw / scale, batch["yaw"] / scale, beta=0.1)
        loss = key_loss + yaw_loss
        exact = ((logits > 0) == (batch["keys"] > 0.5)).all(1).float().mean()
        logs = {"loss": loss.detach(), "keys": key_loss.detach(), "yaw": yaw_loss.detach(),
                "key_accuracy": exact}  # fmt: skip
        return loss, {k: float(v) for k, v in logs.items()}


def _windows(idm: InverseDynamics, video: np.ndarray | Tensor) -> tuple[Tensor, Tensor]:
    """The model's inputs ``[W, n, 3, h, w]`` for every frame t of a uint8 video
    ``[T, H, W, 3]`` with enough frames around it, and those t ``[W]``."""
    cfg = idm.config
    x = _resize(video, cfg.height, cfg.width)
    index = torch.arange(cfg.before, len(x) - cfg.after)
    offsets = torch.arange(-cfg.before, cfg.after + 1)
    return x[index[:, None] + offsets], index


@torch.no_grad()
def predict_actions(idm: InverseDynamics, video: np.ndarray | Tensor,
                    batch: int = 64) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Keys ``[W, 4]`` (bool) and yaw deltas ``[W]`` of the actions taken at frames ``t [W]``
    (every frame with ``before`` frames before it and ``after`` after) of a uint8 video
    ``[T, H, W, 3]`` of any size (resized to the IDM's)."""
    windows, index = _windows(idm, video)
    keys, yaws = [], []
    for start in range(0, len(windows), batch):
        logits, yaw = idm(windows[start : start + batch])
        keys.append(logits > 0)
        yaws.append(yaw)
    return torch.cat(keys), torch.cat(yaws), index


@torch.no_grad()
def clip_features(idm: InverseDynamics, video: np.ndarray | Tensor,
                  batch: int = 64) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Features ``[W, C]`` of the short windows around frames ``t [W]`` of a uint8 video
    ``[T, H, W, 3]``: appearance and motion as our Doom network sees them (the Fréchet
    distance's features)."""
    windows, index = _windows(idm, video)
    feats = [idm.features(windows[s : s + batch]) for s in range(0, len(windows), batch)]
    return torch.cat(feats), index


def action_accuracy(keys: Tensor, yaw: Tensor, true_keys: Tensor, true_yaw: Tensor,
                    dead_zone: float = 0.05) -> dict:  # fmt: skip
    """Agreement of predicted actions with the commanded ones: ``keyboard`` (all four keys
    right), each key, ``turn`` (left / none / right, |yaw| under ``dead_zone`` counting as
    none) and the yaw's mean absolute error (mouse units)."""
    true_keys = torch.as_tensor(true_keys)[:, : len(KEYS)] > 0.5
    keys = torch.as_tensor(keys).bool()
    yaw, true_yaw = torch.as_tensor(yaw).float(), torch.as_tensor(true_yaw).float()

    def turn(y: Tensor) -> Tensor:
        return torch.sign(y) * (y.abs() >= dead_zone)

    out = {"keyboard": float((keys == true_keys).all(1).float().mean())}
    out.update(
        {k: float((keys[:, i] == true_keys[:, i]).float().mean()) for i, k in enumerate(KEYS)}
    )
    out["turn"] = float((turn(yaw) == turn(true_yaw)).float().mean())
    out["yaw_mae"] = float((yaw - true_yaw).abs().mean())
    out["frames"] = len(keys)
    return out


def trained_idm(run: str | Path) -> InverseDynamics:
    """The EMA network of a `train idm` run."""
    from matrixgame.train.runs import latest_weights

    state, config = latest_weights(run, model="idm")
    cfg = config["idm"]
    idm = InverseDynamics(IDMConfig(**{**cfg, "channels": tuple(cfg["channels"])})).eval()
    idm.load_state_dict(state)
    return idm


def idm_meta(config: IDMConfig) -> dict:
    return {"model": "idm", "idm": asdict(config)}


def heldout_accuracy(idm: InverseDynamics, root: str | Path) -> dict:
    """The IDM's action accuracy on the real frames of a dataset's held-out clips ({} when
    it has none)."""
    manifest = Manifest.load(root)
    cases = []
    for name, entry in sorted(manifest.shards.items()):
        if entry.get("split", "train").startswith("heldout"):
            clip = read_clip(Path(root) / name)
            keys, yaw, t = predict_actions(idm, clip.frames)
            cases.append((keys, yaw, clip.keyboard[t], clip.mouse[t, 1]))
    return pooled_accuracy(cases) if cases else {}


def pooled_accuracy(cases: list[tuple]) -> dict:
    """:func:`action_accuracy` over several clips' (keys, yaw, true keys, true yaw)."""
    joined = [torch.cat([torch.as_tensor(np.asarray(c[i])) for c in cases]) for i in range(4)]
    return action_accuracy(*joined)
