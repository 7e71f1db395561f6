"""Light decoders, as MG-LightVAE: a trained decoder's channels pruned by 50% or 75%, then
distilled against it; the encoder stays the teacher's.

Pruning keeps, in every layer, the teacher's most important output channels, ranked by the
L1 norm of each output filter (weights and bias), ||W_c||_1 + |b_c|, as Li et al. 2017
("Pruning Filters for Efficient ConvNets"). Distillation then fits the student's frames to
the teacher's on the same latents: L1 + L2, plus optionally the stage features on the kept
channels, L = |D_s(z) - D_t(z)| + (D_s(z) - D_t(z))^2 + w_f sum_k mse(f_s^k, f_t^k[S_k]).
Optionally a share w_r of the frame term fits the real frames x = the clip the latents
encode instead of the teacher's: (1 - w_r) rec(D_s(z) - D_t(z)) + w_r rec(D_s(z) - x), for a
student too small to paint the detail an adversarially tuned teacher invents (its mean of
the real frames scores higher PSNR than its copy of the teacher's guess).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from matrixgame.models.vae import (
    AttentionBlock,
    Decoder3d,
    ResidualBlock,
    RMS_norm,
    Up_ResidualBlock,
    WanVAE,
)
from matrixgame.train.jobs import Stop, train_config
from matrixgame.train.trainer import Trainer, init_distributed
from matrixgame.train.vae_task import frames_to_model, psnr, reconstruction_loss

Tensor = torch.Tensor
LIGHT_RATES = (0.5, 0.75)  # MG-LightVAE.pth and MG-LightVAE_v2.pth


# -- pruning -----------------------------------------------------------------------------------


Rate = float | tuple[float, ...]  # one for the whole decoder, or one per decoder stage


def prune_decoder(vae: WanVAE, rate: Rate, latents: Tensor | None = None) -> WanVAE:
    """A new VAE with ``vae``'s encoder (unpruned, copied) and its decoder's widths scaled by
    1 - ``rate``, each layer keeping the teacher's most important channels (module doc).
    ``rate`` may give each decoder stage its own (``VAEConfig.decoder_dims``), as long as a
    stream that crosses stages (a residual stream through identity shortcuts, the two sides
    of a DupUp3D shortcut) keeps one width and every block keeps its kind of shortcut.

    An RMS norm over fewer channels divides by another rms: its gamma is rescaled by
    rms(kept) / rms(all) of the teacher's input, measured on ``latents`` ``[B, z, L, h, w]``
    when given, else sqrt(all / kept) (pruned channels taken as silent); the attention's q
    is scaled by sqrt(kept / all) for its 1/sqrt(d). Both are exact for silent channels."""
    if vae.config.pruning_rate:
        raise ValueError("prune a full decoder (this one is pruned already)")
    config = _light_config(vae.config, rate)
    energy = None if latents is None else _norm_inputs(vae, latents)
    plan = _plan(vae.decoder, _widths(config), energy)
    state = {k: v.detach().clone() for k, v in vae.state_dict().items()
             if not k.startswith("decoder.")}  # fmt: skip
    decoder = vae.decoder.state_dict()
    for name, cut in plan.cuts.items():
        rows, cols, scale = cut(plan.kept)
        for key in ("weight", "bias", "gamma"):
            value = decoder.get(f"{name}.{key}")
            if value is None:
                continue
            if rows is not None:
                value = value[rows.to(value.device)]
            if key == "weight" and cols is not None:
                value = value[:, cols.to(value.device)]
            state[f"decoder.{name}.{key}"] = _scaled(value.detach(), scale).clone()
    from matrixgame.models.loading import load_checked

    with torch.device("meta"):
        student = WanVAE(config)
    if vae.encoder is None:  # a decode-only teacher gives a decode-only student
        student.encoder = student.conv1 = None
    load_checked(student, state, "the pruned decoder")
    student.latent_mean, student.latent_std = vae.latent_mean.clone(), vae.latent_std.clone()
    return student.train(vae.training)


def feature_channels(vae: WanVAE, rate: Rate) -> dict[str, Tensor]:
    """The teacher's channels that :func:`prune_decoder` keeps at the output of each decoder
    stage (``middle.2``, ``upsamples.0``, ...): student feature ``[:, j]`` is teacher feature
    ``[:, kept[j]]``."""
    plan = _plan(vae.decoder, _widths(_light_config(vae.config, rate)))
    return {name: plan.kept[stream] for name, stream in plan.points.items()}


def parse_rate(text: str) -> Rate:
    """A pruning rate as a command line gives it: one number, or comma-separated numbers
    (one per decoder stage, latents to pixels)."""
    try:
        rates = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"not a number or comma-separated numbers: {text!r}") from None
    return rates[0] if len(rates) == 1 else rates


def _light_config(config, rate: Rate):
    rates = rate if isinstance(rate, tuple | list) else (rate,)
    if not rates or not all(isinstance(r, int | float) and 0.0 < r < 1.0 for r in rates):
        raise ValueError(f"the pruning rate must be in (0, 1), got {rate}")
    return replace(config, pruning_rate=rate, prune_encoder=False)


def _widths(config) -> _Plan:
    """The streams of the light decoder ``config`` builds (sizes and structure, no weights):
    the widths each of the teacher's streams is cut to."""
    with torch.device("meta"):
        decoder = WanVAE(config).decoder
    return _plan(decoder)


@torch.no_grad()
def _norm_inputs(vae: WanVAE, latents: Tensor) -> dict[str, Tensor]:
    """Mean square of each channel at the input of every RMS norm of the decoder, decoding
    ``latents``: {module name: ``[C]``}."""
    sums: dict[str, list[Tensor]] = {}

    def record(name):
        def hook(_module, args):
            x = args[0].float()
            sums.setdefault(name, []).append(x.transpose(0, 1).flatten(1).pow(2).mean(1))

        return hook

    norms = [(n, m) for n, m in vae.decoder.named_modules() if isinstance(m, RMS_norm)]
    hooks = [m.register_forward_pre_hook(record(n)) for n, m in norms]
    try:
        vae.decode(latents)
    finally:
        for hook in hooks:
            hook.remove()
    return {n: torch.stack(v).mean(0).cpu() for n, v in sums.items()}


def _at(kept: list[Tensor], stream: int | None) -> Tensor | None:
    return None if stream is None else kept[stream]


def _scaled(value: Tensor, scale: Tensor | float) -> Tensor:
    if isinstance(scale, Tensor):
        return value * scale.to(value).view(-1, *([1] * (value.ndim - 1)))
    return value * scale if scale != 1.0 else value


def _importance(layer: nn.Module) -> Tensor:
    """||W_c||_1 + |b_c| per output channel c: a filter's L1 norm bounds what the channel
    can carry to the next layer. (Reader-side scores, RMS_norm gamma times the next filters,
    would miss that a silent channel is pruned losslessly whatever reads it.)"""
    if layer.weight.is_meta:  # a structure read only for its widths (_widths)
        return torch.ones(layer.weight.shape[0])
    score = layer.weight.detach().abs().flatten(1).sum(1).float().cpu()
    if layer.bias is not None:
        score = score + layer.bias.detach().abs().float().cpu()
    return score


Cut = Callable[[list[Tensor]], tuple[Tensor | None, Tensor | None, Tensor | float]]


class _Plan:
    """The channel streams of a decoder and, per layer, how it is cut from the teacher's.

    A stream is one set of channels that several layers write into and read from: a residual
    stream (through identity shortcuts), a block's hidden channels, an attention's q/k or v.
    Each stream keeps its channels of highest summed importance, with one exception: a
    DupUp3D shortcut from ``k n`` to ``n`` channels repeat-interleaves, its output channel o
    reading input channels ``k o .. k o + k - 1``, so the streams on its two sides keep the
    same channels block for block. The structure stays exact at the price of choosing whole
    blocks (scored over both sides) rather than each side's best channels. Streams so tied
    form a group whose smallest member chooses; every member keeps those blocks."""

    def __init__(self, energy: dict[str, Tensor] | None) -> None:
        self.energy = energy or {}
        self.size: list[int] = []
        self.votes: list[Tensor] = []
        self.parent: list[int] = []
        self.cuts: dict[str, Cut] = {}  # decoder module name -> cut
        self.points: dict[str, int] = {}  # stage output -> its stream
        self.kept: list[Tensor] = []

    def new(self, size: int) -> int:
        self.size.append(size)
        self.votes.append(torch.zeros(size))
        self.parent.append(len(self.parent))
        return len(self.size) - 1

    def vote(self, stream: int, importance: Tensor) -> None:
        # each writing layer votes with weight 1: layers differ in scale, not in say
        self.votes[stream] += importance / importance.sum().clamp(min=1e-12)

    def tie(self, a: int, b: int) -> None:
        big, small = sorted((self.size[a], self.size[b]), reverse=True)
        if big % small:
            raise ValueError(f"a shortcut from {self.size[a]} to {self.size[b]} channels")
        self.parent[self._root(a)] = self._root(b)

    def _root(self, s: int) -> int:
        while self.parent[s] != s:
            s = self.parent[s]
        return s

    def select(self, light: _Plan) -> None:
        """Choose each stream's channels, as many as the same stream of ``light`` (the pruned
        decoder's plan) has."""
        if light.cuts.keys() != self.cuts.keys() or len(light.size) != len(self.size):
            raise ValueError("these pruning rates change the decoder's structure: a stream "
                             "that crosses stages (a residual stream through identity "
                             "shortcuts) must keep one width, and a block keeps its kind "
                             "of shortcut (pruned to equal widths, a 1x1 shortcut would "
                             "vanish)")  # fmt: skip
        groups: dict[int, list[int]] = {}
        for s in range(len(self.size)):
            groups.setdefault(self._root(s), []).append(s)
        self.kept = [torch.empty(0, dtype=torch.long)] * len(self.size)
        for members in groups.values():
            base = min(members, key=lambda s: self.size[s])
            score = sum(self.votes[s].view(self.size[base], -1).sum(1) for s in members)
            chosen = score.topk(light.size[base]).indices.sort().values
            for s in members:
                k = self.size[s] // self.size[base]
                if light.size[s] != k * light.size[base]:
                    raise ValueError("these pruning rates cut the two sides of a DupUp3D "
                                     "shortcut to other shares: give both stages one "
                                     "rate")  # fmt: skip
                self.kept[s] = (chosen[:, None] * k + torch.arange(k)).flatten()

    # -- layers -----------------------------------------------------------------------------

    def conv(self, name: str, layer: nn.Module, src: int | None, dst: int | None) -> None:
        """A convolution from stream ``src`` to ``dst`` (None: the unpruned latents/pixels)."""
        if dst is not None:
            self.vote(dst, _importance(layer))
        self.cuts[name] = lambda kept: (_at(kept, dst), _at(kept, src), 1.0)

    def norm(self, name: str, src: int) -> None:
        """An RMS norm reading ``src``: gamma times rms(kept) / rms(all) (prune_decoder)."""
        size, energy = self.size[src], self.energy.get(name)

        def cut(kept):
            if energy is None:
                return kept[src], None, math.sqrt(size / len(kept[src]))
            return kept[src], None, float((energy[kept[src]].mean() / energy.mean()).sqrt())

        self.cuts[name] = cut

    def residual(self, name: str, block: ResidualBlock, x: int) -> int:
        conv1, conv2 = block.residual[2], block.residual[6]
        hidden = self.new(conv1.out_channels)
        y = self.new(conv2.out_channels) if isinstance(block.shortcut, nn.Conv3d) else x
        self.norm(f"{name}.residual.0", x)
        self.conv(f"{name}.residual.2", conv1, x, hidden)
        self.norm(f"{name}.residual.3", hidden)
        self.conv(f"{name}.residual.6", conv2, hidden, y)
        if isinstance(block.shortcut, nn.Conv3d):
            self.conv(f"{name}.shortcut", block.shortcut, x, y)
        return y

    def attention(self, name: str, block: AttentionBlock, x: int) -> int:
        c = block.proj.in_channels
        qk, v = self.new(c), self.new(c)
        q_, k_, v_ = _importance(block.to_qkv).view(3, c)
        self.vote(qk, q_ * k_)  # a channel adds q_c k_c to every attention logit
        self.vote(v, v_)

        def qkv(kept):
            n = len(kept[qk])  # q k / sqrt(n) over the kept channels ~ q k / sqrt(c) over all
            scale = torch.cat([torch.full((n,), math.sqrt(n / c)), torch.ones(2 * n)])
            return torch.cat([kept[qk], c + kept[qk], 2 * c + kept[v]]), kept[x], scale

        self.norm(f"{name}.norm", x)
        self.cuts[f"{name}.to_qkv"] = qkv
        self.conv(f"{name}.proj", block.proj, v, x)
        return x

    def time_conv(self, name: str, layer: nn.Module, x: int) -> int:
        """The temporal upsampler's conv: its channel j makes two frames, from filters j and
        c + j, so both are kept or cut together."""
        c = layer.out_channels // 2
        t = self.new(c)
        self.vote(t, _importance(layer).view(2, c).sum(0))
        self.cuts[name] = lambda kept: (torch.cat([kept[t], c + kept[t]]), kept[x], 1.0)
        return t

    def up(self, name: str, block: Up_ResidualBlock, x: int) -> int:
        y = x
        for i, layer in enumerate(block.upsamples):
            if isinstance(layer, ResidualBlock):
                y = self.residual(f"{name}.upsamples.{i}", layer, y)
                continue
            if hasattr(layer, "time_conv"):
                y = self.time_conv(f"{name}.upsamples.{i}.time_conv", layer.time_conv, y)
            if not layer.mode.endswith("1d"):
                out = self.new(layer.resample[1].out_channels)
                self.conv(f"{name}.upsamples.{i}.resample.1", layer.resample[1], y, out)
                y = out
        if block.avg_shortcut is not None:
            self.tie(x, y)
        return y


def _plan(decoder: Decoder3d, light: _Plan | None = None,
          energy: dict[str, Tensor] | None = None) -> _Plan:  # fmt: skip
    """The streams and cuts of ``decoder``; with ``light`` (the plan of the pruned decoder
    to cut it to), each stream's kept channels too."""
    plan = _Plan(energy)
    x = plan.new(decoder.conv1.out_channels)
    plan.conv("conv1", decoder.conv1, None, x)
    for i, layer in enumerate(decoder.middle):
        name = f"middle.{i}"
        if isinstance(layer, AttentionBlock):
            x = plan.attention(name, layer, x)
        else:
            x = plan.residual(name, layer, x)
    plan.points[f"middle.{len(decoder.middle) - 1}"] = x
    for i, block in enumerate(decoder.upsamples):
        x = plan.up(f"upsamples.{i}", block, x)
        plan.points[f"upsamples.{i}"] = x
    plan.norm("head.0", x)
    plan.conv("head.2", decoder.head[2], x, None)
    if light is not None:
        plan.select(light)
    return plan


# -- distillation ------------------------------------------------------------------------------


class LightDistill(nn.Module):
    """The student (the teacher's encoder, frozen, and a pruned decoder) beside the teacher's
    decoder, frozen. ``forward(frames [B, 3, T, H, W])`` encodes once and decodes the same
    latents with both: {"student", "teacher": frames, "features": [(student, teacher)]}."""

    def __init__(self, vae: WanVAE, teacher: WanVAE, kept: dict[str, Tensor]) -> None:
        super().__init__()
        self.vae = vae  # the name decoder runs use: the run's weights are "vae.*"
        # held outside the module tree, so out of checkpoints and EMA (Wan2.2's decoder would
        # add 2 x 2.2 GB to each); it is frozen, and the job rebuilds it from its source
        self._teacher = (_decoder_only(teacher).requires_grad_(False),)
        self.points = list(kept)
        for i, idx in enumerate(kept.values()):
            self.register_buffer(f"kept{i}", idx, persistent=False)
        for module in (vae.encoder, vae.conv1):
            if module is not None:
                module.requires_grad_(False)

    @property
    def teacher(self) -> WanVAE:
        return self._teacher[0]

    def forward(self, frames: Tensor, features: bool = False) -> dict:
        names = self.points if features else []
        if self.teacher.conv2.weight.device != frames.device:  # follows the student's moves
            self.teacher.to(frames.device)
        with torch.no_grad():
            latents = self.vae.encode(frames)
            teacher, t_features = _decode(self.teacher, latents, names)
        student, s_features = _decode(self.vae, latents, names)
        pairs = [(s_features[n], t_features[n].index_select(1, getattr(self, f"kept{i}")))
                 for i, n in enumerate(names)]  # fmt: skip
        return {"student": student, "teacher": teacher, "features": pairs}


def _decoder_only(vae: WanVAE) -> WanVAE:
    """``vae`` without its encoder: what the distillation needs of the teacher."""
    with torch.device("meta"):
        copy = WanVAE(vae.config)
    copy.encoder = copy.conv1 = None
    state = {k: v for k, v in vae.state_dict().items() if k.startswith(("decoder.", "conv2."))}
    copy.load_state_dict(state, assign=True)  # the same tensors: nothing is copied
    copy.latent_mean, copy.latent_std = vae.latent_mean.clone(), vae.latent_std.clone()
    return copy.eval()


def _decode(vae: WanVAE, latents: Tensor, names: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """Frames ``[B, 3, T, H, W]`` of ``latents`` and the outputs of the named decoder modules
    (``[B, C, T', h, w]``, the per-latent chunks joined in time)."""
    captured: dict[str, list[Tensor]] = {n: [] for n in names}
    modules = dict(vae.decoder.named_modules())
    hooks = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: captured[n].append(out))
             for n in names]  # fmt: skip
    try:
        frames = vae.decode(latents)
    finally:
        for hook in hooks:
            hook.remove()
    return frames, {n: torch.cat(parts, 2) for n, parts in captured.items()}


@dataclass(frozen=True)
class LightDecoderTask:
    """Student frames against the teacher's from the same latents (L1 + L2), plus the stage
    features on the kept channels (module doc)."""

    height: int = 96
    width: int = 128
    l1: float = 1.0
    l2: float = 1.0
    features: float = 0.0
    real: float = 0.0  # share of the frame term on the real frames (module doc)

    def loss(self, model, batch: dict, step: int) -> tuple[Tensor, dict]:
        x = frames_to_model(batch["frames"], self.height, self.width)
        out = model(x, features=self.features > 0)
        err = out["student"].float() - out["teacher"].float()
        distill = reconstruction_loss(err, self.l1, self.l2)
        if self.real > 0:
            real = reconstruction_loss(out["student"].float() - x.float(), self.l1, self.l2)
            distill = (1 - self.real) * distill + self.real * real
        feature = torch.zeros((), device=x.device)
        for s, t in out["features"]:  # each stage relative to its power, then averaged
            power = t.float().pow(2).mean().clamp(min=1e-8)
            feature = feature + F.mse_loss(s.float(), t.float()) / power
        feature = feature / max(1, len(out["features"]))
        loss = distill + self.features * feature
        return loss, {
            "loss": float(loss.detach()),
            "distill": float(distill.detach()),
            "feature": float(feature.detach()),
            "psnr_teacher": psnr(out["student"].detach(), out["teacher"].clamp(-1, 1)),
            "psnr": psnr(out["student"].detach(), x),
        }


# -- the job -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LightVAEJob:
    data: str
    vae: str  # the teacher: a `train vae` / `train decoder` run, or a Wan2.2 VAE .pth
    out: str
    rate: Rate = 0.5  # or one per decoder stage, from the latents to the pixels
    steps: int = 2000
    batch_size: int = 4
    frames: int = 9
    height: int | None = None  # None: the teacher run's size (a .pth teacher needs both)
    width: int | None = None
    lr: float = 1e-4
    final_lr: float = 1.0  # cosine decay to this fraction of lr by the last step (1: constant)
    decay_steps: int = 0  # ... over the last this many steps only (0: all after warmup)
    features: float = 0.0  # weight of the feature loss
    real: float = 0.0  # share of the frame loss on the real frames, not the teacher's
    checkpoint_every: int = 200
    cpu_bf16: bool = False  # bf16 autocast on the CPU (fast where it has AVX-512 BF16)
    seed: int = 0
    init: str | None = None  # a light VAE's weights to continue (a world's light.safetensors)
    start_step: int = 0  # the step count of the weights in init


def train_light_vae(job: LightVAEJob, deadline: float | None = None, stop: Stop = None) -> Trainer:
    """Prune the teacher's decoder by ``job.rate`` and distil it on the dataset's frames; the
    run reads back as a VAE (``trained_vae``) with the teacher's encoder and latents."""
    from matrixgame.data.dataset import ClipDataset
    from matrixgame.train.jobs import _init_from
    from matrixgame.train.run_log import RunLog
    from matrixgame.train.vae_task import reconstruction_strip

    if not isinstance(job.rate, tuple) and job.rate not in LIGHT_RATES:
        raise ValueError(f"--rate must be one of {', '.join(map(str, LIGHT_RATES))} "
                         f"(MG-LightVAE's) or one rate per decoder stage, "
                         f"got {job.rate}")  # fmt: skip
    if not 0.0 <= job.real <= 1.0:
        raise ValueError(f"--real is a share of the frame loss, from 0 (the teacher's frames "
                         f"alone) to 1 (the real ones alone), got {job.real}")  # fmt: skip
    init_distributed()
    torch.manual_seed(job.seed)
    teacher, meta = _teacher(job)
    data = ClipDataset(job.data, frames=job.frames, split="train", stride=2,
                       frames_per_latent=teacher.config.temporal_factor)  # fmt: skip
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
        else torch.device("cpu")  # fmt: skip
    teacher = teacher.to(device)
    with torch.no_grad():  # the norms' gains are measured on a batch of real latents
        clips = torch.stack([data[i]["frames"] for i in range(min(len(data), job.batch_size))])
        latents = teacher.encode(frames_to_model(clips.to(device), meta["height"], meta["width"]))
    student = prune_decoder(teacher, job.rate, latents).train()
    _init_from(student, job.init)
    model = LightDistill(student, teacher, feature_channels(teacher, job.rate))
    del teacher, latents  # the student holds a copy of the encoder, the model the decoder
    task = LightDecoderTask(meta["height"], meta["width"], features=job.features,
                            real=job.real)  # fmt: skip
    meta = {"model": "vae", "stage": "light", "teacher": str(job.vae), "weights_prefix": "vae.",
            **meta, "pruning_rate": job.rate, "task": asdict(task)}  # fmt: skip
    trainer = Trainer(model, task, data, train_config(job), meta)
    trainer.step = job.start_step  # a checkpoint in the run folder overrides it
    run = RunLog(job.out)
    probe = data[0]["frames"][None]

    def log(step: int, logs: dict) -> None:
        run(step, logs)
        if step % job.checkpoint_every == 0 or step == job.steps:
            strip = reconstruction_strip(trainer.model.vae, probe, task.height, task.width)
            run.image("reconstruction", step, strip)

    trainer.fit(log, deadline=deadline, stop=stop)
    return trainer


def _teacher(job: LightVAEJob) -> tuple[WanVAE, dict]:
    """The teacher VAE and what a VAE run's config says of it: preset, frame size, latent
    statistics."""
    from matrixgame.models.loading import load_vae
    from matrixgame.models.vae import VAE_PRESETS
    from matrixgame.train.runs import latest_weights, trained_vae

    if Path(job.vae).suffix == ".pth":
        vae = load_vae(job.vae)
        preset = next((n for n, c in VAE_PRESETS.items() if c == vae.config), None)
        if preset is None or job.height is None or job.width is None:
            raise ValueError(f"{job.vae}: a .pth teacher needs --height and --width and must "
                             f"be a preset's VAE (Wan2.2's)")  # fmt: skip
        size = (job.height, job.width)
    else:
        _, config = latest_weights(job.vae, model="vae")
        if config.get("pruning_rate"):
            raise ValueError(f"{job.vae}: a light decoder run already; prune a full one")
        vae, size = trained_vae(job.vae)
        preset = config["preset"]
        size = (job.height or size[0], job.width or size[1])
    stride = vae.config.spatial_factor
    if size[0] % stride or size[1] % stride:
        raise ValueError(f"--height and --width must be multiples of {stride} (the VAE's stride)")
    return vae, {"preset": preset, "height": size[0], "width": size[1],
                 "latent_mean": vae.latent_mean.flatten().tolist(),
                 "latent_std": vae.latent_std.flatten().tolist()}  # fmt: skip
