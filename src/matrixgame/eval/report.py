"""The evaluation report: ``report.json`` (every number), ``report.md`` and ``report.html``
(the same tables and plots, for people), ``plots/*.png`` (matplotlib) and ``strips/*.png``
(frames a person can look at: real above generated)."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

from matrixgame.io import atomic_write_text

WINDOW = ("past", "current", "memory")
Block = tuple  # ("h", level, text) | ("p", text) | ("table", header, rows) | ("img", path, alt)


def clean(value):
    """JSON-ready copy: numpy scalars to floats, non-finite floats to None (PSNR of identical
    frames is infinite; JSON has no infinity)."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞"
        if math.isnan(value):
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


# -- plots ----------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_fidelity(fidelity: dict, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    fps = fidelity["fps"]
    for method, entry in fidelity["methods"].items():
        for ax, key in zip(axes, ("psnr", "ssim"), strict=True):
            y = np.asarray(entry["curves"][key], dtype=float)
            ax.plot(np.arange(1, len(y) + 1) / fps, y, label=method, lw=1.2)
    for ax, label in zip(axes, ("PSNR (dB)", "SSIM"), strict=True):
        ax.set_xlabel("seconds after the context")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Fidelity over the horizon (held-out trajectories, true actions)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_bars(table: dict, keys: tuple[str, ...], title: str, path: Path) -> None:
    plt = _pyplot()
    methods = list(table)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 0.5 * len(methods) + 1.8))
    axes = np.atleast_1d(axes)
    for ax, key in zip(axes, keys, strict=True):
        values = [table[m].get(key) for m in methods]
        values = [np.nan if v is None else v for v in values]
        ax.barh(methods, values, color="tab:blue")
        ax.set_xlabel(key)
        ax.invert_yaxis()
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_drift(drift: dict, path: Path) -> None:
    plt = _pyplot()
    keys = ("psnr", "ssim", "sharpness")
    fig, axes = plt.subplots(1, len(keys), figsize=(14, 4))
    for method, rows in drift["methods"].items():
        x = [r["start_s"] for r in rows]
        for ax, key in zip(axes, keys, strict=True):
            ax.plot(x, [np.nan if r.get(key) is None else r[key] for r in rows], "o-", label=method)
    for ax, key in zip(axes, keys, strict=True):
        ax.set_xlabel(f"bucket start (s), {drift['bucket_seconds']:g} s buckets")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Drift: quality per time bucket of the rollouts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_strip(rows: dict[str, np.ndarray], columns: list[int], labels: list[str],
                title: str, path: Path) -> None:  # fmt: skip
    plt = _pyplot()
    h, w = next(iter(rows.values())).shape[1:3]
    scale = 1.6 / max(h, w) * 1.5
    size = (len(columns) * w * scale, len(rows) * h * scale + 0.6)
    fig, axes = plt.subplots(len(rows), len(columns), squeeze=False, figsize=size)
    for r, (name, video) in enumerate(rows.items()):
        for c, t in enumerate(columns):
            ax = axes[r, c]
            ax.imshow(video[min(t, len(video) - 1)])
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
            if r == 0:
                ax.set_title(labels[c], fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # leave the title its own line
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- document -------------------------------------------------------------------------------


def _blocks(results: dict, images: dict[str, str]) -> list[Block]:
    out: list[Block] = [("h", 1, "World model evaluation")]
    dev = results["device"]
    out.append(("p", f"Data: `{results['data']}` (split {results['config']['split']}), "
                     f"{len(results['clips'])} clips; device: {dev['device']} ({dev['cpu']}, "
                     f"{dev['threads']} threads), torch {dev['torch']}."))  # fmt: skip
    worlds = [
        [name, w["step"], w["width"], w["height"], *(w["window"][k] for k in WINDOW),
         w["context_latents"], w.get("error_buffer", "")]
        for name, w in results["worlds"].items()
    ]  # fmt: skip
    header = ["world", "step", "width", "height", *WINDOW, "context latents", "error buffer"]
    out.append(("table", header, worlds))
    clips = [[c["name"], c["split"], c["agent"], c["frames"]] for c in results["clips"]]
    out.append(("table", ["clip", "split", "agent", "frames"], clips))
    for note in results.get("notes", []):
        out.append(("p", f"Note: {note}."))
    if "fidelity" in results:
        fid = results["fidelity"]
        horizons = [h for h in map(str, results["config"]["horizons"])
                    if any(h in e["at"] for e in fid["methods"].values())]  # fmt: skip
        extra = [k for k in ("lpips", "fd", "fvd") if any(k in e for e in fid["methods"].values())]
        header = ["method", "PSNR", "SSIM", "sharpness", *extra,
                  *[f"PSNR@{h}" for h in horizons], *[f"SSIM@{h}" for h in horizons]]  # fmt: skip
        rows = []
        for m, e in fid["methods"].items():
            at = e["at"]
            rows.append([m, _fmt(e["psnr"], 2), _fmt(e["ssim"]), _fmt(e["sharpness"], 2),
                         *[_fmt(e.get(k), 2) for k in extra],
                         *[_fmt(at.get(h, {}).get("psnr"), 2) for h in horizons],
                         *[_fmt(at.get(h, {}).get("ssim")) for h in horizons]])  # fmt: skip
        out += [
            ("h", 2, "Fidelity over the horizon"),
            (
                "p",
                "Context latents, then a rollout with the recorded actions and poses; every "
                "frame after the context against the real one. Sharpness: gradient energy "
                "generated / real (1 is faithful; blur scores low while PSNR may like it). "
                "fd: Fréchet distance on our IDM's Doom features (lower is better). @N: N "
                "frames after the context.",
            ),  # fmt: skip
            ("table", header, rows),
        ]
        sharp = [[m, *[_fmt(e["at"].get(h, {}).get("sharpness"), 2) for h in horizons]]
                 for m, e in fid["methods"].items()]  # fmt: skip
        out += [
            ("p", "Sharpness N frames after the context (how soon a rollout loses its detail):"),
            ("table", ["method", *[f"sharpness@{h}" for h in horizons]], sharp),
        ]
    for key in ("fidelity", "fidelity_strip"):
        if key in images:
            out.append(("img", images[key], key))
    if "revisit" in results:
        rev = results["revisit"]
        rows = [[m, _fmt(e.get("psnr"), 2), _fmt(e.get("ssim")), _fmt(e.get("sharpness"), 2)]
                for m, e in rev["methods"].items()]  # fmt: skip
        out += [
            ("h", 2, "Revisit consistency"),
            (
                "p",
                f"Loop trajectories; {rev['frames']} frames see again a view that lies beyond "
                "the model's past window and that the camera had left, so only memory can "
                "recall it. Memory on vs off on the same rollouts' seeds.",
            ),  # fmt: skip
            ("table", ["method", "PSNR", "SSIM", "sharpness"], rows),
        ]
        for key in ("revisit", "revisit_strip"):
            if key in images:
                out.append(("img", images[key], key))
    if "loop" in results:
        rows = [[m, _fmt(e["ssim"]), _fmt(e["psnr"], 2), _fmt(e["unrelated_ssim"]),
                 _fmt(e["contrast"]), _fmt(e["static"], 2), _fmt(e["gated"]), e["clips"]]
                for m, e in results["loop"]["methods"].items()]  # fmt: skip
        out += [
            ("h", 2, "Loop closure"),
            (
                "p",
                "No ground truth: the generated frame where the camera returns to its start "
                "view against the start frame (SSIM, PSNR). A blurry video makes any two "
                "frames alike, so the score is the contrast: that SSIM minus the mean SSIM "
                "of the frames that do not see the start view (`unrelated`). A near-static "
                "video would win anyway: its score is set to 0 (gated); `static` is the "
                "share of such clips.",
            ),  # fmt: skip
            (
                "table",
                [
                    "method",
                    "SSIM",
                    "PSNR",
                    "unrelated SSIM",
                    "contrast",
                    "static",
                    "gated contrast",
                    "clips",
                ],
                rows,
            ),  # fmt: skip
        ]
    if "actions" in results:
        keys = ("keyboard", "W", "S", "A", "D", "turn")
        rows = [[m, *[_fmt(e[k]) for k in keys], _fmt(e["yaw_mae"]), e["frames"]]
                for m, e in results["actions"].items()]  # fmt: skip
        out += [
            ("h", 2, "Action accuracy"),
            (
                "p",
                "Our inverse-dynamics model reads the action at each frame t from a short "
                "window of frames around it; agreement with the commanded actions. `real "
                "frames` is the IDM's own accuracy (the ceiling), `autoencoder` its accuracy "
                "on the VAE's reconstructions; keyboard = all four keys right; turn = left / "
                "none / right; yaw MAE in mouse units.",
            ),  # fmt: skip
            ("table", ["method", *keys, "yaw MAE", "frames"], rows),
        ]
    if "drift" in results:
        out += [("h", 2, "Drift"), ("p", "Rollouts in time buckets (seconds after the context).")]
        for m, rows in results["drift"]["methods"].items():
            cols = [k for k in ("psnr", "ssim", "sharpness", "fd") if any(k in r for r in rows)]
            body = [[f"{r['start_s']:g}-{r['end_s']:g} s", r["frames"],
                     *[_fmt(r.get(k), 3) for k in cols]] for r in rows]  # fmt: skip
            out += [("p", f"**{m}**"), ("table", ["bucket", "frames", *cols], body)]
        if "drift" in images:
            out.append(("img", images["drift"], "drift"))
    if "speed" in results:
        rows = [[m, e["frames"], _fmt(e["fps"], 1), _fmt(e["dit_fps"], 1), _fmt(e["decode_fps"], 1),
                 e["denoising_steps"]] for m, e in results["speed"].items()]  # fmt: skip
        out += [
            ("h", 2, "Speed"),
            (
                "p",
                f"Frames generated per second over the rollouts above ({dev['device']}, "
                f"{dev['threads']} threads): DiT and decoder together, and each alone.",
            ),  # fmt: skip
            ("table", ["world", "frames", "FPS", "DiT FPS", "decoder FPS", "steps"], rows),
        ]
    return out


def render_markdown(blocks: list[Block]) -> str:
    lines = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            lines += ["#" * block[1] + " " + block[2], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "table":
            header, rows = block[1], block[2]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "img":
            lines += [f"![{block[2]}]({block[1]})", ""]
    return "\n".join(lines)


def render_html(blocks: list[Block]) -> str:
    def inline(text: str) -> str:
        parts = html.escape(text).split("`")
        text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
        parts = text.split("**")
        return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))

    body = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            body.append(f"<h{block[1]}>{inline(block[2])}</h{block[1]}>")
        elif kind == "p":
            body.append(f"<p>{inline(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{inline(str(h))}</th>" for h in block[1])
            rows = "".join(
                "<tr>" + "".join(f"<td>{inline(str(c))}</td>" for c in row) + "</tr>"
                for row in block[2]
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            body.append(f'<p><img src="{html.escape(block[1])}" alt="{html.escape(block[2])}"></p>')
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%}")  # fmt: skip
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>matrixgame eval</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")  # fmt: skip


def _real_first(rows: dict) -> dict:
    return dict(sorted(rows.items(), key=lambda kv: kv[0] != "real frames"))


def write_report(results: dict, out: str | Path) -> dict[str, Path]:
    """Write the report files into folder ``out``; returns their paths by kind."""
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    (out / "strips").mkdir(parents=True, exist_ok=True)
    images: dict[str, str] = {}
    if "fidelity" in results:
        _plot_fidelity(results["fidelity"], out / "plots" / "fidelity.png")
        images["fidelity"] = "plots/fidelity.png"
    if "revisit" in results and results["revisit"]["methods"]:
        title = "Revisited views beyond the past window"
        _plot_bars(
            results["revisit"]["methods"], ("psnr", "ssim"), title, out / "plots" / "revisit.png"
        )
        images["revisit"] = "plots/revisit.png"
    if "drift" in results:
        _plot_drift(results["drift"], out / "plots" / "drift.png")
        images["drift"] = "plots/drift.png"
    strips = results.get("_strips", {})
    fid = strips.get("fidelity")
    if fid:
        start = fid["_start"]
        length = min(len(v) for k, v in fid.items() if not k.startswith("_"))
        cols = [start - 1] + [start - 1 + h for h in results["config"]["horizons"]
                              if start - 1 + h < length]  # fmt: skip
        labels = ["last context"] + [f"+{t - start + 1}" for t in cols[1:]]
        rows = _real_first({k: v for k, v in fid.items() if not k.startswith("_")})
        _plot_strip(rows, cols, labels, "Held-out trajectory: frames after the context",
                    out / "strips" / "fidelity.png")  # fmt: skip
        images["fidelity_strip"] = "strips/fidelity.png"
    rev = strips.get("revisit")
    if rev and len(rev["_revisits"]):
        idx = rev["_revisits"]
        cols = [0] + [
            int(i) for i in idx[np.linspace(0, len(idx) - 1, min(5, len(idx))).astype(int)]
        ]
        cols.append(int(rev["_return"]))
        labels = ["start"] + [f"revisit t={t}" for t in cols[1:-1]] + [f"return t={cols[-1]}"]
        rows = _real_first({k: v for k, v in rev.items() if not k.startswith("_")})
        _plot_strip(rows, cols, labels, "Loop trajectory: revisited views",
                    out / "strips" / "revisit.png")  # fmt: skip
        images["revisit_strip"] = "strips/revisit.png"
    blocks = _blocks(results, images)
    paths = {
        "json": out / "report.json",
        "markdown": out / "report.md",
        "html": out / "report.html",
    }
    atomic_write_text(paths["json"], json.dumps(clean(results), indent=1))
    atomic_write_text(paths["markdown"], render_markdown(blocks))
    atomic_write_text(paths["html"], render_html(blocks))
    paths.update({k: out / v for k, v in images.items()})
    return paths
