"""A training run's record: JSON lines always, TensorBoard scalars when it is installed."""

from __future__ import annotations

import json
from pathlib import Path


class RunLog:
    def __init__(self, folder: str | Path, tensorboard: bool = True) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        probe = self.folder / ".write-test"  # a read-only or full folder fails here, clearly
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise OSError(f"cannot write to the run folder {self.folder}: "
                          f"{err.strerror or err}") from None  # fmt: skip
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional: `pip install tensorboard`
                pass
            else:
                self.writer = SummaryWriter(str(self.folder / "tensorboard"))

    def __call__(self, step: int, logs: dict) -> None:
        with open(self.folder / "log.jsonl", "a") as f:
            f.write(json.dumps(logs) + "\n")
        if self.writer is not None:
            for key, value in logs.items():
                if isinstance(value, int | float) and key != "step":
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()

    def image(self, tag: str, step: int, image) -> Path:
        """Save an ``[H, W, 3]`` uint8 image as ``samples/<tag>_<step>.png`` (and to
        TensorBoard)."""
        from PIL import Image

        path = self.folder / "samples" / f"{tag}_{step:08d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(image).save(path)
        if self.writer is not None:
            self.writer.add_image(tag, image, step, dataformats="HWC")
        return path

    def video(self, tag: str, step: int, frames, fps: float = 8.75) -> Path:
        """Save frames ``[T, H, W, 3]`` uint8 as an animated ``samples/<tag>_<step>.gif``."""
        from PIL import Image

        path = self.folder / "samples" / f"{tag}_{step:08d}.gif"
        path.parent.mkdir(exist_ok=True)
        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:],
                       duration=round(1000 / fps), loop=0)  # fmt: skip
        return path
