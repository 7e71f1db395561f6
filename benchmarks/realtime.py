"""Real time on the CPU: a streaming WorldSession of the default world, end to end (DiT, memory
retrieval, streaming decode), with memory pools of 1k and 10k latents, as the report's
ablation. "full" is what `matrixgame play` runs: the DiT in bf16 where the CPU multiplies
bf16 fast, else in float32 with INT8 attention projections where it has fast int8; memory
retrieval compiled; the world's light decoder where it ships one. Then the stack minus each
part (bf16, INT8, compile: retrieval eager, the light decoder: the full one), INT8 on top of
bf16 (which play leaves out), the world model without the guidance its sampler ships with
(one more DiT evaluation per step), every row's FPS with the retrieval looped per candidate like
the release's, and the decoder, then the DiT, compiled once the stream is steady (off in the
full stack: the decoder did not pay on the CPUs measured, the DiT compiles for minutes).

    python benchmarks/realtime.py [--world doom-e1m1] [--steps 3] [--segments 20] [--student]

The pool is filled with latents along a random walk before timing, so retrieval scores the
whole pool every segment. Rows name the CPU capability (AVX2-only machines: see
benchmarks/vae_decode.py for the emulation flags).
"""

from __future__ import annotations

import argparse
import time

import torch

from common import median_ms, print_table, write_json
from matrixgame.accel.capability import cpu_capability, fast_int8
from matrixgame.accel.int8 import Int8Linear, quantize_dit
from matrixgame.accel.precision import cast_dit, model_dtype
from matrixgame.geometry import pose_from_angles
from matrixgame.geometry.frustum import overlap_sampled
from matrixgame.inference.rollout import Guidance
from matrixgame.inference.session import Start, WorldSession
from matrixgame.worlds import load
from matrixgame.worlds.shipped import has_light


def walk(n: int, seed: int = 0) -> torch.Tensor:
    """``[n, 4, 4]`` poses of a random walk on a floor (Doom units)."""
    g = torch.Generator().manual_seed(seed)
    yaw = torch.cumsum(torch.randn(n, generator=g, dtype=torch.float64) * 5, 0)
    pos = torch.cumsum(torch.randn(n, 3, generator=g, dtype=torch.float64) * 8, 0)
    pos[:, 2] = 41.0
    return pose_from_angles(pos, yaw, torch.zeros(n, dtype=torch.float64))


def session_with_pool(world, pool: int, steps: int, compile: str | None = None,
                      compile_retrieval: bool = False, compile_dit: str | None = None,
                      guidance: Guidance | None = None) -> WorldSession:  # fmt: skip
    """A session reset from a start of ``pool`` random latents along a walk."""
    f = world.vae.config.spatial_factor
    h, w = world.height // f, world.width // f
    z = world.dit.config.in_dim
    c2w = walk(pool)
    t = world.window.frames_per_latent
    frames = world.window.frames(pool)
    frame_c2w = c2w[
        (torch.arange(frames) + t - 1).div(t, rounding_mode="floor").clamp(max=pool - 1)
    ]
    K = torch.tensor([world.width / 2, world.width / 2 * 1.2, world.width / 2, world.height / 2])
    start = Start(torch.randn(z, pool, h, w), c2w, frame_c2w, torch.zeros(frames, 6),
                  torch.zeros(frames, 2), K, frames_per_latent=t)  # fmt: skip
    session = WorldSession(world, steps=steps, decode=True, compile=compile,
                           compile_retrieval=compile_retrieval, compile_dit=compile_dit,
                           guidance=guidance)  # fmt: skip
    session.world.vae, vae = None, session.world.vae  # skip decoding the whole start
    session.reset(start)
    session.world.vae = vae
    return session


def loop_retrieval(pool, query, before: int, k: int):
    """The release's way: one overlap call (and a .item()) per candidate."""
    rows = pool.candidates(before)
    scores = [overlap_sampled(query, pool.frusta[r : r + 1], pool.view).item() for r in rows]
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]
    return sorted(int(pool.positions[rows[i]]) for i in order)


def retrieval_ms(session: WorldSession) -> tuple[float, float]:
    """Milliseconds of one segment's memory retrieval: batched, and looped per candidate."""
    st, window = session.state, session.window
    before, query = st.length - window.past, st.c2w[-1]
    batched = median_ms(lambda: st.pool.retrieve(query, before, window.memory), 20)
    looped = median_ms(lambda: loop_retrieval(st.pool, query, before, window.memory), 1, 0)
    return batched, looped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default="doom-e1m1")
    parser.add_argument("--steps", type=int, default=3, help="denoising steps per segment")
    parser.add_argument("--segments", type=int, default=20)
    parser.add_argument("--student", action="store_true",
                        help="the world's student (as `matrixgame play --student`)")  # fmt: skip
    parser.add_argument("--pools", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled rows")
    parser.add_argument("--retrieval-only", action="store_true",
                        help="time only a segment's memory retrieval, per pool size")  # fmt: skip
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.retrieval_only:
        return retrieval_rows(load(args.world), args)
    light = has_light(args.world)

    def world(dtype: str = "auto", int8: str = "auto", decoder_light: bool = light):
        """The world as `matrixgame play` prepares it (bf16 and int8 where they pay), or as
        asked: ``int8`` "auto", "int8" (forced) or "off"."""
        w = load(args.world, student=args.student, light=decoder_light)
        precision = cast_dit(w.dit, dtype)
        report = quantize_dit(w.dit, backend=int8) if int8 != "off" else None
        return w, precision, report

    full, precision, report = world()
    rows = []
    for pool in args.pools:  # "full": what play runs (retrieval compiled, light decoder)
        rows.append(measure(full, pool, args, "full", compile_retrieval=True))
        if precision.dtype != torch.float32:  # float32 with and without int8, int8 on bf16
            rows.append(measure(world("float32")[0], pool, args, "minus bf16",
                                compile_retrieval=True))  # fmt: skip
            if fast_int8():
                rows.append(measure(world("float32", "off")[0], pool, args,
                                    "minus bf16, minus INT8", compile_retrieval=True))  # fmt: skip
                rows.append(measure(world(int8="int8")[0], pool, args, "plus INT8 on bf16",
                                    compile_retrieval=True))  # fmt: skip
        elif report.quantized:
            rows.append(measure(world(int8="off")[0], pool, args, "minus INT8",
                                compile_retrieval=True))  # fmt: skip
        rows.append(measure(full, pool, args, "minus compile", compile_retrieval=False))
        if light:  # the full stack with the world's full decoder
            rows.append(measure(world(decoder_light=False)[0], pool, args,
                                "minus light decoder", compile_retrieval=True))  # fmt: skip
    if not WorldSession(full).guidance.off:  # the world's sampler guides: without it
        rows.append(measure(full, args.pools[0], args, "minus guidance",
                            compile_retrieval=True, guidance=Guidance()))  # fmt: skip
    if not args.no_compile:  # the decoder, then the DiT, compiled once steady (inductor)
        rows.append(measure(full, args.pools[0], args, "full + compiled decoder",
                            compile="inductor", compile_retrieval=True))  # fmt: skip
        rows.append(measure(full, args.pools[0], args, "full + compiled DiT",
                            compile_dit="inductor", compile_retrieval=True))  # fmt: skip
    print(f"dtype: {precision.name} ({precision.reason})")
    print(f"int8: {report.backend} ({report.reason})")
    print_table(rows, list(rows[0]))
    print(write_json("realtime", {"rows": rows, "world": args.world, "int8": report.reason,
                                  "dtype": precision.reason}))  # fmt: skip


def retrieval_rows(world, args) -> None:
    """One segment's batched retrieval (the median of 20) against each pool size, eager and
    compiled (the same selections, checked here)."""
    rows = []
    for pool in args.pools:
        st = session_with_pool(world, pool, args.steps).state
        before, k = st.length - world.window.past, world.window.memory
        timed = {}
        for compiled in (False, True):
            st.pool.compiled = compiled
            chosen = st.pool.retrieve(st.c2w[-1], before, k)  # compiles here, untimed
            ms = median_ms(lambda st=st, b=before, k=k: st.pool.retrieve(st.c2w[-1], b, k), 20)
            timed[compiled] = (ms, chosen)
        if not torch.equal(timed[False][1], timed[True][1]):
            raise SystemExit(f"compiled retrieval chose {timed[True][1].tolist()}, eager "
                             f"{timed[False][1].tolist()}")  # fmt: skip
        rows.append({"pool": pool, "retrieval_ms": round(timed[False][0], 2),
                     "compiled_ms": round(timed[True][0], 2),
                     "speedup": round(timed[False][0] / timed[True][0], 1),
                     "capability": cpu_capability(),
                     "threads": torch.get_num_threads()})  # fmt: skip
    print_table(rows, list(rows[0]))
    print(write_json("realtime_retrieval", {"rows": rows, "world": args.world}))


def measure(world, pool: int, args, name: str, compile: str | None = None,
            compile_retrieval: bool = False, compile_dit: str | None = None,
            guidance: Guidance | None = None) -> dict:  # fmt: skip
    """One configuration's row: segment time and FPS as measured, its parts, and the FPS with
    the retrieval looped per candidate instead of batched."""
    session = session_with_pool(world, pool, args.steps, compile, compile_retrieval,
                                compile_dit, guidance)  # fmt: skip
    n = session.frames_per_step
    keys, mouse = torch.zeros(n, 6), torch.zeros(n, 2)
    keys[:, 0] = 1
    for _ in range(4 if compile or compile_dit else 1):  # warm-up (and compiles, once steady)
        session.step(keys, mouse)
    dit, decode, total = [], [], []
    for _ in range(args.segments):
        start = time.perf_counter()
        seg = session.step(keys, mouse)
        total.append(time.perf_counter() - start)
        dit.append(seg.dit_seconds)
        decode.append(seg.decode_seconds)
    batched, looped = retrieval_ms(session)
    seg_ms = 1e3 * sorted(total)[len(total) // 2]
    return {
        "stack": name, "dtype": str(model_dtype(world.dit)).removeprefix("torch."),
        "int8": "int8" if any(isinstance(m, Int8Linear) for m in world.dit.modules()) else "none",
        "retrieval": "compiled" if compile_retrieval else "eager",
        "decoder": "light" if world.vae.config.pruning_rate else "full",
        "pool": pool, "capability": cpu_capability(), "threads": torch.get_num_threads(),
        "steps": args.steps, "guidance": "off" if session.guidance.off else
        f"{session.guidance.actions:g}/{session.guidance.memory:g}",
        "frames_per_segment": n,
        "ms_per_segment": round(seg_ms, 1), "fps": round(n / seg_ms * 1e3, 1),
        "dit_ms": round(1e3 * sorted(dit)[len(dit) // 2], 1),
        "decode_ms": round(1e3 * sorted(decode)[len(decode) // 2], 1),
        "retrieval_ms": round(batched, 2),
        "retrieval_loop_ms": round(looped, 1),
        "fps_minus_device_retrieval": round(n / (seg_ms - batched + looped) * 1e3, 1),
    }  # fmt: skip


if __name__ == "__main__":
    main()
