"""Video files: H.264 MP4 written frame by frame through PyAV (memory stays bounded however
long the video), and read back. A crash never leaves a half-written file under the final
name: frames go to a temporary file that ``close`` renames."""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np


class Mp4Writer:
    """``write(frames [T, H, W, 3] uint8)`` appends frames; ``close()`` finishes the file.
    Odd frame sizes are padded by one pixel (H.264 4:2:0 needs even sizes)."""

    def __init__(self, path: str | Path, fps: float, crf: int = 18) -> None:
        import av

        if not (0 < fps <= 240):
            raise ValueError(f"a video's frame rate must lie in (0, 240], got {fps}")
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise ValueError(f"{self.path}: the video is written as MP4; name it *.mp4")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".mp4",
                                         dir=self.path.parent)  # fmt: skip
        os.close(fd)
        self._container = av.open(self._tmp, "w")
        self._stream = self._container.add_stream(
            "libx264", rate=Fraction(fps).limit_denominator(1000), options={"crf": str(crf)}
        )
        self._stream.pix_fmt = "yuv420p"
        self.frames = 0
        self._size: tuple[int, int] | None = None

    def write(self, frames: np.ndarray) -> None:
        import av

        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} "
                             f"{list(frames.shape)}")  # fmt: skip
        h, w = frames.shape[1:3]
        if self._size is None:
            self._size = (h, w)
            self._stream.height, self._stream.width = h + h % 2, w + w % 2
        elif self._size != (h, w):
            raise ValueError(f"frames of {h}x{w} do not match the video's {self._size}")
        if h % 2 or w % 2:
            frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        for frame in frames:
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in self._stream.encode(image):
                self._container.mux(packet)
        self.frames += len(frames)

    def close(self) -> Path:
        """Flush the encoder and move the file to its name; returns the path."""
        if self._container is None:
            return self.path
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the unfinished video (its temporary file)."""
        if self._container is not None:
            self._container.close()
            self._container = None
        Path(self._tmp).unlink(missing_ok=True)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """All frames ``[T, H, W, 3]`` uint8 of a video file and its frame rate."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            fps = float(stream.average_rate or 0)
    except (OSError, av.error.FFmpegError, IndexError) as err:
        raise ValueError(f"{path}: not a readable video ({err})") from err
    if not frames:
        raise ValueError(f"{path}: the video has no frames")
    return np.stack(frames), fps
