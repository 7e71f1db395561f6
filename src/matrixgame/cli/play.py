"""`matrixgame play | generate`: walk a shipped world in the browser, or turn an action script
into an MP4."""

from __future__ import annotations

import argparse
import os

from matrixgame.cli.options import add_guidance_arguments, guidance_of


def _world_arguments(p: argparse.ArgumentParser, mode: str) -> None:
    p.add_argument("--world", default="doom-e1m1",
                   help="a shipped world's name or folder (default: doom-e1m1)")  # fmt: skip
    p.add_argument("--mode", choices=("auto", "realtime", "quality"), default=mode,
                   help="realtime: the world's student in one step, with its light decoder "
                        "where this machine is too slow for the full one (what it ships of "
                        "them); quality: the world model with its own sampler and full "
                        "decoder; auto: realtime on a CPU, quality on a GPU (default: "
                        f"{mode}). --student, --decoder and --steps override it")  # fmt: skip
    p.add_argument("--student", action="store_true",
                   help="the world's distilled few-step student in place of its world model "
                        "(where it ships one: see its model card)")  # fmt: skip
    p.add_argument("--decoder", choices=("auto", "full", "light"), default="auto",
                   help="the world's full decoder, or its light one (channels pruned, "
                        "distilled: faster, blurrier; where it ships one); auto: in realtime "
                        "mode the light one only where a short measure at start-up finds "
                        "the full one too slow for the world's frame rate, else the full "
                        "one")  # fmt: skip
    p.add_argument("--light", action="store_const", const="light", dest="decoder",
                   help="the same as --decoder light")  # fmt: skip
    p.add_argument("--steps", type=int, help="sampler steps per segment (default: the world's)")
    p.add_argument("--int8", choices=("auto", "off"), default="auto",
                   help="INT8 attention projections where this CPU/GPU has fast int8 "
                        "(auto) or never (off)")  # fmt: skip
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="the world model's dtype: auto is bfloat16 where this CPU (AVX-512 "
                        "BF16, AMX) or GPU multiplies it fast, else float32")  # fmt: skip
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the session")
    add_guidance_arguments(p, "the world's own, see its model card")


def add_play(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "play",
        help="walk a world in your browser (W/A/S/D and the mouse)",
        description="Serve a local web page that streams a world model's frames for your keys "
        "and mouse (pointer lock), with FPS, key-to-frame latency, restarts from the world's "
        "starts, the memory retrieved, a top-down trail with revisits marked, and MP4 "
        "recording. Binds to 127.0.0.1 unless --host says otherwise.",
    )
    _world_arguments(p, "auto")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")  # fmt: skip
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-sessions", type=int, default=2,
                   help="players at once; one more is told the server is busy")  # fmt: skip
    p.add_argument("--idle-timeout", type=float, default=120.0,
                   help="seconds without a message before a connection is closed")  # fmt: skip
    p.add_argument("--no-browser", action="store_true", help="do not open the page")
    p.set_defaults(run_command=_run_play)


def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="an action script (JSON) into an H.264 MP4 of the world",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Walk an action script through a world from a start and write the frames as an H.264 MP4
(the start's own frames first, then one segment per step). The script (see README):

  {"segments": [{"frames": 40, "keys": "W"},
                {"frames": 12, "mouse": [0.0, 0.5]},
                {"frames": 40, "keys": "WD", "mouse": [0.0, -0.1]}]}

keys: any of W, S, A, D held for the segment; mouse: (pitch, yaw) per frame in mouse units
(the world's kinematics: 15 degrees per unit in Doom); positive looks down / turns right.""",
    )
    p.add_argument("script", help="action script (JSON)")
    p.add_argument("--out", required=True, help="the video (.mp4)")
    _world_arguments(p, "quality")
    p.add_argument("--start", help="a shipped start (index or name; default 0) or an image file")
    p.add_argument("--poses", help="also write the frames' poses and each step's retrieved "
                                   "memory as JSON here")  # fmt: skip
    p.set_defaults(run_command=_run_generate)


def _open(args: argparse.Namespace):
    """The world with its starts, bf16 and INT8 applied where they pay, the decoder a
    real-time session can afford (measured), and what was chosen."""
    import torch

    from matrixgame.accel.capability import cpu_capability
    from matrixgame.accel.precision import cast_dit
    from matrixgame.worlds.shipped import load_starts, load_vae, load_world, world_folder

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps is not None and not 1 <= args.steps <= 100:
        raise ValueError(f"--steps must lie in 1..100, got {args.steps}")
    folder = world_folder(args.world)
    resolve_mode(args, folder, torch.cuda.is_available())
    world = load_world(folder, student=args.student, light=args.decoder == "light")
    precision = cast_dit(world.dit, args.dtype)
    info = {
        "capability": cpu_capability(),
        "dtype": f"{precision.name} ({precision.reason})",
        "int8": "off",
    }
    if args.int8 == "auto":
        from matrixgame.accel.int8 import quantize_dit

        report = quantize_dit(world.dit)
        info["int8"] = (f"{report.backend}, {len(report.replaced)} layers" if report.quantized
                        else f"off ({report.reason})")  # fmt: skip
    starts = load_starts(folder)
    # sessions' memory retrieval compiled where inductor can (a step's retrieval against
    # 10k latents: 3 ms instead of 8.5-14 on AVX2), warmed here so no step stalls on it
    info["retrieval"] = "eager (no start to warm it from)"
    if starts:
        from matrixgame.inference.memory import warm_compiled_retrieval
        from matrixgame.inference.session import WorldSession

        probe = WorldSession(world, decode=False)
        view = probe.window.view(starts[0].K, probe.height, probe.width, probe.metres_per_unit)
        why = warm_compiled_retrieval(view)
        info["retrieval"] = "compiled" if why is None else f"eager ({why})"
    compiled = info["retrieval"] == "compiled"
    decoder = args.decoder
    if decoder == "measure":  # the world as it will play, timed with its full decoder
        from matrixgame.accel.budget import choose_decoder
        from matrixgame.inference.session import WorldSession
        from matrixgame.worlds.shipped import choose_start

        light, why = True, "no start to measure the full one from"  # the safe side
        if starts:
            session = WorldSession(world, steps=args.steps, seed=args.seed,
                                   guidance=guidance_of(args),
                                   compile_retrieval=compiled)  # fmt: skip
            choice = choose_decoder(session, choose_start(starts, None, world),
                                    float(world.meta.get("fps", 17.5)))  # fmt: skip
            light, why = choice.light, choice.reason
        decoder = f"{'light' if light else 'full'} ({why})"
        if light:
            world.vae = load_vae(folder, light=True)[0]
    info["mode"] = (f"{args.mode}: {'student' if args.student else 'world model'} in "
                    f"{args.steps or 'its own'} step{'' if args.steps == 1 else 's'}, "
                    f"{decoder} decoder, {precision.name}")  # fmt: skip
    return world, starts, info


def resolve_mode(args: argparse.Namespace, folder, cuda: bool) -> None:
    """Set ``args.student``, ``args.decoder`` and ``args.steps`` from ``args.mode`` where the
    flags left them open: real time is the student in one step (its trained first exit),
    where the world ships one, with its light decoder where the world ships one and the full
    one proves too slow (``args.decoder`` "measure": :func:`_open` measures); "auto" is real
    time without ``cuda``. ``args.decoder`` ends "full", "light" or "measure"."""
    from matrixgame.worlds.shipped import has_light, has_student

    if args.mode == "auto":
        args.mode = "quality" if cuda else "realtime"
    if args.decoder == "light" and not has_light(folder):
        raise ValueError(f"{folder}: this world ships no light decoder (config.json has none)")
    if args.decoder == "auto":
        realtime = args.mode == "realtime" and has_light(folder)
        args.decoder = "measure" if realtime else "full"
    if args.mode == "realtime":
        args.student = args.student or has_student(folder)
        if args.steps is None and args.student:
            args.steps = 1


def _run_play(args: argparse.Namespace) -> None:
    from matrixgame.serve.app import PlayServer, ServeConfig, run, torch_thread

    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must lie in 1..65535, got {args.port}")
    # loaded on the thread that will step it (see serve.app.torch_thread)
    world, starts, info = torch_thread().submit(_open, args).result()
    config = ServeConfig(max_sessions=args.max_sessions, idle_s=args.idle_timeout,
                         steps=args.steps, guidance=guidance_of(args),
                         compile_retrieval=info["retrieval"] == "compiled")  # fmt: skip
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"matrixgame play: listening on {args.host}: anyone who reaches this address "
              "can play (and use this machine's CPU)")  # fmt: skip
    print(
        f"matrixgame play: {world.name} ({info['capability']}; {info['dtype']}; "
        f"int8: {info['int8']}; retrieval {info['retrieval']}; mode {info['mode']})"
    )
    run(PlayServer(world, starts, config, info), args.host, args.port, not args.no_browser)


def _run_generate(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from matrixgame.data.action_script import load_action_script
    from matrixgame.inference.generate import check_script, generate, write_log
    from matrixgame.inference.session import WorldSession
    from matrixgame.media import Mp4Writer
    from matrixgame.worlds.shipped import choose_start

    script = load_action_script(args.script)
    if not args.out.lower().endswith(".mp4"):
        raise ValueError(f"--out {args.out}: the video is written as MP4; name it *.mp4")
    world, starts, info = _open(args)
    session = WorldSession(world, steps=args.steps, seed=args.seed, guidance=guidance_of(args),
                           compile_retrieval=info["retrieval"] == "compiled")  # fmt: skip
    check_script(script, session, world.meta.get("kinematics"))
    start = choose_start(starts, args.start, world)
    fps = float(world.meta.get("fps", 17.5))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: the N+1 layout
        return _generate_parallel(args, world, start, script, fps)
    with Mp4Writer(args.out, fps) as video, \
            tqdm(total=len(script), desc="generate", unit="frame") as bar:  # fmt: skip
        log = generate(session, start, script, video.write, bar.update)
    print(f"{args.out}: {log['frames']} frames ({log['context_frames']} from the start "
          f"{start.name!r}, {len(script)} generated) at {fps:g} fps, "
          f"{world.width}x{world.height}")  # fmt: skip
    if args.poses:
        write_log(args.poses, log, fps)
        print(f"{args.poses}: per-frame poses and each step's memory")


def _generate_parallel(args: argparse.Namespace, world, start, script, fps: float) -> None:
    """Under torchrun: N DiT ranks (Ulysses) and the last rank decoding into the MP4."""
    import torch.distributed as dist

    from matrixgame.inference.generate import write_log
    from matrixgame.inference.parallel import generate_parallel
    from matrixgame.media import Mp4Writer

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    if rank == size - 1:
        with Mp4Writer(args.out, fps) as video:
            generate_parallel(world, start, script, video.write, args.steps, args.seed,
                              guidance=guidance_of(args))  # fmt: skip
        print(f"{args.out}: decoded by rank {rank}; {size - 1} DiT ranks (Ulysses)")
    else:
        log = generate_parallel(world, start, script, None, args.steps, args.seed,
                                guidance=guidance_of(args))  # fmt: skip
        if log is not None and args.poses:
            write_log(args.poses, log, fps)
            print(f"{args.poses}: per-frame poses and each step's memory")
    dist.barrier()
