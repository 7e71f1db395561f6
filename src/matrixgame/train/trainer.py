"""One training loop for every model here: deterministic data order, EMA, gradient
clipping, a guard against non-finite losses, bf16 autocast on CUDA (and optionally on CPUs
with fast bf16), DDP under ``torchrun``,
and atomic checkpoints from which ``resume`` continues bit for bit. Ctrl-C or SIGTERM during
a fit ends it as its deadline does: the step in flight finishes and is checkpointed (a
second signal acts at once).

A task supplies the loss: ``task.loss(model, batch, step) -> (loss, logs)``; the trainer
knows nothing about diffusion or VAEs. A task that carries state between steps (the DiT
objective's error buffer) gives ``state_dict`` / ``load_state_dict``, saved with each
checkpoint (process 0's under DDP, where each process banks its own residuals).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from matrixgame.io import atomic_write_text

Tensor = torch.Tensor


@dataclass(frozen=True)
class TrainConfig:
    out: str
    steps: int = 1000
    batch_size: int = 4
    lr: float = 2e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    warmup: int = 100
    final_lr: float = 1.0  # cosine decay to this fraction of lr at the last step (1: constant)
    # the cosine over the last decay_steps steps only, constant before (warmup-stable-decay):
    # a run continued to a larger step target trains at the full rate until its last
    # decay_steps and cools down again there; 0: the cosine spans the run after its warmup
    decay_steps: int = 0
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    seed: int = 0
    workers: int = 0  # DataLoader workers
    bf16: bool = True  # autocast on CUDA (CPU runs stay fp32: they are the reference path)
    cpu_bf16: bool = False  # bf16 autocast on the CPU too (where it has AVX-512 BF16 / AMX)
    fsdp: bool = False  # under torchrun: shard parameters, gradients and optimizer (FSDP2)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("steps, batch_size and checkpoint_every must be positive")
        if not 0.0 <= self.final_lr <= 1.0:
            raise ValueError(f"final_lr is a fraction of lr in [0, 1], got {self.final_lr}")
        if self.decay_steps < 0:
            raise ValueError(f"decay_steps must be >= 0, got {self.decay_steps}")

    def lr_scale(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based) as a fraction of ``lr``: a linear
        warmup, then a cosine from 1 to ``final_lr`` at the last step (over the last
        ``decay_steps`` only, where set). A function of the step alone, so a resumed run
        follows the same schedule; a larger ``steps`` (a continued run) stretches it, or with
        ``decay_steps`` moves its cooldown to the new end."""
        warm = min(1.0, (step + 1) / max(1, self.warmup))
        if self.final_lr == 1.0:
            return warm
        start = (
            self.warmup if not self.decay_steps else max(self.warmup, self.steps - self.decay_steps)
        )
        done = min(1.0, max(0, step - start) / max(1, self.steps - start))
        return warm * (self.final_lr + (1 - self.final_lr) * 0.5 * (1 + math.cos(math.pi * done)))


def init_distributed() -> None:
    """Join the process group when launched by ``torchrun`` (NCCL on GPUs, else gloo)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def world() -> tuple[int, int]:
    """(rank, world size): from ``torchrun`` when present, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    def __init__(
        self, model: nn.Module, task, dataset, config: TrainConfig, meta: dict | None = None
    ):
        self.cfg, self.task, self.dataset = config, task, dataset
        self.meta = meta or {}
        self.rank, self.world = world()
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
        self.model = model.to(self.device)
        self.sharded = config.fsdp and self.world > 1
        if self.sharded:  # FSDP2: each block a unit, then the rest of the model
            from torch.distributed.fsdp import fully_shard

            for block in getattr(self.model, "blocks", []):
                fully_shard(block)
            fully_shard(self.model)
        self.ema = {k: v.detach().clone().float() for k, v in self.model.state_dict().items()}
        # a model of several parts (distillation's student and critic) may give each its own
        # learning rate and betas, and is clipped per part
        groups = getattr(self.model, "param_groups", None)
        params = groups() if groups else [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.99)
        )
        # each group's rate before the schedule: this call's, not kept in checkpoints (a
        # continued run may change --lr; the optimizer's moments are the checkpoint's)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        # a model that runs several forwards per step (distillation) averages its gradients
        # itself after backward instead of DDP's hooks
        self.manual_sync = bool(getattr(self.model, "manual_gradient_sync", False))
        self.wrapped = model
        if self.world > 1 and not self.sharded and not self.manual_sync:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.step = 0
        self.skipped = 0  # steps dropped for a non-finite loss
        self.stopped: str | None = None  # why the last fit ended before cfg.steps
        self.last_logs: dict = {}
        self.out = Path(config.out)

    # -- data -----------------------------------------------------------------------------------

    def _order(self, epoch: int) -> list[int]:
        """This rank's sample indices for an epoch: one seeded permutation, split by rank."""
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.dataset), generator=g).tolist()
        return perm[self.rank :: self.world]

    def batches(self):
        """Batches from the current step on: resuming yields exactly what an unbroken run
        would have seen next."""
        per_epoch = len(self._order(0)) // self.cfg.batch_size
        if per_epoch == 0:
            raise ValueError(
                f"the dataset has {len(self.dataset)} samples, fewer than one batch of "
                f"{self.cfg.batch_size} per process"
            )
        step = self.step
        while True:
            epoch, offset = divmod(step, per_epoch)
            order = self._order(epoch)
            start = offset * self.cfg.batch_size
            idx = order[start : start + self.cfg.batch_size]
            yield _collate([self.dataset[i] for i in idx])
            step += 1

    # -- loop -----------------------------------------------------------------------------------

    def fit(
        self,
        log: Callable[[int, dict], None] | None = None,
        progress: bool = True,
        deadline: float | None = None,
        stop: Callable[[int], bool] | None = None,
    ) -> dict:
        """Train to ``cfg.steps``. ``deadline`` (a ``time.monotonic()`` value) ends the run
        early with a checkpoint at the current step, and so does SIGINT or SIGTERM;
        ``stop(step)``, asked after every checkpoint (the last one too), ends it there when
        it returns True (early stopping). ``self.stopped`` then says why ("deadline",
        "signal", "stop"); resuming continues bit for bit either way."""
        from tqdm import tqdm

        cfg = self.cfg
        self.stopped = None
        if not self.resume() and self.step >= cfg.steps:
            self.save()  # started at its target (weights given at their step): a run as trained
        self.first_step = self.step  # where this call started (it trained if step moved on)
        bar = tqdm(
            total=cfg.steps, initial=self.step, disable=not progress or self.rank != 0, desc="train"
        )
        data = self.batches()
        start = time.perf_counter()
        with _signals_end_fit() as signalled:
            logs = self._loop(data, bar, start, log, deadline, stop, signalled)
        bar.close()
        self.last_logs = logs
        return logs

    def _loop(self, data, bar, start: float, log, deadline, stop, signalled: list) -> dict:
        cfg, logs = self.cfg, {}
        while self.step < cfg.steps:
            batch = _to(next(data), self.device)
            self._seed_step()
            for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                group["lr"] = base_lr * cfg.lr_scale(self.step)
            cuda = self.device.type == "cuda"
            with torch.autocast(
                self.device.type, torch.bfloat16, enabled=cfg.bf16 if cuda else cfg.cpu_bf16
            ):
                loss, logs = self.task.loss(self.wrapped, batch, self.step)
            if not torch.isfinite(loss):  # skip the update; the data order moves on
                self.skipped += 1
                self.optimizer.zero_grad(set_to_none=True)
            else:
                loss.backward()
                if self.manual_sync and self.world > 1:
                    self._average_gradients()
                norm = max(
                    nn.utils.clip_grad_norm_(group["params"], cfg.grad_clip)
                    for group in self.optimizer.param_groups
                )
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self._update_ema()
                logs["grad_norm"] = float(_full(norm))
            self.step += 1
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                logs.update(
                    step=self.step,
                    skipped=self.skipped,
                    lr=self.optimizer.param_groups[0]["lr"],
                    seconds=time.perf_counter() - start,
                )
                bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}")
                if log and self.rank == 0:
                    log(self.step, logs)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save()
                # asked at the last step too: a held-out curve ends at the weights it ends with
                if stop is not None and stop(self.step) and self.step < cfg.steps:
                    self.stopped = "stop"
                    break
            late, halt = _agreed((deadline is not None and time.monotonic() >= deadline,
                                  bool(signalled)), self.world, self.device)  # fmt: skip
            if (late or halt) and self.step < cfg.steps:
                if self.step % cfg.checkpoint_every:
                    self.save()
                self.stopped = "signal" if halt else "deadline"
                break
        return logs

    def _average_gradients(self) -> None:
        """Mean of every gradient over the processes (the model's parts leave the same
        gradients unset on every process: the task draws its per-step choices from the step)."""
        for p in self.model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    def _seed_step(self) -> None:
        """Per-step randomness (torch's: noise, dropout) from the seed and step alone, so a
        resumed run draws what the unbroken one would have."""
        seed = self.cfg.seed * 1_000_003 + self.step * 7919 + self.rank
        torch.manual_seed(seed)

    @torch.no_grad()
    def _update_ema(self) -> None:
        # warmed up (decay (1 + n) / (10 + n) early on), so a short run's EMA is not still
        # half its random initialisation
        d = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        for k, v in self.model.state_dict().items():
            if v.is_floating_point():
                self.ema[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                self.ema[k].copy_(v)

    # -- checkpoints ----------------------------------------------------------------------------

    def save(self) -> Path | None:
        """``<out>/checkpoints/<step>/``: weights and EMA (safetensors), optimizer state,
        config. Written to a temporary folder and renamed, then ``latest`` points at it.
        Every process calls it (sharded state is gathered); process 0 writes."""
        model_state, optimizer_state = self._full_states()
        ema = {k: _full(v) for k, v in self.ema.items()}
        if self.rank != 0:
            return None
        root = self.out / "checkpoints"
        final = root / f"{self.step:08d}"
        tmp = root / f".{self.step:08d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            self._write_checkpoint(tmp, final, root, model_state, optimizer_state, ema)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # the last whole checkpoint stays latest
            raise
        return final

    def _write_checkpoint(self, tmp: Path, final: Path, root: Path, model_state: dict,
                          optimizer_state: dict, ema: dict) -> None:  # fmt: skip
        tmp.mkdir(parents=True)
        weights = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model_state.items()}
        weights.update({f"ema.{k}": v.contiguous().cpu() for k, v in ema.items()})
        try:
            save_file(weights, tmp / "weights.safetensors")
            if hasattr(self.task, "state_dict"):  # e.g. the DiT objective's error buffer
                task = {k: v.contiguous().cpu() for k, v in self.task.state_dict().items()}
                save_file(task, tmp / "task.safetensors")
            torch.save(
                {"optimizer": optimizer_state, "step": self.step, "skipped": self.skipped},
                tmp / "state.pt",
            )
        except OSError:
            raise
        except Exception as err:  # safetensors and torch report a full disk as their own errors
            raise OSError(f"cannot write the checkpoint {tmp}: {err}") from None
        (tmp / "config.json").write_text(
            json.dumps({"train": asdict(self.cfg), **self.meta}, indent=1)
        )
        for path in tmp.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        atomic_write_text(root / "latest", final.name)
        for old in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))[
            : -self.cfg.keep_checkpoints
        ]:
            shutil.rmtree(old, ignore_errors=True)

    def resume(self) -> bool:
        """Continue from ``<out>/checkpoints/latest`` if there is one (first removing what a
        killed run left half-written: temporary folders and files)."""
        if self.rank == 0:
            for stale in (self.out / "checkpoints").glob(".*.tmp"):
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
        latest = self.out / "checkpoints" / "latest"
        if not latest.exists():
            return False
        folder = latest.parent / latest.read_text().strip()
        weights = load_file(folder / "weights.safetensors")
        model_state = {k[6:]: v for k, v in weights.items() if k.startswith("model.")}
        state = torch.load(folder / "state.pt", map_location=self.device, weights_only=True)
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )
            from torch.distributed.tensor import distribute_tensor

            full = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, model_state, options=full)
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=full)
            for k, cur in self.ema.items():
                value = weights[f"ema.{k}"].to(self.device)
                is_sharded = hasattr(cur, "device_mesh")
                self.ema[k] = (
                    distribute_tensor(value, cur.device_mesh, cur.placements)
                    if is_sharded
                    else value
                )
        else:
            self.model.load_state_dict(model_state)
            self.optimizer.load_state_dict(state["optimizer"])
            self.ema = {
                k[4:]: v.to(self.device) for k, v in weights.items() if k.startswith("ema.")
            }
        if (folder / "task.safetensors").exists() and hasattr(self.task, "load_state_dict"):
            self.task.load_state_dict(load_file(folder / "task.safetensors"))
        self.step, self.skipped = int(state["step"]), int(state["skipped"])
        return True

    def _full_states(self) -> tuple[dict, dict]:
        """Whole (unsharded) model and optimizer state dicts, on the CPU for process 0."""
        if not self.sharded:
            return self.model.state_dict(), self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return (
            get_model_state_dict(self.model, options=opts),
            get_optimizer_state_dict(self.model, self.optimizer, options=opts),
        )


def _agreed(flags: tuple[bool, ...], world_size: int, device: torch.device) -> tuple[bool, ...]:
    """``flags`` as every process sees them: each true on all once it is true on any (so
    that every process stops at the same step); one collective under DDP."""
    if world_size == 1:
        return flags
    value = torch.tensor(flags, dtype=torch.uint8, device=device)
    dist.all_reduce(value, dist.ReduceOp.MAX)
    return tuple(bool(v) for v in value.tolist())


@contextlib.contextmanager
def _signals_end_fit():
    """SIGINT and SIGTERM, while a fit runs on the main thread, are noted (the list yielded
    gets their numbers) instead of raising; the first restores the previous handlers, so a
    second one acts as it would have."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    kinds = (signal.SIGINT, signal.SIGTERM)
    previous = {k: signal.getsignal(k) for k in kinds}

    def restore() -> None:
        for kind, handler in previous.items():
            signal.signal(kind, handler if handler is not None else signal.SIG_DFL)

    def note(signum, frame) -> None:
        received.append(signum)
        restore()
        print(f"\n{signal.Signals(signum).name}: finishing the step and checkpointing "
              "(again to stop at once)", flush=True)  # fmt: skip

    for kind in kinds:
        signal.signal(kind, note)
    try:
        yield received
    finally:
        restore()


def _full(t: Tensor) -> Tensor:
    """A sharded (DTensor) value gathered whole; plain tensors pass through."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _collate(items: list[dict]) -> dict:
    out = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(values[0], Tensor) else values
    return out


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
