"""The model card of a shipped world (``worlds/<name>/README.md``): what it was trained on,
how long, its held-out figures against the goals and baselines, strips, a rollout GIF, the
people's notes (``NOTES.md``, kept as written), the training log (a row per recipe call that
trained), and the command that reproduces it."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from matrixgame.io import atomic_write_text

COPY, BLUR = "copy last frame", "blurred copy"
SECONDS = (1, 4, 16)  # the goals' horizons after the context


def horizon_frames(fps: float) -> tuple[int, ...]:
    return tuple(max(1, round(s * fps)) for s in SECONDS)


def figures_of(report: dict, name: str) -> dict:
    """The headline held-out figures of world ``name`` from a ``report.json``."""
    fid = report.get("fidelity", {}).get("methods", {})
    fps = report.get("fidelity", {}).get("fps", 17.5)
    out: dict = {}

    def put(prefix: str, method: str) -> None:
        entry = fid.get(method)
        if not entry:
            return
        for k in ("psnr", "ssim", "sharpness", "fd"):
            if k in entry:
                out[f"{prefix}{k}"] = entry[k]
        for s, h in zip(SECONDS, horizon_frames(fps), strict=True):
            at = entry.get("at", {}).get(str(h))
            if at:
                out[f"{prefix}psnr@{s}s"], out[f"{prefix}ssim@{s}s"] = at["psnr"], at["ssim"]
                if "sharpness" in at:  # reports before 2026-12-05 kept PSNR and SSIM only
                    out[f"{prefix}sharpness@{s}s"] = at["sharpness"]

    put("", name)
    put("copy_", COPY)
    put("blur_", BLUR)
    put("vae_", f"{name} autoencoder")
    rev = report.get("revisit", {}).get("methods", {})
    if name in rev:
        out["revisit_psnr"] = rev[name]["psnr"]
        out["revisit_psnr_no_memory"] = rev.get(f"{name} (memory off)", {}).get("psnr")
    acts = report.get("actions", {})
    if name in acts and "real frames" in acts:
        out["idm_turn"], out["idm_turn_real"] = acts[name]["turn"], acts["real frames"]["turn"]
    drift = report.get("drift", {}).get("methods", {}).get(name)
    if drift and len(drift) >= 2:
        out["drift_first_psnr"], out["drift_last_psnr"] = drift[0]["psnr"], drift[-1]["psnr"]
    speed = report.get("speed", {}).get(name)
    if speed:
        out["fps"] = speed["fps"]
    return out


def goals(f: dict) -> list[tuple[str, str, bool | None]]:
    """(goal, measured, met) rows of the default-world issue's goals."""

    get = f.get
    rows = []

    def row(goal, measured, met):
        rows.append((goal, measured, met))

    if get("vae_psnr") is not None:
        row("autoencoder PSNR >= 30 dB", f"{get('vae_psnr'):.2f}", get("vae_psnr") >= 30)
        row("autoencoder SSIM >= 0.90", f"{get('vae_ssim'):.3f}", get("vae_ssim") >= 0.90)
        sharp = get("vae_sharpness")
        if sharp is not None:
            row("autoencoder sharpness >= 0.9", f"{sharp:.2f}", sharp >= 0.9)
    for s in SECONDS:
        for k in ("psnr", "ssim"):
            mine, copy, blur = get(f"{k}@{s}s"), get(f"copy_{k}@{s}s"), get(f"blur_{k}@{s}s")
            if None not in (mine, copy, blur):
                row(f"{k.upper()} @ {s} s beats copy-last and blurred copy",
                    f"{mine:.3f} vs {copy:.3f} / {blur:.3f}", mine > max(copy, blur))  # fmt: skip
    if None not in (get("fd"), get("copy_fd"), get("blur_fd")):
        row("FD beats copy-last and blurred copy (lower)",
            f"{get('fd'):.1f} vs {get('copy_fd'):.1f} / {get('blur_fd'):.1f}",
            get("fd") < min(get("copy_fd"), get("blur_fd")))  # fmt: skip
    if get("sharpness") is not None:
        row("world-model sharpness >= 0.7", f"{get('sharpness'):.2f}", get("sharpness") >= 0.7)
    if get("revisit_psnr_no_memory") is not None:
        gain = get("revisit_psnr") - get("revisit_psnr_no_memory")
        row("memory on beats off on revisits by >= 2 dB", f"{gain:+.2f} dB", gain >= 2)
    if get("idm_turn") is not None:
        ratio = get("idm_turn") / max(get("idm_turn_real"), 1e-9)
        row("IDM reads >= 80% of the turns it reads on real frames", f"{100 * ratio:.0f}%",
            ratio >= 0.8)  # fmt: skip
    if get("drift_last_psnr") is not None:
        loss = get("drift_first_psnr") - get("drift_last_psnr")
        row("last 10 s lose <= 1.5 dB against the first 10 s", f"{loss:.2f} dB", loss <= 1.5)
    return rows


def goals_met(f: dict) -> int:
    """How many of the default-world issue's goals figures ``f`` meet (:func:`goals`)."""
    return sum(met is True for *_, met in goals(f))


def improves(figures: dict, previous: dict | None, margin: float = 0.05) -> bool:
    """The ship rule: whether a world measured ``figures`` improves on one measured
    ``previous`` (best on the same clips): it meets more of the issue's goals, or as many with
    a 60-s mean PSNR higher by more than ``margin`` dB; anything improves on nothing. PSNR
    alone favours blur (a blurred copy of the last frame scores about as well as a world
    model that follows the turns), hence the goals first."""
    if not previous:
        return True
    mine, theirs = goals_met(figures), goals_met(previous)
    if mine != theirs:
        return mine > theirs
    return figures.get("psnr", -math.inf) > previous.get("psnr", -math.inf) + margin


# the checks of a run's held-out curve its recent trend is read from (2,000 steps at the
# recipe's checkpoint interval)
TREND_CHECKS = 8
# the autoencoder's goals that its runs' held-out checks measure: (figure, key in a check,
# goal, what it is, unit, digits)
AUTOENCODER_GOALS = (("vae_psnr", "score", 30.0, "PSNR", " dB", 2),
                     ("vae_ssim", "ssim", 0.90, "SSIM", "", 3),
                     ("vae_sharpness", "sharpness", 0.9, "sharpness ratio", "", 2))  # fmt: skip
RUNS = {"vae": "the autoencoder's training", "decoder": "the decoder's fine-tuning"}


def trend(curve: list[dict], key: str = "score") -> tuple[float, int, int] | None:
    """(gain per 1,000 steps, first step, last step) of the least-squares line through the
    last :data:`TREND_CHECKS` checks of ``curve`` that hold ``key``; None with fewer than 3."""
    points = [(c["step"], c[key]) for c in curve if c.get(key) is not None][-TREND_CHECKS:]
    if len(points) < 3:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
    return 1000 * slope, points[0][0], points[-1][0]


def measured_as_last(curve: list[dict]) -> list[dict]:
    """The checks of a world model's held-out curve measured as its last one: with the same
    noise on the past (``past_noise``: a world that plays with a noised past is checked so;
    its earlier checks, with a clean past, measure another loss)."""
    level = curve[-1].get("past_noise", 0.0) if curve else 0.0
    return [c for c in curve if c.get("past_noise", 0.0) == level]


def predictions(config: dict) -> list[str]:
    """What more training predicts for the goals not met, from the held-out curves of the
    runs (``config["curves"]``): the autoencoder's figures at the rate of their last checks,
    the world model's by its held-out loss, which the recipe early-stops on."""
    figures, curves = config.get("figures") or {}, config.get("curves") or {}
    lines = []
    for figure, key, goal, what, unit, digits in AUTOENCODER_GOALS:
        now = figures.get(figure)
        if now is None or now >= goal:
            continue
        for run, words in RUNS.items():
            t = trend(curves.get(run, []), key)
            if t is None:
                continue
            gain, first, last = t
            rate = f"{gain:+.2g}{unit} per 1,000 steps over its checks at steps {first:,}-{last:,}"
            if gain <= 0:
                lines.append(f"- Autoencoder {what} {now:.{digits}f}{unit} of {goal:g}{unit}: "
                             f"{words} changed {rate}; more of it is not predicted to reach "
                             f"the goal.")  # fmt: skip
            else:
                steps = 1000 * (goal - now) / gain
                lines.append(f"- Autoencoder {what} {now:.{digits}f}{unit} of {goal:g}{unit}: "
                             f"{words} gained {rate}; at that rate the goal is about "
                             f"{_round(steps)} steps further.")  # fmt: skip
    world = [met for goal, _, met in goals(figures) if not goal.startswith("autoencoder")]
    dit = measured_as_last(curves.get("dit", []))
    t = trend(dit)
    if t is not None and False in world:
        gain, first, last = t
        loss = -dit[-1]["score"]
        best = max(dit, key=lambda c: c["score"])
        if gain > 0:
            said = (f"fell {100 * gain / loss:.2g}% per 1,000 steps over its checks at steps "
                    f"{first:,}-{last:,}: more steps still lower it")  # fmt: skip
        else:
            said = (f"has not fallen over its checks at steps {first:,}-{last:,} (best "
                    f"{-best['score']:.4g} at step {best['step']:,}): more steps of this "
                    f"training are not predicted to lift the world model's figures")  # fmt: skip
        lines.append(f"- World-model goals ({world.count(False)} not met): its held-out "
                     f"flow-matching loss, {loss:.4g} at step {dit[-1]['step']:,}, "
                     f"{said}; the goals' figures are measured by evaluation only.")  # fmt: skip
    lines += _memory_prediction(figures, dit)
    return ["", "**What more training predicts**", "", *lines] if lines else []


def _memory_prediction(figures: dict, curve: list[dict]) -> list[str]:
    """Where memory does not yet lift revisits by the goal's 2 dB: how much the world model's
    memory latents lower its held-out loss (the checks' ``memory_gain``) and how that moves,
    i.e. whether training is teaching it to use its memory."""
    on, off = figures.get("revisit_psnr"), figures.get("revisit_psnr_no_memory")
    checks = [c for c in curve if c.get("memory_gain") is not None]
    if None in (on, off) or on - off >= 2 or not checks:
        return []
    last = checks[-1]
    share = 100 * last["memory_gain"] / max(-last["score"] + last["memory_gain"], 1e-12)
    t = trend(checks, "memory_gain")
    moved = "" if t is None else (
        f"; over its checks at steps {t[1]:,}-{t[2]:,} that changed by {t[0]:+.2g} per 1,000 "
        f"steps" + (": training is teaching it to use its memory" if t[0] > 0 else
                    ": more of this training is not predicted to teach it"))  # fmt: skip
    return [
        f"- Memory on revisits {on - off:+.2f} dB of +2 dB: on held-out windows the world "
        f"model's memory latents lower its flow-matching loss by {last['memory_gain']:.3g} "
        f"({share:.2g}% of the loss without them) at step {last['step']:,}{moved}."
    ]


def _round(steps: float) -> str:
    """A step count to two significant figures, as a prediction deserves."""
    if steps < 100:
        return f"{steps:,.0f}"
    digits = len(str(int(steps))) - 2
    return f"{round(steps, -digits):,.0f}"


def write_card(folder: Path, state: dict, report: dict | None = None,
               report_dir: Path | None = None, gif: Path | None = None) -> Path:  # fmt: skip
    """Write ``folder/README.md`` (and copy the report's strips and ``gif`` beside it)."""
    folder = Path(folder)
    config = (
        json.loads((folder / "config.json").read_text())
        if (folder / "config.json").exists()
        else {}
    )
    spec = state.get("spec", {})
    figures = config.get("figures") or {}
    for name in ("fidelity", "revisit"):
        src = report_dir / "strips" / f"{name}.png" if report_dir else None
        if src is not None and src.exists():
            shutil.copyfile(src, folder / f"strip_{name}.png")
    if gif is not None and Path(gif).exists() and Path(gif) != folder / "rollout.gif":
        shutil.copyfile(gif, folder / "rollout.gif")
    lines = [f"# {config.get('name', folder.name)}: a Doom world model trained on one CPU", ""]
    lines += _summary(config, spec)
    lines += ["", "## Held-out figures", ""]
    if figures:
        lines += ["| goal | measured | met |", "|---|---|---|"]
        lines += [f"| {g} | {m} | {'yes' if ok else 'no'} |" for g, m, ok in goals(figures)]
    else:
        lines.append("Not evaluated yet.")
    lines += predictions(config)
    for name, title in (("fidelity", "Held-out trajectory (top: real; below: generated)"),
                        ("revisit", "A loop: memory on vs off at the revisit")):  # fmt: skip
        if (folder / f"strip_{name}.png").exists():
            lines += ["", f"**{title}**", "", f"![{name}](strip_{name}.png)"]
    lines += _student(config)
    if (folder / "rollout.gif").exists():
        every = {1: "every frame", 2: "every second frame", 4: "every fourth frame"}.get(
            (config.get("window") or {}).get("frames_per_latent", 4), "one frame per latent"
        )
        lines += ["", "**A 60-s rollout of a held-out trajectory (left: real, right: generated; "
                  f"{every})**", "", "![rollout](rollout.gif)"]  # fmt: skip
    notes = folder / "NOTES.md"  # written by people, kept across recipe runs
    if notes.exists():
        lines += ["", "## Notes", "", notes.read_text().strip()]
    lines += ["", "## Training log", "",
              "| date | device | threads | hours | trained (to step) | VAE / decoder / DiT steps "
              "| PSNR | SSIM |", "|---|---|---:|---:|---|---|---:|---:|"]  # fmt: skip
    for row in state.get("sessions", []):
        f = row.get("figures") or {}
        steps = row.get("steps", {})
        lines.append(
            f"| {row['date']} | {row['device']} | {row['threads']} | {row['seconds'] / 3600:.2f} "
            f"| {_trained(row)} "
            f"| {steps.get('vae', 0)} / {steps.get('decoder', 0)} / {steps.get('dit', 0)} "
            f"| {_num(f.get('psnr'))} | {_num(f.get('ssim'), 3)} |"
        )
    lines += ["", "## Reproduce", "", "```bash",
              "make world            # matrixgame world build: resumes; --hours H bounds a call",
              f"matrixgame eval {_where(folder)} --data runs/world/eval-data "
              "--idm runs/world/idm --out runs/world/report", "```", ""]  # fmt: skip
    path = folder / "README.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def student_goals(teacher: dict, student: dict) -> list[tuple[str, str, bool | None]]:
    """(goal, measured, met) rows of the distillation issue's goals, student vs teacher."""
    rows = []
    for s in SECONDS:
        t, m = teacher.get(f"psnr@{s}s"), student.get(f"psnr@{s}s")
        ts, ms = teacher.get(f"ssim@{s}s"), student.get(f"ssim@{s}s")
        if None not in (t, m, ts, ms):
            rows.append(
                (
                    f"within 0.5 dB PSNR and 0.02 SSIM of the world model @ {s} s",
                    f"{m - t:+.2f} dB, {ms - ts:+.3f}",
                    m >= t - 0.5 and ms >= ts - 0.02,
                )
            )
    if None not in (teacher.get("sharpness"), student.get("sharpness")):
        rows.append(("sharpness >= the world model's",
                     f"{student['sharpness']:.2f} vs {teacher['sharpness']:.2f}",
                     student["sharpness"] >= teacher["sharpness"]))  # fmt: skip
    if None not in (student.get("drift_first_psnr"), student.get("drift_last_psnr")):
        loss = student["drift_first_psnr"] - student["drift_last_psnr"]
        rows.append(("last 10 s of 60 lose <= 1.5 dB", f"{loss:.2f} dB", loss <= 1.5))
    return rows


def _student(config: dict) -> list[str]:
    student = config.get("student")
    if not student:
        return []
    sampler, figures = student.get("sampler", {}), student.get("figures") or {}
    multi = "" if student.get("cold_start_only") else ", then multi-segment rollouts on its own " \
        "past and memory"  # fmt: skip
    lines = ["", "## The few-step student", "",
             f"`student.safetensors`: DMD-distilled from the world model at step "
             f"{student.get('teacher_step', '?')} (a cold start on recorded pasts{multi}"
             f"{_regression(student)}{_teacher_guidance(student)}), "
             f"{student.get('step', '?')} steps; samples in {sampler.get('steps', '?')} steps "
             f"(`load(name, student=True)`, `matrixgame play --student`). Against the world "
             f"model at {config['sampler']['steps']} steps:", ""]  # fmt: skip
    rows = student_goals(config.get("figures") or {}, figures)
    if rows:
        lines += ["| goal | measured | met |", "|---|---|---|"]
        lines += [f"| {g} | {m} | {'yes' if ok else 'no'} |" for g, m, ok in rows]
    else:
        lines.append("Not evaluated yet.")
    lines += _cold_start_line(student)
    one = student.get("figures_1_step") or {}
    if one.get("psnr") is not None:
        teacher = config.get("figures") or {}
        lines += ["", f"In one step (its first exit, trained too: `matrixgame play --student "
                  f"--steps 1`, real time on a plain AVX2 CPU): PSNR {_num(one.get('psnr'))} "
                  f"dB, SSIM {_num(one.get('ssim'), 3)}, sharpness "
                  f"{_num(one.get('sharpness'))}, against the world model's "
                  f"{_num(teacher.get('psnr'))} / {_num(teacher.get('ssim'), 3)} / "
                  f"{_num(teacher.get('sharpness'))}."]  # fmt: skip
    return lines


def _regression(student: dict) -> str:
    """How its last stage used DMD's regression term, where it did."""
    weight = student.get("regression") or 0.0
    if not weight:
        return ""
    return (f"; its last run with DMD's regression term, weight {weight:g}, toward the world "
            f"model's own samples from the same noise")  # fmt: skip


def _teacher_guidance(student: dict) -> str:
    """The teacher's classifier-free guidance in its last run, where it had some."""
    guided = student.get("guidance") or 1.0
    return f", the world model guided {guided:g} on the actions" if guided != 1 else ""


def _cold_start_line(student: dict) -> list[str]:
    """Multi-segment training against its cold start alone (single segments on recorded
    pasts), where both were evaluated: the report's claim, drift over a 60-s rollout."""
    cold = (student.get("cold_start") or {}).get("figures") or {}
    multi = student.get("figures") or {}
    keys = ("psnr", "drift_first_psnr", "drift_last_psnr")
    if any(f.get(k) is None for f in (cold, multi) for k in keys):
        return []

    def drift(f: dict) -> str:
        return f"{f['drift_first_psnr'] - f['drift_last_psnr']:.2f}"

    better = multi["drift_last_psnr"] > cold["drift_last_psnr"]
    return ["", f"Multi-segment against its cold start alone "
            f"({student['cold_start'].get('step', '?')} steps on recorded pasts, one segment "
            f"each), in {student.get('sampler', {}).get('steps', '?')} steps: PSNR "
            f"{_num(multi['psnr'])} vs {_num(cold['psnr'])} dB, the last 10 s of 60 at "
            f"{_num(multi['drift_last_psnr'])} vs {_num(cold['drift_last_psnr'])} dB (they lose "
            f"{drift(multi)} vs {drift(cold)} dB against the first 10 s): multi-segment "
            f"training {'holds up better' if better else 'does not hold up better'} late in "
            f"the rollout."]  # fmt: skip


def _summary(config: dict, spec: dict) -> list[str]:
    from matrixgame.models.vae import VAE_PRESETS

    if not config:
        return ["No weights shipped yet."]
    vae, dit, window = config["vae"], config["dit"], config["window"]
    f = window.get("frames_per_latent", 4)
    preset = VAE_PRESETS.get(vae["preset"])
    shape = (f"{preset.spatial_factor}x spatial, {preset.temporal_factor}x temporal, "
             f"{preset.z_dim} channels") if preset else "?"  # fmt: skip
    version = config.get("version")  # absent: written before the recipe numbered versions
    numbered = f"- **Version**: {version} (the recipe's `version`; a new one retrains from the "
    numbered += "recordings up)."
    return [
        *([numbered] if version else []),
        f"- **Data**: Freedoom {', '.join(config.get('maps', []))} recorded by the project's "
        f"ViZDoom agent, {spec.get('frames', '?')} training frames, frame skip "
        f"{config.get('frame_skip')} ({config['fps']:.1f} frames/s), {config['width']}x"
        f"{config['height']}; held-out trajectories with loops recorded with another seed.",
        f"- **Autoencoder**: `{vae['preset']}` preset of the Wan2.2 causal VAE ({shape}), "
        f"{_decoder_line(config)}.",
        f"- **World model**: `{dit['preset']}` DiT, {dit['step']} steps{_carried(dit)}; window of "
        f"{window['memory']} memory + {window['past']} past + {window['current']} current "
        f"latents (one step = {f * window['current']} frames = "
        f"{1000 * f * window['current'] / config['fps']:.0f} ms)"
        f"{', camera-aligned RoPE' if window.get('camera_rope') else ''}; "
        f"{config['sampler']['steps']} {config['sampler']['name']} steps, shift "
        f"{config['sampler']['shift']}{_guidance_words(config['sampler'])}"
        f"{_past_noise_words(config['sampler'])}{_revisit_words(config['sampler'])}.",
        *_light_line(config),
        "- **Weights**: bf16 safetensors (`vae`, `dit`"
        f"{', `discriminator`' if config.get('decoder_step') != 0 else ''}"
        f"{', `student`' if config.get('student') else ''}"
        f"{', `light`' if config.get('light') else ''}), `config.json`.",
    ]


def _carried(dit: dict) -> str:
    """Where a world model started from an earlier version's (`train/latent_map.py`)."""
    c = dit.get("carried_from")
    if not c:
        return ""
    return (f" from version {c['version']}'s world model ({c['step']} steps) carried onto "
            f"these latents by a rotation (it explains {100 * c['explained']:.0f}% of their "
            f"variance in the earlier autoencoder's)")  # fmt: skip


def _guidance_words(sampler: dict) -> str:
    """The sampler's classifier-free guidance in words (empty where it is off)."""
    g = sampler.get("guidance") or {}
    parts = [f"{g[k]:g} on the {k}" for k in ("actions", "memory") if g.get(k, 1.0) != 1.0]
    return f", classifier-free guidance {' and '.join(parts)}" if parts else ""


def _past_noise_words(sampler: dict) -> str:
    """The noise level the sampler puts on the past (empty where none)."""
    level = sampler.get("past_noise", 0.0)
    return f", the past latents noised to level {level:g} (trained with noise on its past)" \
        if level else ""  # fmt: skip


def _revisit_words(sampler: dict) -> str:
    """How the sampler plays revisits (empty where it follows its past everywhere)."""
    margin = sampler.get("revisit_margin")
    if margin is None:
        return ""
    by = f", by more than {margin:g} of view overlap," if margin else ""
    return (f"; a window whose memory sees its view better than its last past latent does{by} "
            f"is generated from memory alone")  # fmt: skip


def _rate_text(rate) -> str:
    """A pruning rate, or one per decoder stage: "75%", "87.5/87.5/87.5/50% by stage"."""
    if isinstance(rate, list | tuple):
        return "/".join(f"{100 * r:g}" for r in rate) + "% by stage (latents to pixels)"
    return f"{100 * rate:g}%"


def _light_line(config: dict) -> list[str]:
    """The light decoder, where the world ships one: how it was made, its held-out PSNR."""
    light = config.get("light")
    if not light:
        return []
    f = light.get("figures") or {}
    psnr = (f" Held-out PSNR {f['psnr']:.2f} dB against the full decoder's "
            f"{f['full_psnr']:.2f}" if "psnr" in f and "full_psnr" in f else "")  # fmt: skip
    if psnr and {"ssim", "sharpness", "full_ssim", "full_sharpness"} <= set(f):
        psnr += (f", SSIM {f['ssim']:.3f} against {f['full_ssim']:.3f}, sharpness ratio "
                 f"{f['sharpness']:.3f} against {f['full_sharpness']:.3f}")  # fmt: skip
    psnr += "." if psnr else ""
    return [f"- **Light decoder** (`light`): the decoder's channels pruned by "
            f"{_rate_text(light['pruning_rate'])} (MG-LightVAE), distilled {light.get('step')} "
            f"steps against the decoder at step {light.get('decoder_step')}.{psnr} "
            f"`matrixgame play` decodes with it in its realtime mode (the default on a CPU) "
            f"where the full decoder measures too slow at start-up (`--decoder light` "
            f"always), `load(name, light=True)`."]  # fmt: skip


def _trained(row: dict) -> str:
    """A training-log row's "trained (to step)": the stages and steps, "evaluated" too."""
    parts = [f"{k} {v}" for k, v in row["trained"].items()]
    return ", ".join(parts + (["evaluated"] if row.get("evaluated") else [])) or "—"


def _decoder_line(config: dict) -> str:
    """How the autoencoder was trained: jointly, then (when it was) the decoder alone."""
    encoder, decoder = config.get("encoder_step", "?"), config.get("decoder_step")
    if decoder is None:  # written before the config said (the first version's)
        return (f"encoder {encoder} steps, decoder {config['vae']['step']} steps "
                f"(adversarial fine-tuning on noisy latents)")  # fmt: skip
    if not decoder:
        return f"{encoder} steps (reconstruction); no adversarial decoder fine-tuning yet"
    return (f"{encoder} steps (reconstruction), then the decoder {decoder} steps of "
            f"adversarial fine-tuning on noisy latents (encoder frozen)")  # fmt: skip


def _where(folder: Path) -> str:
    """The world folder as the card's commands name it: ``worlds/NAME`` from the checkout's
    root for a shipped world (never this machine's absolute path), else as given."""
    from matrixgame.worlds.shipped import worlds_root

    if folder.resolve().parent == worlds_root().resolve():
        return f"worlds/{folder.name}"
    return folder.as_posix()


def _num(x, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"
