"""The N+1 layout: N ranks run the DiT with Ulysses sequence parallelism, one more rank decodes.

Launched with ``torchrun --nproc-per-node N+1`` (``matrixgame generate`` switches to it when
``WORLD_SIZE`` > 1). Ranks 0..N-1 each hold the whole model and the same session state (the
windows, the memory pool, the sampler's noise: all deterministic, so they agree without
talking) and split every forward pass by the tokens' spatial positions: rank r keeps
positions ``[lo_r, hi_r)`` of every frame. Everything in a block works per token or per
spatial position (norms, modulation, camera injection, text cross-attention, the action
module's temporal attention, the FFN) except self-attention, which runs Ulysses-style: an
all-to-all turns the position shards of q, k, v into head shards over the whole sequence
(heads zero-padded to a multiple of N, as the release pads 24 heads to 28 on 7 ranks),
each rank attends with its heads, and a second all-to-all brings the heads back to the
positions. Rank 0 sends each segment's latents to the decoder rank (rank N) and keeps at
most ``capacity`` sends in flight (the release's queue of 2); the decoder streams frames
out as they are decoded, so the DiT ranks generate segment k+1 while it decodes k.
"""

from __future__ import annotations

from collections import deque

import torch
import torch.distributed as dist
from torch import nn

from matrixgame.models.dit import rope_attention

Tensor = torch.Tensor
STOP, RESET, SEGMENT = 0, 1, 2  # the decoder link's message kinds


def spatial_shards(positions: int, ranks: int) -> list[int]:
    """How many of ``positions`` spatial positions each rank holds (contiguous, in rank
    order, the first ones one more when they do not divide)."""
    if positions < ranks:
        raise ValueError(f"{positions} spatial positions cannot be split over {ranks} ranks")
    return [positions // ranks + (r < positions % ranks) for r in range(ranks)]


class Ulysses:
    """Self-attention over tokens sharded by spatial position, heads exchanged all-to-all.
    ``layout`` (frames, height, width of the whole sequence, and the positions each rank
    holds: :func:`spatial_shards`) is set per forward pass."""

    def __init__(self, group, heads: int) -> None:
        self.group = group
        self.rank, self.ranks = dist.get_rank(group), dist.get_world_size(group)
        self.heads = heads
        self.padded = -(-heads // self.ranks) * self.ranks
        self.layout: tuple[int, int, int, list[int]] | None = None

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, freqs: Tensor, t_index: Tensor) -> Tensor:
        """This rank's ``[B, F S_r, H, d]`` queries, keys, values -> its tokens' attention
        output ``[B, F S_r, H, d]`` over the whole sequence."""
        frames, height, width, sizes = self.layout
        b, _, _, d = q.shape
        n, per = self.ranks, self.padded // self.ranks
        x = torch.stack([q.float(), k.float(), v.float()], 3)  # [B, F S_r, H, 3, d]
        x = nn.functional.pad(x, (0, 0, 0, 0, 0, self.padded - self.heads))
        x = x.reshape(b, frames, -1, n, per, 3, d).permute(3, 0, 1, 2, 4, 5, 6)
        mine = b * frames * sizes[self.rank]  # rows: this rank's tokens
        got = _all_to_all(x.reshape(-1, per * 3 * d), [mine] * n,
                          [b * frames * s for s in sizes], self.group)  # fmt: skip
        parts = [g.reshape(b, frames, s, per, 3, d) for g, s in zip(got, sizes, strict=True)]
        full = torch.cat(parts, 2).reshape(b, frames * height * width, per, 3, d)
        heads = slice(self.rank * per, (self.rank + 1) * per)
        out = rope_attention(full[:, :, :, 0], full[:, :, :, 1], full[:, :, :, 2].to(v.dtype),
                             _padded_heads(freqs, self.padded)[heads], t_index, height,
                             width)  # fmt: skip
        out = out.reshape(b, frames, height * width, per, d)
        bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
        send = torch.cat([out[:, :, lo:hi].reshape(-1, per * d)
                          for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)])  # fmt: skip
        got = _all_to_all(send, [b * frames * s for s in sizes], [mine] * n, self.group)
        heads = torch.stack([g.reshape(b, -1, per, d) for g in got], 2).flatten(2, 3)
        return heads[:, :, : self.heads]


def _padded_heads(freqs: Tensor, heads: int) -> Tensor:
    """RoPE rotations ``[H, P, D/2]`` with rows for the zero-padded heads (their q and k are
    zero, so any rotation does)."""
    if heads == len(freqs):
        return freqs
    return torch.cat([freqs, freqs[:1].expand(heads - len(freqs), -1, -1)])


def _all_to_all(rows: Tensor, send: list[int], receive: list[int], group) -> list[Tensor]:
    """Send ``send[j]`` consecutive rows of ``rows`` to rank j; the rows from each rank."""
    out = rows.new_empty(sum(receive), rows.shape[1])
    dist.all_to_all_single(out, rows.contiguous(), receive, send, group=group)
    return list(out.split(receive))


class SequenceParallelDiT(nn.Module):
    """A :class:`~matrixgame.models.dit.MatrixGameDiT` whose forward passes are split over
    the ranks of ``group`` by spatial position; called like the model, every rank gets the
    whole output (the session code on every rank stays the same)."""

    def __init__(self, model, group=None) -> None:
        super().__init__()
        self.model, self.group = model, group
        self.rank, self.ranks = dist.get_rank(group), dist.get_world_size(group)
        self.ulysses = Ulysses(group, model.config.num_heads)
        for block in model.blocks:
            block.self_attn.sequence_parallel = self.ulysses

    @property
    def config(self):
        return self.model.config

    @torch.no_grad()
    def forward(self, x: Tensor, t: Tensor, context: Tensor | None = None, **kwargs) -> Tensor:
        model = self.model
        tokens, e, e0, ctx = model.prepare(x, t, context, **kwargs)
        frames, height, width = ctx["frames"], ctx["height"], ctx["width"]
        sizes = spatial_shards(height * width, self.ranks)
        lo = sum(sizes[: self.rank])
        hi = lo + sizes[self.rank]

        def shard(a: Tensor) -> Tensor:  # [B, F h w, ...] -> this rank's positions
            return a.unflatten(1, (frames, height * width))[:, :, lo:hi].flatten(1, 2)

        local = {**ctx, "height": 1, "width": hi - lo}  # per-position modules see S_r columns
        if ctx["camera"] is not None:
            local["camera"] = shard(ctx["camera"])
        self.ulysses.layout = (frames, height, width, sizes)
        out = model.head(model.run_blocks(shard(tokens), shard(e0), local), shard(e))
        return model.finish(self._gather(out, frames, sizes), ctx)

    def _gather(self, out: Tensor, frames: int, sizes: list[int]) -> Tensor:
        """Every rank's ``[B, F S_r, P]`` head outputs -> ``[B, F h w, P]`` in token order."""
        b, _, p = out.shape
        widest = max(sizes)
        padded = out.new_zeros(b, frames, widest, p)
        padded[:, :, : sizes[self.rank]] = out.reshape(b, frames, -1, p)
        parts = [torch.empty_like(padded) for _ in range(self.ranks)]
        dist.all_gather(parts, padded.contiguous(), group=self.group)
        full = torch.cat([part[:, :, :s] for part, s in zip(parts, sizes, strict=True)], 2)
        return full.reshape(b, -1, p)


class DecoderLink:
    """DiT rank 0's end of the queue to the decoder rank: each message is a header (kind,
    frames to keep, the latents' shape) and the latents; at most ``capacity`` messages are
    in flight, so the DiT runs at most that far ahead of the decoder."""

    def __init__(self, decoder_rank: int, capacity: int = 2) -> None:
        self.decoder_rank, self.capacity = decoder_rank, capacity
        self.pending: deque = deque()

    def send(self, kind: int, latents: Tensor | None = None, keep: int = -1) -> None:
        while len(self.pending) >= self.capacity:
            self._wait_oldest()
        shape = list(latents.shape) if latents is not None else [0, 0, 0, 0]
        tensors = [torch.tensor([kind, keep, *shape], dtype=torch.long)]
        if latents is not None:
            tensors.append(latents.detach().float().contiguous())
        # the tensors stay referenced until their sends complete
        self.pending.append((tensors, [dist.isend(t, self.decoder_rank) for t in tensors]))

    def _wait_oldest(self) -> None:
        for work in self.pending.popleft()[1]:
            work.wait()

    def close(self) -> None:
        self.send(STOP)
        while self.pending:
            self._wait_oldest()


@torch.no_grad()
def decoder_loop(vae, sink, source: int = 0, decoder=None, chunk: int = 1) -> int:
    """The decoder rank: receive latents from rank ``source`` until STOP, decode them with
    a streaming cache (a new one at each RESET), ``chunk`` latents a call as the session
    does, and pass ``[T, H, W, 3]`` uint8 frames to ``sink``; returns the frames passed
    on."""
    from matrixgame.inference.session import decode_frames
    from matrixgame.models.vae import FeatureCache

    cache, total = FeatureCache(), 0
    while True:
        header = torch.empty(6, dtype=torch.long)
        dist.recv(header, source)
        kind, keep, *shape = header.tolist()
        if kind == STOP:
            return total
        latents = torch.empty(shape)
        dist.recv(latents, source)
        if kind == RESET:
            cache = FeatureCache()
        frames = decode_frames(vae, latents, cache, decoder, chunk)
        frames = frames if keep < 0 else frames[:keep]
        sink(frames)
        total += len(frames)


def generate_parallel(world, start, script, sink, steps: int | None = None, seed: int = 0,
                      progress=None, guidance: dict | None = None) -> dict | None:  # fmt: skip
    """``matrixgame generate`` in the N+1 layout (call it on every rank of a torchrun job
    of N+1 processes): the DiT ranks step a session through ``script`` from ``start``, the
    last rank decodes and passes every frame batch to ``sink``. Returns, on rank 0, the
    log of :func:`matrixgame.inference.generate.generate` (poses, memory per step); None
    elsewhere."""
    from types import SimpleNamespace

    from matrixgame.inference.generate import drive
    from matrixgame.inference.session import WorldSession

    rank, size = dist.get_rank(), dist.get_world_size()
    if size < 2:
        raise ValueError("the N+1 layout needs at least 2 processes (1 DiT rank + the decoder)")
    n = size - 1
    group = dist.new_group(list(range(n)))  # every rank takes part in creating it
    if rank == n:
        decoder_loop(world.vae, sink, chunk=world.window.current)
        return None
    dit = SequenceParallelDiT(world.dit, group) if n > 1 else world.dit
    session = WorldSession(SimpleNamespace(**{**vars(world), "dit": dit}), steps=steps,
                           seed=seed, decode=False, guidance=guidance)  # fmt: skip
    link = DecoderLink(n) if rank == 0 else None

    def started(_) -> None:
        if link:
            link.send(RESET, start.latents)

    def stepped(segment, keep: int) -> None:
        if link:
            link.send(SEGMENT, segment.latents, keep)

    log = drive(session, start, script, started, stepped, progress if rank == 0 else None)
    if link:
        link.close()
    return log if rank == 0 else None
