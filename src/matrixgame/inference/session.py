"""A streaming world: ``reset(start)`` then ``step(keyboard, mouse) -> frames``, segment by
segment, the same interface as the game it learned (DIAMOND's environment), so the play
server, the video generator and the evaluation drive it alike.

Each step generates the world's ``current`` latents from noise (the sampler and its steps
from the world's config), given the last ``past`` latents of the sequence so far and memory
retrieved from the :class:`MemoryPool` by the pose the actions lead to, assembled exactly as
the training windows (:func:`matrixgame.data.windows.assemble_window`; at a revisit, with the
world's ``revisit_margin``, without its past, from memory alone); then the streaming
decoder turns them into frames. Poses come from integrating the actions with the world's
kinematics (momentum carried across steps), or are given (replaying a recording).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from matrixgame.data.windows import assemble_window, without_past
from matrixgame.diffusion.samplers import get_sampler
from matrixgame.geometry.kinematics import (
    KinematicsConfig,
    Trajectory,
    check_actions,
    doom_kinematics,
    get_preset,
    integrate_actions,
)
from matrixgame.inference.memory import MemoryPool
from matrixgame.inference.rollout import Guidance, denoise_window
from matrixgame.models.vae import FeatureCache
from matrixgame.train.vae_task import frames_to_model, to_uint8

Tensor = torch.Tensor
MAX_MOUSE = 20.0  # mouse units per frame (300 degrees in Doom): more is an input error


@dataclass
class Start:
    """Where a session begins: context latents ``[z, L, h, w]`` (L >= 1) with the poses of
    their last frames ``c2w [L, 4, 4]``, every context frame's pose ``frame_c2w [N, 4, 4]``
    and action ``keyboard [N, 6]`` / ``mouse [N, 2]`` (N = 1 + f (L - 1)), the intrinsics
    ``K [4]`` at the world's frame size, and the kinematic momentum after the last frame;
    ``frames_per_latent`` f is the world's (4 for Wan2.2's VAE)."""

    latents: Tensor
    c2w: Tensor
    frame_c2w: Tensor
    keyboard: Tensor
    mouse: Tensor
    K: Tensor
    velocity: Tensor = field(default_factory=lambda: torch.zeros(2, dtype=torch.float64))
    name: str = "start"
    frames_per_latent: int = 4

    def __post_init__(self) -> None:
        lat = self.latents
        if lat.ndim != 4 or lat.shape[1] < 1:
            raise ValueError(f"start latents must be [z, L >= 1, h, w], got {list(lat.shape)}")
        n = 1 + self.frames_per_latent * (lat.shape[1] - 1)
        shapes = {"c2w": (lat.shape[1], 4, 4), "frame_c2w": (n, 4, 4), "keyboard": (n, 6),
                  "mouse": (n, 2), "K": (4,)}  # fmt: skip
        for key, shape in shapes.items():
            value = getattr(self, key)
            if tuple(value.shape) != shape:
                raise ValueError(f"start {key} must be {list(shape)}, got {list(value.shape)}")
            if not torch.isfinite(value.float()).all():
                raise ValueError(f"start {key} contains NaN or infinite values")

    @classmethod
    def from_clip(cls, latent_clip: dict, latents: int, name: str = "recording",
                  frames_per_latent: int = 4) -> Start:  # fmt: skip
        """The first ``latents`` latents of a latent clip (:func:`latent_clip`) of
        ``frames_per_latent`` frames each."""
        total = latent_clip["latents"].shape[1]
        if not 1 <= latents <= total:
            raise ValueError(f"a start from this clip takes 1..{total} latents, got {latents}")
        n = 1 + frames_per_latent * (latents - 1)
        clip = latent_clip
        return cls(clip["latents"][:, :latents], clip["c2w"][:latents].double(),
                   clip["frame_c2w"][:n].double(), clip["keyboard"][:n].float(),
                   clip["mouse"][:n].float(), clip["K"].float(), name=name,
                   frames_per_latent=frames_per_latent)  # fmt: skip

    @classmethod
    def from_image(cls, vae, image: np.ndarray, K: Tensor, height: int, width: int,
                   c2w: Tensor | None = None, name: str = "image") -> Start:  # fmt: skip
        """One frame ``[H, W, 3]`` uint8 (any size; resized to the world's), its intrinsics
        ``K [4]`` at the world's size and pose (identity by default): a start of one latent."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"a start image must be uint8 [H, W, 3], got {image.dtype} "
                             f"{list(image.shape)}")  # fmt: skip
        x = frames_to_model(torch.tensor(image)[None, None], height, width)
        with torch.no_grad():
            latents = vae.encode(x)[0]
        pose = (torch.eye(4, dtype=torch.float64) if c2w is None else c2w.double())[None]
        return cls(latents, pose, pose.clone(), torch.zeros(1, 6), torch.zeros(1, 2),
                   torch.as_tensor(K, dtype=torch.float32), name=name,
                   frames_per_latent=vae.config.temporal_factor)  # fmt: skip


@dataclass
class SessionState:
    """Everything a session carries between steps (explicit, so a step that fails changes
    nothing: it builds the next state and swaps it in). Only what the next window reads is
    kept, the last ``past`` latents with their poses and frames, so a step costs the same at
    any length; the memory pool holds every latent."""

    length: int  # latents in the sequence so far
    latents: Tensor  # [z, P, h, w] its last P = min(past, length) latents
    c2w: Tensor  # [P, 4, 4] float64: pose of each of those latents' last frame
    first_frame: int  # sequence index of frame_c2w[0]
    frame_c2w: Tensor  # [F, 4, 4] the poses of frames first_frame .. (to the last)
    keyboard: Tensor  # [F, 6] their actions (action t moves frame t to t + 1)
    mouse: Tensor  # [F, 2]
    velocity: Tensor  # [2] kinematic momentum after the last frame
    pool: MemoryPool
    decoder: FeatureCache
    K: Tensor


@dataclass
class Segment:
    """What one step produced."""

    frames: np.ndarray | None  # [f C, H, W, 3] uint8 (None when decoding is off)
    latents: Tensor  # [z, C, h, w]
    memory_index: list[int]  # sequence positions of the memory latents used
    c2w: Tensor  # [f C, 4, 4] the new frames' poses (f: frames per latent)
    dit_seconds: float
    decode_seconds: float
    from_memory: bool = False  # generated from memory alone (a revisit: see WorldSession)


@dataclass
class Window:
    """A prepared step (:meth:`WorldSession.prepare`): the model inputs ``batch`` (collated
    ``[1, ...]``: memory, past, actions, camera rays; see ``assemble_window``), the memory
    positions chosen, the new frames' poses, and what :meth:`WorldSession.commit` needs."""

    batch: dict
    chosen: Tensor
    poses: Tensor  # [f C, 4, 4]
    velocity: Tensor
    window_c2w: Tensor  # [P + C, 4, 4]
    frame_c2w: Tensor
    keyboard: Tensor
    mouse: Tensor
    state: SessionState
    from_memory: bool = False  # the past dropped: generated from memory alone


# a world's sampler where its config names none (a `train dit` run): Euler, as the recipe
DEFAULT_STEPS, DEFAULT_SHIFT = 4, 3.0


class WorldSession:
    """A world model streaming frames for actions. ``world`` holds ``dit``, ``vae``,
    ``window`` (:class:`WindowConfig`), ``height``, ``width`` and ``meta`` (its config:
    ``kinematics``, ``sampler``, ``frame_skip``), as :func:`matrixgame.worlds.load` returns."""

    def __init__(self, world, steps: int | None = None, shift: float | None = None,
                 memory: bool = True, seed: int = 0, pool_cap: int | None = None,
                 kinematics: KinematicsConfig | None = None, decode: bool = True,
                 metres_per_unit: float | None = None, compile: str | None = None,
                 retrieval: str = "topk", compile_retrieval: bool = False,
                 compile_dit: str | None = None,
                 guidance: Guidance | dict | None = None,
                 past_noise: float | None = None,
                 revisit_margin: float | None = None) -> None:  # fmt: skip
        meta = getattr(world, "meta", {}) or {}
        sampler = meta.get("sampler", {})
        self.world, self.window = world, world.window
        self.height, self.width = world.height, world.width
        self.steps = steps or sampler.get("steps", DEFAULT_STEPS)
        self.shift = shift or sampler.get("shift", DEFAULT_SHIFT)
        self.sampler = sampler.get("name", "euler")
        # classifier-free guidance: the world's own (its sampler's), a dict overriding some
        # of its weights, or a Guidance
        if guidance is None or isinstance(guidance, dict):
            own = Guidance.from_meta(sampler.get("guidance"))
            guidance = Guidance.from_meta({**vars(own), **(guidance or {})})
        if not isinstance(guidance, Guidance):
            raise ValueError(f"guidance is a Guidance or a dict, got {type(guidance).__name__}")
        self.guidance = guidance
        # the noise level put on the past latents (a world trained with DiTTask.past_noise)
        self.past_noise = sampler.get("past_noise", 0.0) if past_noise is None else past_noise
        if not 0 <= self.past_noise < 1:
            raise ValueError(f"past_noise is a noise level in [0, 1), got {self.past_noise}")
        # revisits: a window whose memory sees its view better than its past by more than
        # this margin is generated from memory alone (None: never)
        margin = sampler.get("revisit_margin") if revisit_margin is None else revisit_margin
        if margin is not None and (
            isinstance(margin, bool) or not isinstance(margin, int | float) or not -1 <= margin <= 1
        ):
            raise ValueError(f"revisit_margin is a difference of view overlaps in [-1, 1], "
                             f"got {margin!r}")  # fmt: skip
        self.revisit_margin = margin
        get_sampler(self.sampler)  # an unknown name fails here, not at the first step
        # a distilled student's exact schedule, unless steps or shift are chosen here
        given = "sigmas" in sampler and steps is None and shift is None
        self.sigmas = torch.tensor(sampler["sigmas"], dtype=torch.float64) if given else None
        self.memory, self.seed, self.pool_cap, self.decode = memory, seed, pool_cap, decode
        self.kinematics = kinematics or _kinematics(meta)
        self.metres_per_unit = metres_per_unit or self.kinematics.metres_per_unit
        if retrieval not in ("topk", "reference"):
            raise ValueError(f"retrieval must be 'topk' or 'reference', got {retrieval!r}")
        self.retrieval = retrieval  # "reference": the release's one latent per segment frame
        self.compile_retrieval = compile_retrieval  # the pool's overlap through torch.compile
        self.state: SessionState | None = None
        self.generator = torch.Generator().manual_seed(seed)
        self.decoder = None  # the compiled streaming decoder (``compile``: its backend)
        if compile and decode and world.vae is not None:
            from matrixgame.accel.compile import CompiledDecoder

            self.decoder = CompiledDecoder(world.vae, compile)
        self.compiled_dit = None  # ``compile_dit``: its backend, once the window stops growing
        if compile_dit:
            from matrixgame.accel.compile import CompiledDiT

            self.compiled_dit = CompiledDiT(world.dit, compile_dit)

    @property
    def frames_per_step(self) -> int:
        return self.window.frames_per_latent * self.window.current

    # -- reset --------------------------------------------------------------------------------

    def reset(self, start: Start) -> np.ndarray | None:
        """Begin at ``start``; returns its frames decoded ``[N, H, W, 3]`` uint8 (or None)."""
        if not isinstance(start, Start):
            raise ValueError(f"reset takes a Start (from_clip / from_image), not {type(start)}")
        z, h, w = start.latents.shape[0], start.latents.shape[2], start.latents.shape[3]
        stride = self.world.vae.config.spatial_factor if self.world.vae is not None else None
        want = (self.world.dit.config.in_dim, *(
            (self.height // stride, self.width // stride) if stride else (h, w)))  # fmt: skip
        if (z, h, w) != want:
            raise ValueError(f"start latents are [{z}, L, {h}, {w}]; this world takes "
                             f"[{want[0]}, L, {want[1]}, {want[2]}]")  # fmt: skip
        f = self.window.frames_per_latent
        if start.latents.shape[1] > 1 and start.frames_per_latent != f:
            raise ValueError(f"the start's latents hold {start.frames_per_latent} frames each; "
                             f"this world's hold {f}")  # fmt: skip
        view = self.window.view(start.K, self.height, self.width, self.metres_per_unit)
        pool = MemoryPool(view, self.pool_cap, compiled=self.compile_retrieval)
        pool.add(start.latents, start.c2w, 0)
        frames, decoder = self._decode(start.latents, FeatureCache())
        self.generator = torch.Generator().manual_seed(self.seed)
        L = start.latents.shape[1]
        self.state = self._trimmed(L, start.latents, start.c2w.double(), 0,
                                   start.frame_c2w.double(), start.keyboard.float(),
                                   start.mouse.float(), start.velocity.clone(), pool, decoder,
                                   start.K.clone())  # fmt: skip
        return frames

    # -- step ---------------------------------------------------------------------------------

    def step(self, keyboard, mouse, c2w: Tensor | None = None) -> Segment:
        """Generate the next segment for the actions of its ``f C`` frames (f per latent;
        ``keyboard [fC, 6]`` multi-hot W, S, A, D + 2 spare; ``mouse [fC, 2]`` pitch/yaw
        deltas). ``c2w [fC, 4, 4]`` gives the frames' poses (a recorded trajectory) instead of
        integrating the actions. Bad input raises ValueError and leaves the state as it was."""
        return self.generate(self.prepare(keyboard, mouse, c2w))

    def generate(self, window: Window) -> Segment:
        """Sample a prepared window's latents with the world's sampler, then commit them."""
        start = time.perf_counter()
        dit = self.compiled_dit.pick(window.batch) if self.compiled_dit else self.world.dit
        new = denoise_window(dit, window.batch, self.window.current, self.steps,
                             self.shift, self.generator, self.sampler, self.sigmas,
                             self.guidance, self.past_noise)[0]  # fmt: skip
        return self.commit(window, new, time.perf_counter() - start)

    def prepare(self, keyboard, mouse, c2w: Tensor | None = None) -> Window:
        """The next step's window (its model inputs, collated ``[1, ...]``), assembled but
        not generated; the state is unchanged until :meth:`commit`."""
        st = self._require_state()
        keyboard, mouse = self._check(keyboard, mouse)
        poses, velocity = self._poses(st, keyboard, mouse, c2w)
        seq_keyboard = torch.cat([st.keyboard, keyboard])
        seq_mouse = torch.cat([st.mouse, mouse])
        c = self.window.current
        L = st.length
        f = self.window.frames_per_latent
        window_c2w = torch.cat([st.c2w, poses[f - 1 :: f]])  # the past latents', the new ones'
        past = st.latents.shape[1]
        s = L - past  # the window's first latent
        chosen = torch.zeros(0, dtype=torch.long)
        if self.memory and past == self.window.past:  # short context: image-only, no memory
            m = self.window.memory
            if self.retrieval == "reference":  # the segment's frames, evenly spaced
                refs = poses[torch.linspace(len(poses) - 1, 0, m).round().long().flip(0)]
                chosen = st.pool.retrieve_by_reference(refs, s).sort().values
            else:
                chosen = st.pool.retrieve(window_c2w[-1], s, m)
            if self.window.sink:
                chosen = torch.cat([torch.zeros(1, dtype=torch.long), chosen])
        # the window's frames in the tail (from its first latent's first frame)
        first_frame = self.window.first_frame(s) - st.first_frame
        frames = slice(first_frame, self.window.last_frame(L + c - 1) + 1 - st.first_frame)
        from_memory = self._revisits(st, chosen, window_c2w[-1])
        memory_index, first = self._positions(chosen, s, L + c)
        item = assemble_window(
            st.pool.latent(chosen) if len(chosen) else st.latents[:, :0],
            st.pool.pose(chosen), memory_index, st.latents, st.latents[:, :0],
            window_c2w, seq_keyboard[frames], seq_mouse[frames], st.K, first,
            self.height, self.width, self.window.camera_rope,
        )  # fmt: skip
        batch = {k: v[None] for k, v in item.items()}
        if from_memory:  # as the training's windows without their past (DiTTask.drop_past)
            batch = without_past(batch, f)
        return Window(batch, chosen, poses, velocity, window_c2w,
                      torch.cat([st.frame_c2w, poses]), seq_keyboard, seq_mouse, st,
                      from_memory)  # fmt: skip

    def commit(self, window: Window, new: Tensor, dit_seconds: float = 0.0) -> Segment:
        """Take the generated latents ``[z, C, h, w]`` of a prepared window: decode them,
        add them to the memory pool, advance the state."""
        st = window.state
        if st is not self.state:
            raise ValueError("this window was prepared for an earlier state of the session")
        c = self.window.current
        if new.shape != (st.latents.shape[0], c, *st.latents.shape[2:]):
            raise ValueError(f"a step generates latents [{st.latents.shape[0]}, {c}, "
                             f"{st.latents.shape[2]}, {st.latents.shape[3]}], got "
                             f"{list(new.shape)}")  # fmt: skip
        new = new.detach()
        start = time.perf_counter()
        decoded, decoder = self._decode(new, st.decoder)
        decode_seconds = time.perf_counter() - start
        past, L = st.latents.shape[1], st.length
        st.pool.add(new, window.window_c2w[past:], L)
        self.state = self._trimmed(L + c, torch.cat([st.latents, new.to(st.latents)], 1),
                                   window.window_c2w, st.first_frame, window.frame_c2w,
                                   window.keyboard, window.mouse, window.velocity, st.pool,
                                   decoder, st.K)  # fmt: skip
        return Segment(decoded, new, window.chosen.tolist(), window.poses, dit_seconds,
                       decode_seconds, window.from_memory)  # fmt: skip

    def _trimmed(self, length: int, latents: Tensor, c2w: Tensor, first_frame: int,
                 frame_c2w: Tensor, keyboard: Tensor, mouse: Tensor,
                 *rest) -> SessionState:  # fmt: skip
        """The state keeping the tails the next window reads: its past latents, their poses,
        their frames (from the first past latent's first frame)."""
        keep = min(self.window.past, length)
        s = length - keep
        f = self.window.first_frame(s) - first_frame
        return SessionState(length, latents[:, latents.shape[1] - keep :],
                            c2w[len(c2w) - keep :], first_frame + f, frame_c2w[f:],
                            keyboard[f:], mouse[f:], *rest)  # fmt: skip

    def _revisits(self, st: SessionState, chosen: Tensor, query: Tensor) -> bool:
        """Whether the window is a revisit to generate from its memory alone: a memory latent
        sees the view of the window's last latent (pose ``query``) better than the last past
        latent does, by more than ``revisit_margin``. A world model follows its past even
        where the past has lost the scene (the loop's return after a generated detour) and
        its memory holds it; without the past it draws on the memory, as it trained to
        (``DiTTask.drop_past``)."""
        if self.revisit_margin is None or not len(chosen):
            return False
        seen = st.pool.overlap(query, torch.cat([chosen, torch.tensor([st.length - 1])]))
        return bool(seen[:-1].max() - seen[-1] > self.revisit_margin)

    def _positions(self, chosen: Tensor, first: int, end: int) -> tuple[Tensor, int]:
        """Temporal RoPE positions of the window's memory and first latent. RoPE attends by
        position differences, so once the sequence outgrows the model's table
        (``rope_positions``) every index is shifted down by the same amount (exact), and
        memory older than the table reaches is placed at its far end (as "long ago")."""
        table = self.world.dit.config.rope_positions
        shift = max(0, end - table)
        return (chosen - shift).clamp(min=0), first - shift

    def _require_state(self) -> SessionState:
        if self.state is None:
            raise ValueError("call reset(start) before step()")
        return self.state

    def _check(self, keyboard, mouse) -> tuple[Tensor, Tensor]:
        n = self.frames_per_step
        try:
            keyboard = torch.as_tensor(keyboard, dtype=torch.float32)
            mouse = torch.as_tensor(mouse, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"actions must be numeric arrays: {err}") from err
        if keyboard.shape != (n, 6) or mouse.shape != (n, 2):
            got = f"{list(keyboard.shape)}, {list(mouse.shape)}"
            raise ValueError(f"a step takes keyboard [{n}, 6] and mouse [{n}, 2] (a row per "
                             f"frame), got {got}")  # fmt: skip
        check_actions(keyboard, mouse)
        if ((keyboard != 0) & (keyboard != 1)).any():
            raise ValueError("keyboard values must be 0 or 1 (keys up or down)")
        if mouse.abs().max() > MAX_MOUSE:
            raise ValueError(f"mouse deltas must lie within +-{MAX_MOUSE} units per frame")
        return keyboard, mouse

    def _poses(self, st: SessionState, keyboard: Tensor, mouse: Tensor,
               c2w: Tensor | None) -> tuple[Tensor, Tensor]:  # fmt: skip
        """The new frames' poses ``[fC, 4, 4]`` and the momentum after them."""
        n = self.frames_per_step
        if c2w is not None:
            c2w = torch.as_tensor(c2w, dtype=torch.float64)
            if c2w.shape != (n, 4, 4) or not torch.isfinite(c2w).all():
                raise ValueError(f"step poses must be finite [{n}, 4, 4]")
            return c2w, st.velocity
        # action t moves frame t to t + 1: the new frames follow the last known frame's
        # action, then this step's first fC - 1
        actions_kb = torch.cat([st.keyboard[-1:], keyboard[:-1]])
        actions_ms = torch.cat([st.mouse[-1:], mouse[:-1]])
        start = Trajectory.from_c2w(st.frame_c2w[-1:])
        path, velocity = integrate_actions(actions_kb, actions_ms, self.kinematics, start,
                                           st.velocity, return_velocity=True)  # fmt: skip
        return path.c2w()[1:], velocity

    def _decode(
        self, latents: Tensor, cache: FeatureCache
    ) -> tuple[np.ndarray | None, FeatureCache]:
        """Frames of new latents through the streaming decoder; the cache is copied first, so
        a failure leaves the session's own untouched."""
        if not self.decode or self.world.vae is None:
            return None, cache
        cache = cache.copy()
        frames = decode_frames(self.world.vae, latents, cache, self.decoder, self.window.current)
        return frames, cache


def decode_frames(vae, latents: Tensor, cache: FeatureCache, decoder=None,
                  chunk: int = 1) -> np.ndarray:  # fmt: skip
    """``[T, H, W, 3]`` uint8 frames of latents ``[z, t, h, w]`` through ``vae``'s streaming
    decoder (or a compiled ``decoder``), ``chunk`` latents a call, continuing ``cache``
    (updated in place)."""
    with torch.no_grad():
        video = vae.decode(latents[None].float(), cache, decoder, chunk)[0]
    return to_uint8(video.permute(1, 2, 3, 0)).numpy()


def _kinematics(meta: dict) -> KinematicsConfig:
    name = meta.get("kinematics")
    if name == "doom" or name is None:
        return doom_kinematics(meta.get("frame_skip", 2))
    return get_preset(name)


def replay(session: WorldSession, start: Start, clip: dict, total: int,
           timings: list[float] | None = None) -> Tensor:  # fmt: skip
    """Latents ``[z, total, h, w]``: ``start``'s context, then the session stepped with a
    latent clip's recorded actions and poses up to latent ``total - 1`` (the evaluation's
    rollout). A last, shorter segment is not generated: ``total`` - context must be a
    multiple of the world's current latents."""
    session.reset(start)
    n = session.frames_per_step
    L = start.latents.shape[1]
    if (total - L) % session.window.current:
        raise ValueError(f"{total - L} latents to generate do not split into segments of "
                         f"{session.window.current}")  # fmt: skip
    out = [start.latents]
    for j in range(L, total, session.window.current):
        first = session.window.first_frame(j)
        frames = slice(first, first + n)
        seg = session.step(clip["keyboard"][frames], clip["mouse"][frames],
                           clip["frame_c2w"][frames])  # fmt: skip
        out.append(seg.latents)
        if timings is not None:
            timings.append(seg.dit_seconds)
    return torch.cat(out, 1)
