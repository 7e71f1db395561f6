"""The default world's recipe: record, train the autoencoder, cache latents, fine-tune the
decoder, train the world model, distil its few-step student, evaluate, ship. One resumable
call, `matrixgame world build`.

Every stage keeps its work in ``<work>/<stage>/`` and resumes from its last checkpoint; a
finished stage is skipped. ``hours`` bounds one call: the running stage checkpoints at the
deadline and the next call continues it, so training accumulates across sessions (and a
short GPU run can continue a CPU run: the same command, another ``work`` folder). Where
the work folder is gone (a fresh clone), the stages start from the shipped weights
(``worlds/<name>/``): the encoder is taken as final, the decoder and the world model
continue from their shipped steps. A version still in training, not yet better than the
shipped one, is kept the same way: every call that trained writes it, as a world folder,
to ``worlds/<name>/next/`` (commit it), and a fresh clone continues it from there rather
than starting the version again (the shipped folder's weights are of another version, or
older); a new version's world model starts from the shipped one of the earlier version,
carried onto the new latents (`train/latent_map.py`). A training stage also ends when its
held-out metric stops improving (``patience`` checks without a gain). At the end the world
is evaluated on held-out trajectories and, when it improves on the shipped one (or none is
shipped: it meets more of the issue's goals on the same clips, or as many with a higher 60-s
PSNR, ``card.improves``), its weights replace the shipped ones; every call that trained adds a
row to the model card's training log.

The student (``matrixgame distill``: a cold start on recorded pasts, then multi-segment
training on its own rollouts) is distilled from the world model as trained when its stage
runs, is evaluated beside it and ships beside it (``student.safetensors``, its sampler in
``config.json``; ``load(name, student=True)``). On a fresh clone it continues the kept or
shipped student. A new student of the shipped world model (``seed_from="shipped"``: a fresh
work folder starts from the shipped weights, not the kept version) is evaluated beside the
shipped student on the same clips and ships alone when it beats it.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from matrixgame.io import atomic_write_text
from matrixgame.worlds import shipped

STAGES = ("record", "vae", "latents", "decoder", "light", "dit", "student", "idm", "eval", "ship")
PREREQUISITES = {
    "record": (), "vae": ("record",), "latents": ("record", "vae"),
    "decoder": ("record", "vae", "latents"), "light": ("record", "vae"),
    "dit": ("record", "vae", "latents"),
    "student": ("record", "vae", "latents", "dit"),
    "idm": ("record",), "eval": ("latents", "idm"), "ship": ("eval",),
}  # fmt: skip
STEP_TARGETS = {"vae": "vae_steps", "decoder": "decoder_steps", "light": "light_steps",
                "dit": "dit_steps", "student": "student_steps", "idm": "idm_steps"}  # fmt: skip
# training stages that the evaluation can take as they are when a call runs out of time (and
# that a later stage, run with --only, may start from once they have a checkpoint)
CONTINUED = ("decoder", "dit", "student")
EVAL_RESERVE_S = 1200.0  # at most this much of a bounded call is kept for eval and ship
# what makes a build another version of a world: its runs cannot continue under a spec
# that changes these
VERSION_FIELDS = ("version", "vae_preset", "dit_preset", "height", "width", "frame_skip")
# the version of a world folder or build from before `version` was written: the default
# world's second (`doom-2x` presets; the first, of the `doom` presets, differs in them anyway)
UNVERSIONED = 2
# the latents per clip (from its start) on which a new version's latents are mapped onto the
# shipped autoencoder's, to carry the shipped world model over (128 latents: 257 frames)
CARRY_LATENTS = 128


@dataclass(frozen=True)
class WorldSpec:
    """What the default world is: data, models, windows, schedule and budgets."""

    name: str = "doom-e1m1"
    # raised by hand when the training changes so that no run, kept or shipped weights of the
    # earlier version should continue, as a preset change does. 3: the autoencoder trained
    # fresh at a constant learning rate; version 2's, decayed to 5% by 6,000 steps, had stopped
    # gaining (BENCHMARKS.md, "A wider encoder, more latent channels"), and a new encoder
    # means new latents and a new world model
    version: int = 3
    maps: tuple[str, ...] = ("E1M1",)
    frames: int = 160_000  # training frames to record (clips may end early)
    clip_frames: int = 1024
    frame_skip: int = 2  # 35 / 2 = 17.5 frames/s; one latent = 2 frames = 114 ms
    eval_frames: int = 8800
    eval_clip_frames: int = 1100
    eval_loop_fraction: float = 0.5
    eval_seed: int = 1
    height: int = 96
    width: int = 128
    vae_preset: str = "doom-2x"
    vae_steps: int = 20_000
    vae_frames: int = 9
    vae_batch: int = 4
    vae_lr: float = 5e-4
    # no decay: at a constant 5e-4 a fresh autoencoder still gained 0.015 dB per 100 steps at
    # 12,000 (29.38 dB held out; version 2's, decayed to 5%, 27.94 at 6,000 and 1,797
    # adversarial decoder steps); the held-out patience ends it when it stops gaining
    vae_final_lr: float = 1.0
    decoder_steps: int = 2000
    decoder_lr: float = 1e-4
    decoder_adversarial: float = 0.5
    decoder_feature_matching: float = 0.0
    decoder_latent_noise: float = 0.2
    # R1 on the discriminator (its mean patch logit): without it, it won outright within
    # 200 steps (d_real 1.3, d_fake -1.1, the adaptive weight fell to 3e-4: no adversarial
    # signal); with gamma 1 it learns, and wins again by step 500 (BENCHMARKS.md, 2026-12-02)
    decoder_r1: float = 1.0
    # the light decoder (MG-LightVAE): the decoder's channels pruned by this share, then
    # distilled against it, for real-time play on CPUs without fast low-precision paths
    light_rate: float | tuple[float, ...] = 0.75  # or one per decoder stage (train light-vae)
    light_steps: int = 2000
    light_lr: float = 1e-4
    # cosine-decayed to this fraction of light_lr by light_steps (a larger target stretches
    # the cosine, so a continued run resumes part way down it): at a constant 1e-4 the
    # 6,000-step light decoder still gained ~0.25 dB per 1,000 steps
    light_final_lr: float = 0.1
    dit_preset: str = "doom-2x"
    # a new version's world model starts from the shipped one of an earlier version carried
    # onto its latents (`train/latent_map.py`), the rotation fitted on this many training
    # clips; 0: from scratch
    carry_clips: int = 16
    dit_steps: int = 40_000
    dit_batch: int = 8
    dit_lr: float = 2e-4
    # the rate cools down, a cosine to dit_final_lr, over the last dit_decay_steps of the step
    # target and is constant before (warmup-stable-decay, TrainConfig.decay_steps): a larger
    # --dit-steps trains at the full rate again and cools down at its new end. Constant up
    # to 35,338 steps; the first cooldown (to 37,500) lowered the held-out loss 0.0024 per
    # 1,000 steps against 0.0021 before it (BENCHMARKS.md, fourteenth session)
    dit_final_lr: float = 0.1
    dit_decay_steps: int = 2500
    past: int = 2
    current: int = 2  # latents generated per step: 4 frames, 229 ms of video
    memory: int = 2
    # camera-aligned RoPE (data.windows.WindowConfig.camera_rope): from the same weights, 1,500
    # steps each, level on held-out loss, on 60-s rollouts a lower FD (2.31 against 3.53), more
    # turns read (87% against 83%), and memory that helps on revisits (+0.50 dB, against -0.77
    # without it); version 3 continues under it from 8,500 steps (BENCHMARKS.md, 2026-12-05)
    camera_rope: bool = True
    # noise on the past latents (GameNGen's; not in the report; train.dit_task.DiTTask): the
    # world model trains with its past noised to a level drawn from [0, dit_past_noise] and
    # given as the past's timestep, and plays (its sampler, and the student distilled from it)
    # with the past noised to play_past_noise, so that its own blurred past reads as noise it
    # has learnt to look through. From version 3's world model, 3,454 steps at 0.5: on 8 clips
    # x 100 latents PSNR over latents 21-100 20.70 dB at 0.35 against 19.48 without, held-out
    # memory gain doubled (BENCHMARKS.md, fifth session); from 15,239 steps on
    dit_past_noise: float = 0.5
    play_past_noise: float = 0.35
    # revisits (inference.session.WorldSession.revisit_margin): a window whose memory sees its
    # view better than its last past latent does by more than this is generated from memory
    # alone, the past dropped as the world model's training drops it (DiTTask.drop_past); the
    # model follows even a past that has lost the scene and draws on its memory only without
    # one (loop returns: +3.9 dB from memory with no past, +0.3 dB with a grey one); its
    # student plays so too. Margin 0 against none, same weights, the recipe's 7 clips: world
    # model 10 goals against 9, 60-s PSNR +0.72 dB, revisits +0.68 dB over memory off (was
    # -0.12), first to last 10 s 1.48 dB (2.38); its 1-step student +1.05 dB, revisits +0.49
    # (was -1.76); FD up (1.31 -> 3.73) and PSNR at 16 s down 1 dB (BENCHMARKS.md). None: off
    play_revisit_margin: float | None = 0.0
    # the student: DMD from the world model with the report's update ratios and both stages.
    # At equal steps from the 26,173-step world model's 1,500-step cold start, 900 multi-segment
    # steps against 900 more cold ones (7 clips, 3 steps): 60-s PSNR 19.70 against 19.52, the
    # last 10 s of 60 20.20 against 20.09, FD 1.25 against 1.53, revisits +1.56 against +1.87
    # dB; in 1 step level (20.11 / 20.05). A multi-segment step costs 2.5 cold ones (6.9 min
    # per 100 on one AVX2 thread). On the 5,902-step world model (2026-12-04) the cold start
    # alone was 0.13 dB ahead (model card, BENCHMARKS.md; --student-multi-steps 0: cold alone)
    student_cold_steps: int = 1500
    student_multi_steps: int = 900
    student_batch: int = 2
    student_lr: float = 1e-5
    critic_lr: float = 1e-5
    # DMD's regression term (its weight): the student's sample against the teacher's ODE sample
    # from the same point; without it the student invented texture and drifted (model card).
    # At 4 against 1, 300 multi-segment steps each from the 3,600-step student of the
    # 40,000-step world model on the same batches: 3 steps +0.49 dB at 1 s, +0.14 over 60 s,
    # sharpness 0.083 -> 0.065 (its world model's 0.062); 600 steps at 4 are within 0.5 dB of
    # the world model at 4 and 16 s (BENCHMARKS.md, sixteenth session). A dial between the
    # teacher's accuracy and sharpness: at 4 the student is already only as sharp as its
    # teacher (0.063 against 0.062), so more weight would spend the sharpness goal (untried)
    student_regression: float = 4.0
    # the teacher's classifier-free guidance on the actions in DMD and the regression target:
    # at 4 a cold-start student gained 0.44 dB and read 71% of the turns (55% without) on
    # 17-s rollouts, a 1-step student plays it at no extra cost (model card, 2026-12-04)
    student_guidance: float = 4.0
    student_sampler_steps: int = 3
    student_segments: int = 6
    # the student follows its world model: once the world model has trained student_follow_gap
    # steps past the one the finished student last trained against, the student stage reopens
    # and continues the multi-segment run student_follow_steps more against the world model
    # as it is then (0: a finished student stays; --student-multi-steps continues it by hand).
    # 600 such steps followed 3,146 world-model steps (30,990 -> 34,136; BENCHMARKS.md,
    # thirteenth session): 6 min per 100 on one AVX2 thread
    student_follow_gap: int = 1000
    student_follow_steps: int = 300
    idm_steps: int = 2000
    sampler_steps: int = 4
    shift: float = 3.0
    # classifier-free guidance of the world model's sampler (1: off; inference.rollout.Guidance).
    # On the actions at 4 the IDM reads 83% of the turns it reads on real frames (57% off) at a
    # third of the Frechet distance, but PSNR over 60 s falls 0.46 dB and revisits 0.66 dB, so
    # the ship rule keeps it off; on the memory it did not help revisits (model card, 2026-12-04)
    action_guidance: float = 1.0
    memory_guidance: float = 1.0
    kinematics: str = "doom"
    checkpoint_every: int = 250
    patience: int = 6  # held-out checks without improvement before a stage stops
    eval_clips: int = 4
    eval_seconds: float = 60.0

    def __post_init__(self) -> None:
        margin = self.play_revisit_margin
        if margin is not None and not -1 <= margin <= 1:
            raise ValueError(f"play_revisit_margin is a difference of view overlaps in [-1, 1] "
                             f"(or None: off), got {margin}")  # fmt: skip
        if not 0 <= self.play_past_noise <= self.dit_past_noise < 1:
            raise ValueError(
                f"need 0 <= play_past_noise <= dit_past_noise < 1 (a world plays with noise on "
                f"its past only at a level it trained on), got {self.play_past_noise} and "
                f"{self.dit_past_noise}"
            )

    @property
    def fps(self) -> float:
        return 35.0 / self.frame_skip

    @property
    def sampler(self) -> dict:
        """The world model's sampler as its config.json holds it (guidance where it is on)."""
        sampler = {"name": "euler", "steps": self.sampler_steps, "shift": self.shift}
        if self.play_past_noise > 0:
            sampler["past_noise"] = self.play_past_noise
        if self.play_revisit_margin is not None:
            sampler["revisit_margin"] = self.play_revisit_margin
        if (self.action_guidance, self.memory_guidance) != (1.0, 1.0):
            sampler["guidance"] = {"actions": self.action_guidance,
                                   "memory": self.memory_guidance}  # fmt: skip
        return sampler

    @property
    def student_steps(self) -> int:
        return self.student_cold_steps + self.student_multi_steps

    @property
    def student_name(self) -> str:
        return f"{self.name} student"

    @property
    def student_one_step_name(self) -> str:
        return f"{self.name} student, 1 step"

    @property
    def student_cold_name(self) -> str:
        return f"{self.name} student, cold start only"


SPECS = {
    "doom-e1m1": WorldSpec(),
    # the same recipe in a minute: small frames, a few steps per stage (tests, quick checks)
    "tiny": WorldSpec(
        name="tiny",
        frames=1200,
        clip_frames=300,
        eval_frames=600,
        eval_clip_frames=300,
        eval_loop_fraction=0.0,
        height=32,
        width=48,
        vae_steps=6,
        decoder_steps=4,
        light_steps=2,
        dit_steps=8,
        dit_batch=2,
        student_cold_steps=2,
        student_multi_steps=2,
        student_segments=2,
        idm_steps=20,
        checkpoint_every=2,
        patience=100,
        eval_clips=1,
        eval_seconds=3.0,
        sampler_steps=2,
        action_guidance=2.0,  # the guided sampler's path, too
    ),  # fmt: skip
}


@dataclass
class Recipe:
    spec: WorldSpec
    work: Path
    hours: float | None = None
    workers: int = 2
    ship_to: Path | None = None  # default: worlds/<name>/ of this checkout
    seed_from: str = "kept"  # a fresh work folder starts from: "kept" (else shipped), "shipped"
    cpu_bf16: bool | None = None  # None: where the CPU has fast bf16
    progress: object = print
    state: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from matrixgame.accel.capability import fast_bf16

        # bf16 autocast where the CPU multiplies bf16 fast (1.6x for the VAE step); on AVX2
        # it would crawl, so fp32 there
        self.cpu_bf16 = fast_bf16() if self.cpu_bf16 is None else self.cpu_bf16
        self.work = Path(self.work)
        if self.seed_from not in ("kept", "shipped"):
            raise ValueError(f"seed_from must be 'kept' or 'shipped', got {self.seed_from!r}")
        self.ship_to = (
            Path(self.ship_to) if self.ship_to else shipped.worlds_root() / self.spec.name
        )
        self.deadline = None if self.hours is None else time.monotonic() + 3600 * self.hours
        self.train_deadline = self.deadline
        self.state = self._load_state()
        built = self.state.get("spec", {})
        built = {"version": UNVERSIONED, **built} if built else built
        changed = [k for k in VERSION_FIELDS if k in built and built[k] != getattr(self.spec, k)]
        if changed:
            was = ", ".join(f"{k} {built[k]!r}" for k in changed)
            raise ValueError(
                f"{self.work} holds a build of another version of {self.spec.name} ({was}; "
                f"this recipe: {', '.join(repr(getattr(self.spec, k)) for k in changed)}): give "
                f"a new --work folder (move its data/ and eval-data/ there to keep the "
                f"recordings)"
            )

    # -- state -----------------------------------------------------------------------------

    def _load_state(self) -> dict:
        path = self.work / "recipe.json"
        if path.exists():
            return json.loads(path.read_text())
        # a fresh work folder continues the training log of the version it continues
        seed = self.seed_folder("dit")
        log = shipped.read_config(seed).get("training_log", []) if seed is not None else []
        return {"spec": asdict(self.spec), "stages": {}, "sessions": log}

    def _save_state(self) -> None:
        atomic_write_text(self.work / "recipe.json", json.dumps(self.state, indent=1))

    def _update(self, change) -> None:
        """Apply ``change(state)`` to the state as it is on disk now (another process may be
        running another stage, `--only`), then save it."""
        self.state = self._load_state()
        change(self.state)
        self._save_state()

    def _mark(self, stage: str, **info) -> None:
        self._update(lambda state: state["stages"].setdefault(stage, {}).update(info))

    def done(self, stage: str) -> bool:
        """Finished: a training stage reached its (current) step target or stopped early;
        a larger target reopens it, except the autoencoder once latents exist (they, and
        everything trained on them, depend on its encoder)."""
        info = self.state["stages"].get(stage, {})
        if not info.get("done"):
            return False
        target = STEP_TARGETS.get(stage)
        if target is None or info.get("stopped") == "stop" or info.get("from_shipped"):
            return True
        if stage == "vae" and self.state["stages"].get("latents", {}).get("done"):
            return True
        return info.get("step", 0) >= getattr(self.spec, target)

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    @property
    def heldout(self) -> Path:
        """The held-out trajectories (another seed): early stopping and evaluation."""
        return self.work / "eval-data"

    def path(self, stage: str) -> Path:
        return self.work / {"record": "data", "eval": "report"}.get(stage, stage)

    @property
    def cold_run(self) -> Path:
        """The student's cold start (``student-cold/``), beside its multi-segment run."""
        return self.work / "student-cold"

    # -- the stages ------------------------------------------------------------------------

    def run(self, until: str = "ship", only: str | None = None) -> dict:
        """Run the stages up to ``until`` (or just ``only``, whose earlier stages must be
        done: the decoder and the world model can then train side by side, one process
        each); returns the state (``stages``: per stage what was done). Stops early, with
        everything checkpointed, at the deadline."""
        for name in (until, only):
            if name is not None and name not in STAGES:
                raise ValueError(f"unknown stage {name!r}; choose from {STAGES}")
        self.work.mkdir(parents=True, exist_ok=True)
        stages = STAGES[: STAGES.index(until) + 1]
        if only is not None:
            needed = [s for s in STAGES[: STAGES.index(only)] if s in PREREQUISITES[only]]
            missing = [s for s in needed if not self.done(s) and not (
                s in CONTINUED and _has_checkpoint(self.path(s)))]  # fmt: skip
            if missing:
                raise ValueError(f"--only {only} needs the stages {missing} done first")
            stages = (only,)
        start = time.monotonic()
        self.trained: dict[str, int] = {}  # stage -> step reached, for the training log
        self.interrupted = False  # Ctrl-C or SIGTERM ended a stage (at its checkpoint)
        self.evaluated: dict | None = None  # the held-out figures, when this call evaluated
        self.card: tuple | None = None  # the model card's inputs, when this call shipped
        self.train_deadline = self.deadline
        if self.deadline is not None and "eval" in stages:  # keep time to evaluate and ship
            left = self.deadline - start
            self.train_deadline = self.deadline - min(0.25 * left, EVAL_RESERVE_S)
        for stage in stages:
            if self.done(stage) and not self._stale(stage):
                continue
            late = self.train_deadline is not None and time.monotonic() >= self.train_deadline
            if stage in CONTINUED and late:
                self.progress(f"[{stage}] out of training time: the next call continues it")
                continue
            # past the training deadline only the short stages that evaluate and ship go on
            if stage not in ("idm", "eval", "ship") and (late or self.out_of_time()):
                self.progress(f"[{stage}] out of time: rerun to continue")
                break
            self.progress(f"[{stage}] ...")
            result = getattr(self, f"stage_{stage}")()
            if self.interrupted:  # the rest is left to the next call; this one keeps and logs
                self.progress(f"[{stage}] interrupted at a checkpoint: rerun to continue")
                break
            if result is False and stage not in CONTINUED:  # ran out of time mid-stage
                break
        self._log_session(self.trained, time.monotonic() - start)
        if self.card is not None:  # shipped: its config and card carry this call's row too
            from matrixgame.worlds.card import write_card

            config = shipped.read_config(self.ship_to)
            shipped.write_config(self.ship_to, {**config, "training_log": self.state["sessions"]})
            write_card(self.ship_to, self.state, *self.card)
        self.keep()
        return self.state

    def keep(self) -> None:
        """After a call that trained or evaluated, the version in training as a world folder
        in :attr:`kept` (weights and config, no figures but its training log's), so that a
        fresh clone continues it;
        only once its world model has a checkpoint and it is not what ships."""
        if not (self.trained or self.evaluated) or not _has_checkpoint(self.path("dit")) or \
                self._ships_current(student=self.student_run() is not None):  # fmt: skip
            return
        self.export({}, folder=self.kept)
        self.progress(f"[keep] the version in training (world model step "
                      f"{self._step('dit')}) kept in {self.kept}: commit it to continue it "
                      f"on another machine")  # fmt: skip

    def stage_record(self) -> None:
        from matrixgame.data.engine.recorder import RecordConfig, record_dataset

        s = self.spec
        common = dict(maps=s.maps, clip_frames=s.clip_frames, frame_skip=s.frame_skip,
                      workers=self.workers)  # fmt: skip
        record_dataset(RecordConfig(out=str(self.path("record")), frames=s.frames, **common))
        record_dataset(RecordConfig(out=str(self.work / "eval-data"), frames=s.eval_frames,
                                    **{**common, "clip_frames": s.eval_clip_frames},
                                    loop_fraction=s.eval_loop_fraction, heldout_every=1,
                                    seed=s.eval_seed))  # fmt: skip
        self._mark("record", done=True)

    def stage_vae(self):
        from matrixgame.train.jobs import VAEJob, train_vae

        s, out = self.spec, self.path("vae")
        seed = self.seed_folder("vae")
        if not _has_checkpoint(out) and seed is not None:
            # a fresh clone: the kept or shipped encoder is final (the latents depend on it)
            _seed_run(out, seed, "vae", self.spec)
            self._mark("vae", done=True, from_shipped=True)
            return None
        job = VAEJob(data=str(self.path("record")), out=str(out), preset=s.vae_preset,
                     steps=s.vae_steps, batch_size=s.vae_batch, frames=s.vae_frames,
                     height=s.height, width=s.width, lr=s.vae_lr, final_lr=s.vae_final_lr,
                     checkpoint_every=s.checkpoint_every, cpu_bf16=self.cpu_bf16)  # fmt: skip
        stop = HeldoutStop(out, s.patience, lambda: vae_heldout_scores(out, self.heldout))
        trainer = train_vae(job, self.train_deadline, stop)
        return self._finish("vae", trainer, s.vae_steps)

    def stage_latents(self) -> None:
        from matrixgame.train.jobs import cache

        cache(str(self.path("record")), str(self.path("vae")), str(self.path("latents")))
        # the held-out trajectories too: the world model's early stopping scores them
        cache(str(self.work / "eval-data"), str(self.path("vae")), str(self.work / "eval-latents"))
        self._mark("latents", done=True)

    def stage_decoder(self):
        from matrixgame.train.jobs import DecoderJob, train_decoder

        s, out = self.spec, self.path("decoder")
        init, start = None, 0
        seed = self.seed_folder("vae")
        tuned = _decoder_step(seed) if seed is not None and not _has_checkpoint(out) else 0
        if tuned:  # a fresh clone: continue the kept or shipped decoder's fine-tuning
            init, start = str(seed), tuned
        job = DecoderJob(data=str(self.path("record")), vae=str(self.path("vae")), out=str(out),
                         steps=s.decoder_steps, batch_size=s.vae_batch, frames=s.vae_frames,
                         lr=s.decoder_lr, checkpoint_every=s.checkpoint_every,
                         adversarial=s.decoder_adversarial,
                         feature_matching=s.decoder_feature_matching,
                         latent_noise=s.decoder_latent_noise, r1=s.decoder_r1, init=init,
                         start_step=start, cpu_bf16=self.cpu_bf16)  # fmt: skip
        stop = HeldoutStop(out, s.patience, lambda: vae_heldout_scores(out, self.heldout))
        trainer = train_decoder(job, self.train_deadline, stop)
        return self._finish("decoder", trainer, s.decoder_steps)

    def stage_light(self):
        """The decoder pruned by ``light_rate`` and distilled against the world's decoder as it
        is when this stage runs (MG-LightVAE); a fresh clone continues the kept or shipped
        one at its step."""
        from matrixgame.accel.light_vae import LightVAEJob, train_light_vae
        from matrixgame.train.runs import latest_weights

        s, out = self.spec, self.path("light")
        init, start = None, 0
        seed = self.seed_folder("light")
        if not _has_checkpoint(out) and seed is not None:
            light = shipped.read_config(seed)["light"]
            init, start = str(seed / "light.safetensors"), int(light.get("step", 0))
            self._mark("light", decoder_step=light.get("decoder_step"),
                       figures=light.get("figures", {}))  # fmt: skip
        teacher = self.vae_run()
        job = LightVAEJob(data=str(self.path("record")), vae=str(teacher), out=str(out),
                          rate=s.light_rate, steps=s.light_steps, batch_size=s.vae_batch,
                          frames=s.vae_frames, lr=s.light_lr, final_lr=s.light_final_lr,
                          init=init, start_step=start, checkpoint_every=s.checkpoint_every,
                          cpu_bf16=self.cpu_bf16)  # fmt: skip
        trainer = train_light_vae(job, self.train_deadline)
        result = self._finish("light", trainer, s.light_steps)
        if "light" in self.trained:  # its figures and teacher, where this call trained it
            light, full = (vae_heldout_scores(run, self.heldout) for run in (out, teacher))
            figures = {"psnr": light["score"], "ssim": light["ssim"],
                       "sharpness": light["sharpness"], "full_psnr": full["score"],
                       "full_ssim": full["ssim"], "full_sharpness": full["sharpness"]}  # fmt: skip
            step = _run_decoder_step(teacher, latest_weights(teacher, model="vae")[1])
            self._mark("light", decoder_step=step, figures=figures)
            if result is None:  # finished (not cut by the deadline)
                self._ship_light(step)
        return result

    def _ship_light(self, decoder_step: int) -> None:
        """A light decoder distilled from the shipped decoder (the same encoder and decoder
        steps) ships beside it at once: it changes none of the world's figures."""
        if not self._holds(self.ship_to, "vae"):
            return
        config = shipped.read_config(self.ship_to)
        if (config.get("encoder_step"), _decoder_step(self.ship_to)) != (
            self._step("vae"),
            decoder_step,
        ):
            return
        light = self._export_light(self.ship_to)
        shipped.write_config(self.ship_to, {**config, "light": light})
        self.progress(f"[light] shipped beside the world in {self.ship_to}")
        if self.card is None:  # the card at the run's end, with the figures it has
            self.card = (None, None, None)

    def stage_dit(self):
        from matrixgame.train.jobs import DiTJob, train_dit

        s, out = self.spec, self.path("dit")
        init, start = None, 0
        seed = self.seed_folder("dit")
        if not _has_checkpoint(out) and seed is not None:
            init = str(seed / "dit.safetensors")
            start = int(shipped.read_config(seed)["dit"].get("step", 0))
        elif not _has_checkpoint(out):  # a new version: the shipped world model carried over
            init = self._carried_dit()
        job = DiTJob(latents=str(self.path("latents")), out=str(out), preset=s.dit_preset,
                     steps=s.dit_steps, batch_size=s.dit_batch, lr=s.dit_lr,
                     final_lr=s.dit_final_lr, decay_steps=s.dit_decay_steps, past=s.past,
                     current=s.current, memory=s.memory, camera_rope=s.camera_rope,
                     past_noise=s.dit_past_noise,
                     checkpoint_every=s.checkpoint_every, init=init, start_step=start,
                     cpu_bf16=self.cpu_bf16)  # fmt: skip
        heldout = self.work / "eval-latents"
        stop = HeldoutStop(
            out, s.patience, lambda: dit_heldout_scores(out, heldout, past_noise=s.play_past_noise)
        )
        trainer = train_dit(job, self.train_deadline, stop)
        return self._finish("dit", trainer, s.dit_steps)

    def _carried_dit(self) -> str | None:
        """The weights a new version's world model starts from: the shipped world model of
        an earlier version (the same DiT preset, on latents of this shape) carried onto this
        version's latents by the rotation that maps them best onto its autoencoder's, fitted
        on the first frames of ``carry_clips`` training clips (`train/latent_map.py`); None
        where there is none (it then starts from scratch)."""
        from safetensors.torch import load_file

        from matrixgame.data.shards import Manifest, read_clip
        from matrixgame.models.vae import VAE_PRESETS
        from matrixgame.train.latent_map import fit_rotation, rotate_dit
        from matrixgame.train.latents import encode_clip

        s, folder, out = self.spec, self.ship_to, self.work / "dit-carried"
        if (out / "carried.json").exists():  # fitted by an earlier call
            return str(out / "dit.safetensors")
        try:
            config = shipped.read_config(folder) if s.carry_clips else None
        except ValueError:
            config = None
        if config is None or not (folder / "dit.safetensors").exists():
            return None
        old, new = VAE_PRESETS[config["vae"]["preset"]], VAE_PRESETS[s.vae_preset]
        shape = (old.z_dim, old.spatial_factor, old.temporal_factor)
        if config["dit"]["preset"] != s.dit_preset or shape != (
                new.z_dim, new.spatial_factor, new.temporal_factor):  # fmt: skip
            return None
        vae, _ = shipped.load_vae(folder)
        latents = self.path("latents")
        names = sorted(Manifest.load(latents).shards)
        names = names[:: max(1, len(names) // s.carry_clips)][: s.carry_clips]
        theirs, ours = [], []
        for name in names:
            mine = load_file(str(latents / name))["latents"][:, :CARRY_LATENTS]
            frames = read_clip(self.path("record") / name).frames
            theirs.append(encode_clip(vae, frames[: 1 + shape[2] * (mine.shape[1] - 1)],
                                      s.height, s.width))  # fmt: skip
            ours.append(mine)
        rotation, explained = fit_rotation(torch.cat(theirs, 1), torch.cat(ours, 1))
        weights = {k: v.float() for k, v in shipped.component_weights(folder, "dit").items()}
        shipped.save_component(out, "dit", rotate_dit(weights, rotation))
        carried = {"version": _version_of(config)[0], "step": int(config["dit"].get("step", 0)),
                   "explained": round(explained, 4), "clips": len(names)}  # fmt: skip
        atomic_write_text(out / "carried.json", json.dumps(carried))
        self._mark("dit", carried_from=carried)
        self.progress(
            f"[dit] starting from the shipped world model of version "
            f"{carried['version']} ({carried['step']} steps), carried onto these "
            f"latents by a rotation ({100 * explained:.0f}% of their variance)"
        )
        return str(out / "dit.safetensors")

    def stage_student(self):
        """The few-step student of the world model as trained now: a cold start on recorded
        pasts (``student-cold/``), then multi-segment training on its own rollouts
        (``student/``), each resumable; ``student_multi_steps`` 0: the cold start alone."""
        from matrixgame.distill.job import DistillJob, train_distill

        s, dit = self.spec, self.path("dit")
        if not _has_checkpoint(dit):
            self.progress("[student] no world-model checkpoint yet: nothing to distil")
            return False
        common = dict(teacher=str(dit), latents=str(self.path("latents")),
                      batch_size=s.student_batch, student_lr=s.student_lr,
                      critic_lr=s.critic_lr, sampler_steps=s.student_sampler_steps,
                      regression=s.student_regression, guidance=s.student_guidance,
                      past_noise=s.play_past_noise,
                      checkpoint_every=s.checkpoint_every)  # fmt: skip
        cold, multi = self.cold_run, self.path("student")
        for run in (cold, multi):  # distilled for another window or past noise: set aside
            unfit = self._unfit_student(run) if _has_checkpoint(run) else None
            if unfit:
                aside = _free_name(run.with_name(f"{run.name}.{unfit[0]}"))
                run.rename(aside)
                self.progress(
                    f"[student] {run.name}/ was distilled {unfit[1]}: moved to {aside.name}/, "
                    f"distilling anew"
                )
        teacher_step = _latest_step(dit)  # the teacher this call loads (runs resume with it)
        seed, seed_step = self._student_seed(teacher_step)
        past_cold = _has_checkpoint(multi) or (seed_step >= s.student_cold_steps
                                               and s.student_multi_steps > 0)  # fmt: skip
        if not past_cold and _latest_step(cold) < max(s.student_cold_steps, seed_step):
            # (a kept cold start of this very world model becomes the run at its step)
            trainer = train_distill(DistillJob(out=str(cold), stage="cold",
                                               steps=s.student_cold_steps, student_every=5,
                                               init=seed, start_step=seed_step,
                                               **common), self.train_deadline)  # fmt: skip
            self._mark("student", done=False, step=self._student_step(),
                       teacher_step=teacher_step)  # fmt: skip
            if trainer.step > trainer.first_step:  # a kept student at its step trained nothing
                self.trained["student"] = self._student_step()
            if self._ended(trainer) is False:
                return False
        if s.student_multi_steps == 0 and not _has_checkpoint(multi):  # the cold start alone
            step = self._student_step()
            self._mark("student", done=step is not None and step >= s.student_cold_steps,
                       step=step, teacher_step=teacher_step)  # fmt: skip
            return None
        seeded = seed is not None and seed_step >= s.student_cold_steps  # past its cold start
        init = None if _has_checkpoint(multi) else seed if seeded else str(cold)
        info = self.state["stages"].get("student", {})
        target = max(s.student_multi_steps, info.get("multi_target", 0))
        if _has_checkpoint(multi) and _latest_step(multi) >= target and self._student_behind():
            target = _latest_step(multi) + s.student_follow_steps
            self._mark("student", multi_target=target)
            self.progress(f"[student] the world model trained on from step "
                          f"{info['teacher_step']} to {teacher_step}: "
                          f"{s.student_follow_steps} more multi-segment steps against "
                          f"it")  # fmt: skip
        trainer = train_distill(DistillJob(out=str(multi), stage="multi", init=init,
                                           start_step=seed_step - s.student_cold_steps if seeded
                                           else 0,
                                           steps=target, student_every=3,
                                           segments=s.student_segments, **common),
                                self.train_deadline)  # fmt: skip
        step = self._student_step()
        done = trainer.step >= target
        if trainer.step == trainer.first_step and "teacher_step" in info:
            teacher_step = info["teacher_step"]  # nothing trained: still the teacher it had
        self._mark("student", done=done, step=step, teacher_step=teacher_step,
                   stopped=trainer.stopped, logs=_scalars(trainer.last_logs))  # fmt: skip
        self.trained["student"] = step
        return self._ended(trainer)

    def _student_behind(self) -> bool:
        """A finished multi-segment student whose world model has trained on by at least
        ``student_follow_gap`` steps since it last trained against it."""
        s, info = self.spec, self.state["stages"].get("student", {})
        if not (s.student_follow_steps and s.student_multi_steps and info.get("done")):
            return False
        if "teacher_step" not in info or not _has_checkpoint(self.path("student")):
            return False
        return self._step("dit") - info["teacher_step"] >= s.student_follow_gap

    def _student_seed(self, teacher_step: int) -> tuple[str | None, int]:
        """(folder, steps) of the student a fresh work folder continues: the kept version's
        (student and critic) or the shipped one's, when it is of this version, no student run
        exists here and a stage is left to continue it in; else (None, 0). Under a recipe
        without the multi-segment stage, a student past its cold start is kept only where it
        is a cold start of the world model at ``teacher_step`` (the student this stage would
        distil: it becomes the cold-start run at its step, and trains no further); any other
        is not continued (nothing would train or hold it here): the student is distilled anew
        from the world model as trained now."""
        if self.student_run() is not None:
            return None, 0
        folder = self.seed_folder("student")
        if folder is None:
            return None, 0
        student = shipped.read_config(folder).get("student") or {}
        step = int(student.get("step") or 0)
        if step >= self.spec.student_cold_steps and self.spec.student_multi_steps == 0:
            if student.get("teacher_step") == teacher_step and student.get("cold_start_only"):
                self.progress(f"[student] the student of {folder} ({step} steps) is a cold "
                              f"start of this world model (step {teacher_step}): kept as it "
                              f"is")  # fmt: skip
                return str(folder), step
            self.progress(f"[student] the student of {folder} is past its cold start and this "
                          f"recipe has no multi-segment stage to continue it: distilling anew "
                          f"from the world model at step {teacher_step}")  # fmt: skip
            return None, 0
        self.progress(f"[student] continuing the student of {folder} at step {step}")
        return str(folder), step

    def stage_idm(self):
        from matrixgame.train.jobs import IDMJob, train_idm

        job = IDMJob(data=str(self.path("record")), out=str(self.path("idm")),
                     steps=self.spec.idm_steps, height=48, width=64)  # fmt: skip
        trainer = train_idm(job, self.deadline)
        return self._finish("idm", trainer, self.spec.idm_steps)

    def stage_eval(self) -> bool | None:
        from matrixgame.eval.idm import trained_idm
        from matrixgame.eval.protocols import evaluate
        from matrixgame.eval.report import write_report
        from matrixgame.worlds.card import figures_of

        missing = [s for s in ("dit", "idm") if not _has_checkpoint(self.path(s))]
        if missing:
            self.progress(f"[eval] no {' or '.join(missing)} checkpoint yet: nothing to evaluate")
            return False
        world = self.world()
        others = [*self.student_worlds(world.vae), self.shipped_world(),
                  self.shipped_student()]  # fmt: skip
        others = [w for w in others if w is not None]
        config = self.eval_config()
        results = evaluate([world, *others], self.heldout, config,
                           trained_idm(self.path("idm")))  # fmt: skip
        write_report(results, self.path("eval"))
        report = json.loads((self.path("eval") / "report.json").read_text())
        self.evaluated = figures_of(report, self.spec.name)
        self._mark("eval", done=True, dit_step=world.step, vae_step=self._step("decoder"),
                   student=self._student_key())  # fmt: skip
        self._mark("ship", done=False)

    def eval_config(self):
        from matrixgame.eval.protocols import EvalConfig
        from matrixgame.worlds.card import horizon_frames

        s = self.spec
        horizons = tuple(sorted({*EvalConfig().horizons, *horizon_frames(s.fps)}))
        return EvalConfig(clips=s.eval_clips, seconds=s.eval_seconds, steps=s.sampler_steps,
                          shift=s.shift, horizons=horizons)  # fmt: skip

    def stage_ship(self) -> bool | None:
        from matrixgame.worlds.card import figures_of, goals_met, improves

        if self._stale("eval"):  # trained since: these weights were not evaluated
            self.progress("[ship] the world model (or its decoder or student) trained since "
                          "the evaluation: evaluate first (`--only eval`), then ship")  # fmt: skip
            return False
        report = json.loads((self.path("eval") / "report.json").read_text())
        figures = figures_of(report, self.spec.name)
        # the shipped world as measured beside this one (the same clips), else its card's
        previous = figures_of(report, self.shipped_name) or _shipped_figures(self.ship_to)
        same = self._ships_current()  # the world model evaluated is the shipped one
        better = not same and improves(figures, previous)
        # or a new student of the shipped world model, against the shipped one (same clips)
        student = figures_of(report, self.spec.student_name)
        old = figures_of(report, self.shipped_student_name)
        student_better = same and "psnr" in student and improves(student, old)
        gif = None
        if better or student_better:
            self.export(
                figures,
                figures_of(report, self.spec.student_name),
                one_step=figures_of(report, self.spec.student_one_step_name),
                cold=figures_of(report, self.spec.student_cold_name),
            )
            gif = self.rollout_gif()
            shutil.rmtree(self.kept, ignore_errors=True)  # shipped: nothing left to keep
        self._mark("ship", done=True, shipped=better, student_shipped=student_better,
                   figures=figures, previous=previous)  # fmt: skip

        def measured(f: dict) -> str:
            return f"{goals_met(f)} goals met, PSNR {f.get('psnr', float('nan')):.2f} dB"

        if student_better:
            self.progress(f"[ship] shipped the new student of the shipped world model: "
                          f"{measured(student)} (shipped student: "
                          f"{measured(old) if old else 'none'})")  # fmt: skip
        else:
            self.progress(f"[ship] {'shipped' if better else 'kept the shipped weights'}: "
                          f"{measured(figures)} (shipped: "
                          f"{measured(previous) if previous else 'none'})")  # fmt: skip
        # the card is written once this call's training-log row is in (run's end); another
        # version's build that did not ship leaves the shipped card and training log as they
        # are (its rows and figures stay with the kept version, in next/)
        shipped_version = _folder_version(self.ship_to)
        if (
            better
            or student_better
            or shipped_version in (None, (self.spec.version, self.spec.vae_preset))
        ):
            self.card = (report, self.path("eval") if better or student_better else None, gif)

    # -- helpers ----------------------------------------------------------------------------

    @property
    def kept(self) -> Path:
        """Where a version still in training is kept between calls: ``<ship_to>/next/``."""
        return self.ship_to / "next"

    def _ships_current(self, student: bool = False) -> bool:
        """Whether the shipped folder holds this version as trained now (the same presets and
        window, world-model and decoder steps, and sampler; and ``student``: its student's)."""
        if not self._holds(self.ship_to, "dit"):
            return False
        config = shipped.read_config(self.ship_to)
        same = (config["dit"].get("step"), config["vae"].get("step"), config["sampler"]) == (
            self._step("dit"),
            self._vae_step(),
            self.spec.sampler,
        )
        shipped_student = config.get("student") if isinstance(config.get("student"), dict) else {}
        return same and (not student or shipped_student.get("step") == self._student_step())

    def seed_folder(self, component: str) -> Path | None:
        """The folder a fresh work folder starts this component from: the kept version in
        training when it holds it (unless ``seed_from`` is "shipped"), else the shipped world
        when it holds it, else None."""
        folders = (self.kept, self.ship_to) if self.seed_from == "kept" else (self.ship_to,)
        for folder in folders:
            if self._holds(folder, component):
                return folder
        return None

    def _holds(self, folder: Path, component: str) -> bool:
        """Whether the world folder has this component of this spec's version (same preset,
        and for the world model the same window), so a fresh clone starts from it; a spec
        of a new version trains its own."""
        if not (folder / f"{component}.safetensors").exists():
            return False
        try:
            config = shipped.read_config(folder)
        except ValueError:
            return False
        s = self.spec
        if _version_of(config) != (s.version, s.vae_preset):
            return False  # another autoencoder: neither its decoder nor its world model fit
        if component == "light":
            light = config.get("light")
            rate = light.get("pruning_rate") if isinstance(light, dict) else None
            return (tuple(rate) if isinstance(rate, list) else rate) == s.light_rate
        if component in ("dit", "student"):
            if component == "student":
                student = config.get("student")
                if not isinstance(student, dict) or (student.get("sampler") or {}).get(
                        "past_noise", 0.0) != s.play_past_noise:  # fmt: skip
                    return False  # none, or one that plays with another noise on its past
            window = config["window"]
            return config["dit"]["preset"] == s.dit_preset and \
                (window["past"], window["current"], window["memory"]) == \
                (s.past, s.current, s.memory)  # fmt: skip
        return True

    def _finish(self, stage: str, trainer, target: int) -> dict | bool:
        done = trainer.step >= target or trainer.stopped == "stop"
        self._mark(stage, done=done, step=trainer.step, stopped=trainer.stopped,
                   logs=_scalars(trainer.last_logs))  # fmt: skip
        if trainer.step > trainer.first_step:  # a run seeded at its target trained nothing
            self.trained[stage] = trainer.step
        return self._ended(trainer)

    def _ended(self, trainer) -> bool | None:
        """False where a trainer stopped short of its target at the deadline or on a signal
        (which also ends this call: :attr:`interrupted`)."""
        self.interrupted = self.interrupted or trainer.stopped == "signal"
        return False if trainer.stopped in ("deadline", "signal") else None

    def _stale(self, stage: str) -> bool:
        """The evaluation (and shipping) are redone when a model trained since; the student
        is distilled anew when its run is gone or is of the world model under another window
        (:meth:`stage_student` sets such a run aside), and continued when its world model
        has trained on (``student_follow_gap``)."""
        if stage == "student":
            run = self.student_run()
            return run is None or self._unfit_student(run) is not None or self._student_behind()
        if stage not in ("eval", "ship"):
            return False
        info = self.state["stages"].get("eval", {})
        return (info.get("dit_step"), info.get("vae_step"), info.get("student")) != (
            self._step("dit"),
            self._step("decoder"),
            self._student_key(),
        )

    def _student_key(self) -> list | None:
        """Which student there is: its steps, the world-model step it was distilled from and
        the noise on its past (a student distilled anew may reach the step count of the one
        evaluated); None without one."""
        run = self.student_run()
        if run is None:
            return None
        teacher = self.state["stages"].get("student", {}).get("teacher_step")
        level = (_run_config(run).get("job") or {}).get("past_noise", 0.0)
        return [self._student_step(), teacher, level]

    def _step(self, stage: str) -> int:
        return _latest_step(self.path(stage))

    def _student_step(self) -> int | None:
        """The student's steps (cold start + multi-segment), None before it has any."""
        cold, multi = _latest_step(self.cold_run), self._step("student")
        if not (cold or multi):
            return None
        return (self.spec.student_cold_steps if multi else 0) + (multi or cold)

    def world(self):
        """The world as trained so far: the DiT run with the decoder stage's VAE."""
        from matrixgame.train.runs import trained_vae, trained_world

        world = trained_world(self.path("dit"), self.spec.name)
        world.meta = {**world.meta, "sampler": self.spec.sampler}  # as it will ship
        if self.vae_run() == self.path("decoder"):
            world.vae = trained_vae(self.path("decoder"))[0]
        return world

    def vae_run(self) -> Path:
        """The run the world's VAE comes from: the decoder stage's once it has a checkpoint,
        else the autoencoder's."""
        decoder = self.path("decoder")
        return decoder if _has_checkpoint(decoder) else self.path("vae")

    def _vae_step(self) -> int:
        """The world's autoencoder as config.json's ``vae.step`` names it: its decoder's
        adversarial steps, or the autoencoder's steps where the decoder was not fine-tuned;
        one meaning whether the decoder stage's run is here or the work folder was seeded from
        a world folder (whose autoencoder run then holds the encoder's steps)."""
        run = self.vae_run()
        return _run_decoder_step(run, _run_config(run)) or self._step("vae")

    @property
    def shipped_name(self) -> str:
        return f"{self.spec.name} (shipped)"

    def shipped_world(self):
        """The shipped world, to be evaluated beside the one trained so that the ship rule
        compares figures of the same clips; None when none ships, or it holds the trained
        weights (:meth:`_ships_current`)."""
        if not (self.ship_to / "dit.safetensors").exists() or self._ships_current():
            return None
        try:
            world = shipped.load_world(self.ship_to)
        except ValueError as err:  # a broken shipped folder: ship over it
            self.progress(f"[eval] the shipped world does not load ({err}): not compared")
            return None
        world.name = self.shipped_name
        return world

    @property
    def shipped_student_name(self) -> str:
        return f"{self.spec.name} student (shipped)"

    def shipped_student(self):
        """The shipped student, evaluated beside a new student of the shipped world model
        (the student-only ship rule compares them on the same clips); None otherwise."""
        if not self._ships_current() or self._ships_current(student=True) or \
                self.student_run() is None or not shipped.has_student(self.ship_to):  # fmt: skip
            return None
        world = shipped.load_world(self.ship_to, student=True)
        world.name = self.shipped_student_name
        return world

    def _unfit_student(self, student: Path) -> tuple[str, str] | None:
        """Why the student run does not fit the world model as it plays now: (the suffix
        its run is set aside under, the reason), or None where it fits. It was distilled
        under another window (camera layout) than the world model's run has, or with
        another noise level on the past than this spec plays at."""
        config = _run_config(student)
        if not _same_window(config.get("window"), _run_config(self.path("dit")).get("window")):
            return "other-window", "under another window (camera layout)"
        level = (config.get("job") or {}).get("past_noise", 0.0)
        if level != self.spec.play_past_noise:
            return "other-past-noise", (f"with the past at noise level {level} (this world "
                                        f"plays at {self.spec.play_past_noise})")  # fmt: skip
        return None

    def student_run(self) -> Path | None:
        """The student's latest run: the multi-segment stage's, else the cold start's."""
        for run in (self.path("student"), self.cold_run):
            if _has_checkpoint(run):
                return run
        return None

    def student_world(self, vae, run: Path | None = None, name: str | None = None):
        """The student as distilled so far, with the world's ``vae`` (None before it has
        any); ``run``: another `matrixgame distill` run (a probe), as ``name``. Either plays
        as the world ships it: with the recipe's sampler options (:meth:`played`)."""
        from matrixgame.train.runs import trained_world

        probe = run is not None
        run = run if probe else self.student_run()
        if run is None:
            return None
        student = trained_world(run, name or self.spec.student_name)
        student.vae = vae
        if not probe:
            student.step = self._student_step()
        student.meta = {**student.meta, "sampler": self.played(student.meta["sampler"])}
        return student

    def student_worlds(self, vae) -> list:
        """The student in its own steps and in one (its first exit, which it is trained on
        too: the configuration that streams in real time on a plain AVX2 CPU), none before
        it has a checkpoint; and where the multi-segment student has a cold start beside it
        (``student-cold/``), that cold start alone: the distillation issue's comparison of
        multi-segment training against the single segment."""
        from matrixgame.train.runs import trained_world

        student = self.student_world(vae)
        if student is None:
            return []
        one = in_one_step(student, self.spec.student_one_step_name)
        cold = self.cold_run
        if self.student_run() == cold or not _has_checkpoint(cold):
            return [student, one]
        alone = trained_world(cold, self.spec.student_cold_name)
        alone.vae, alone.step = vae, _latest_step(cold)
        alone.meta = {**alone.meta, "sampler": self.played(alone.meta["sampler"])}
        return [student, one, alone]

    def export(self, figures: dict, student_figures: dict | None = None,
               folder: Path | None = None, one_step: dict | None = None,
               cold: dict | None = None) -> None:  # fmt: skip
        """Write the trained weights and config.json into ``folder`` (default: the shipped
        folder; the student's beside them when there is one, an older student removed)."""
        from matrixgame.train.jobs import _vae_meta
        from matrixgame.train.runs import latest_weights, sub_state

        s, folder = self.spec, Path(folder or self.ship_to)
        vae_run = self.vae_run()
        vae_state, vae_cfg = latest_weights(vae_run, model="vae")
        prefix = vae_cfg.get("weights_prefix", "")
        shipped.save_component(folder, "vae", sub_state(vae_state, prefix))
        if prefix:  # the decoder stage's run: its discriminator continues with it
            shipped.save_component(folder, "discriminator", sub_state(vae_state, "disc."))
        elif _folder_version(folder) != (s.version, s.vae_preset):  # an autoencoder run (or one
            # seeded from a world folder) over another version's folder: its discriminator goes
            (folder / "discriminator.safetensors").unlink(missing_ok=True)
        decoder_step = _run_decoder_step(vae_run, vae_cfg)
        dit_state, dit_cfg = latest_weights(self.path("dit"), model="dit")
        shipped.save_component(folder, "dit", dit_state)
        config = shipped.world_config(
            s.name, _vae_meta(str(vae_run)), self._vae_step(), dit_cfg,
            _latest_step(self.path("dit")), s.fps, s.kinematics,
            s.sampler, version=s.version, encoder_step=_latest_step(self.path("vae")),
            figures=figures,
            decoder_step=decoder_step,
            frame_skip=s.frame_skip, maps=list(s.maps), training_log=self.state["sessions"],
        )  # fmt: skip
        student = self.student_run()
        (folder / "critic.safetensors").unlink(missing_ok=True)
        state, meta = latest_weights(student, model="dmd") if student is not None else ({}, {})
        unfit = self._unfit_student(student) if student is not None else None
        if unfit:
            self.progress(
                f"[student] distilled {unfit[1]}: not kept with the world model; "
                f"`--only student` distils anew"
            )
            student = None
        if student is not None:
            shipped.save_component(folder, "student", sub_state(state, "student."))
            if folder == self.kept:  # a version in training: its critic continues with it
                raw, _ = latest_weights(student, prefix="model.critic.")
                shipped.save_component(folder, "critic", raw)
            config["student"] = {
                "step": self._student_step(),
                "teacher_step": self.state["stages"].get("student", {}).get("teacher_step"),
                "sampler": self.played(meta["sampler"]), "figures": student_figures or {},
                "regression": (meta.get("job") or {}).get("regression", 0.0),
                "guidance": (meta.get("job") or {}).get("guidance", 1.0),
                "cold_start_only": student == self.cold_run,
                "figures_1_step": one_step or {},
            }  # fmt: skip
            if cold:  # its cold start alone, evaluated beside it
                cold_step = _latest_step(self.cold_run)
                config["student"]["cold_start"] = {"step": cold_step, "figures": cold}
        elif (kept := self._student_of(folder, self._step("dit"))) is not None:
            # the folder's student, of this very world model
            config["student"] = {**kept, "sampler": self.played(kept["sampler"])}
        else:
            (folder / "student.safetensors").unlink(missing_ok=True)
        light = self._export_light(folder)
        if light is not None:
            config["light"] = light
        config["curves"] = self._curves()
        carried = self.state["stages"].get("dit", {}).get("carried_from")
        if carried:  # this version's world model started from an earlier version's
            config["dit"]["carried_from"] = carried
        shipped.write_config(folder, config)
        shipped.save_starts(folder, self.starts())

    def _curves(self) -> dict:
        """The held-out checks of the autoencoder, decoder and world-model runs (their
        ``heldout.jsonl``) after those of the world folder each was seeded from: the model
        card reads from them what more training predicts."""
        curves = {}
        for stage in shipped.CURVES:
            seed = self.seed_folder("vae" if stage == "decoder" else stage)
            earlier = (shipped.read_config(seed).get("curves") or {}).get(stage, []) if seed else []
            here = HeldoutStop(self.path(stage), 0, None).history()
            first = here[0]["step"] if here else math.inf
            curve = [c for c in earlier if c["step"] < first] + here
            if curve:
                curves[stage] = curve
        return curves

    def played(self, sampler: dict) -> dict:
        """A student's few-step sampler as the world plays it: with the recipe's revisit
        margin (the session's ``revisit_margin``; none where the recipe has none)."""
        sampler = {k: v for k, v in sampler.items() if k != "revisit_margin"}
        if self.spec.play_revisit_margin is not None:
            sampler["revisit_margin"] = self.spec.play_revisit_margin
        return sampler

    def _student_of(self, folder: Path, dit_step: int | None) -> dict | None:
        """The config.json entry of ``folder``'s student where it is a student of the world
        model at ``dit_step`` (what stays when only the sampler ships anew), else None."""
        if dit_step is None or not (folder / "student.safetensors").exists():
            return None
        student = shipped.read_config(folder).get("student")
        return student if student and student.get("teacher_step") == dit_step else None

    def _export_light(self, folder: Path) -> dict | None:
        """Write the light decoder into ``folder`` (from its run, else from the folder a fresh
        work folder would continue it from); its config.json entry, None where there is none."""
        from matrixgame.train.runs import latest_weights, sub_state

        run, info = self.path("light"), self.state["stages"].get("light", {})
        if _has_checkpoint(run):
            state, cfg = latest_weights(run, model="vae")
            shipped.save_component(folder, "light", sub_state(state, cfg["weights_prefix"]))
            return {"pruning_rate": cfg["pruning_rate"], "step": _latest_step(run),
                    "decoder_step": info.get("decoder_step"),
                    "figures": info.get("figures", {})}  # fmt: skip
        seed = self.seed_folder("light")
        if seed is None:
            (folder / "light.safetensors").unlink(missing_ok=True)
            return None
        light = shipped.read_config(seed)["light"]
        if seed.resolve() != Path(folder).resolve():
            shipped.save_component(folder, "light", shipped.component_weights(seed, "light"))
        return light

    def starts(self, count: int = 4) -> list:
        """Session starts from the held-out trajectories: each one's first full window of
        context (past + memory + 1 latents), from the cached held-out latents."""
        from matrixgame.inference.session import Start
        from matrixgame.train.latents import LatentClips

        clips = LatentClips(self.work / "eval-latents", split=None)
        need = self.spec.past + self.spec.memory + 1
        out = []
        for clip, meta in zip(clips.clips, clips.meta, strict=True):
            if clip["latents"].shape[1] >= need and len(out) < count:
                name = f"{meta.get('map', '?')} {meta.get('agent', 'trajectory')} {len(out)}"
                out.append(Start.from_clip(clip, need, name, clips.frames_per_latent))
        return out

    def rollout_gif(self, seconds: float = 60.0) -> Path:
        """A GIF of the longest held-out explore clip rolled out for ``seconds``: real left,
        generated right, every f-th frame (f: frames per latent; shown f frames long, so it
        plays in real time and stays a few MB)."""
        import numpy as np
        from PIL import Image

        from matrixgame.eval.protocols import run_clip, select_clips

        config = replace(self.eval_config(), seconds=seconds)
        explore, loops = select_clips(self.heldout, config)
        world = self.world()
        run = run_clip(world, (explore + loops)[0], config)
        every = world.window.frames_per_latent
        video = np.concatenate([run.real, run.generated], axis=2)[::every]
        path = self.path("eval") / "rollout.gif"
        images = [Image.fromarray(f) for f in video]
        images[0].save(path, save_all=True, append_images=images[1:],
                       duration=round(1000 * every / self.spec.fps), loop=0)  # fmt: skip
        return path

    def _log_session(self, trained: dict, seconds: float) -> None:
        """A training-log row for a call that trained or evaluated (`--only eval` is a call
        of its own beside `--only dit`: its row carries the figures)."""
        evaluated = self.evaluated
        if not trained and evaluated is None:
            return
        figures = evaluated or self.state["stages"].get("ship", {}).get("figures")
        row = {"date": time.strftime("%Y-%m-%d %H:%M"), "seconds": round(seconds),
               "device": _device_name(), "threads": torch.get_num_threads(), "trained": trained,
               "steps": self._version_steps(),
               "evaluated": evaluated is not None, "figures": figures}  # fmt: skip
        self._update(lambda state: state["sessions"].append(row))

    def _version_steps(self) -> dict:
        """The steps of the version this folder trains (the training log's): its runs', and
        where a component has no run here yet, the folder's it continues from."""
        from matrixgame.train.runs import latest_weights

        seed = self.seed_folder("dit")
        config = shipped.read_config(seed) if seed is not None else {}
        run = self.vae_run()
        decoder = _run_decoder_step(run, latest_weights(run, model="vae")[1]) \
            if _has_checkpoint(run) else 0  # fmt: skip
        student = self._student_step()
        return {"vae": self._step("vae"), "decoder": decoder,
                "dit": self._step("dit") or config.get("dit", {}).get("step", 0),
                "student": student if student is not None else
                (config.get("student") or {}).get("step")}  # fmt: skip


class HeldoutStop:
    """Early stopping: after each checkpoint, measure a held-out score (higher is better),
    append it to ``<run>/heldout.jsonl``, and stop after ``patience`` checks without a new
    best. ``score`` returns the score, or a dict of figures with it under ``"score"`` (the
    others are kept beside it: the model card reads their trends); a ``past_noise`` among
    them marks checks of another loss, compared only with each other."""

    def __init__(self, run: Path, patience: int, score) -> None:
        self.path, self.patience, self.score = Path(run) / "heldout.jsonl", patience, score

    def __call__(self, step: int) -> bool:
        scores = self.score()
        figures = {k: float(v) for k, v in scores.items()} if isinstance(scores, dict) else {}
        value = figures.pop("score") if figures else float(scores)
        from matrixgame.worlds.card import measured_as_last

        check = {"step": step, "score": value, **figures}
        history = self.history()
        with open(self.path, "a") as f:
            f.write(json.dumps(check) + "\n")
        scores = [h["score"] for h in measured_as_last([*history, check])]
        best = max(range(len(scores)), key=scores.__getitem__)
        return len(scores) - 1 - best >= self.patience

    def history(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


def vae_heldout_scores(run: Path, data: Path, clips: int = 4, frames: int = 65) -> dict:
    """PSNR (dB, the early-stopping ``score``), SSIM and sharpness ratio of the run's latest
    EMA VAE on the first frames of ``data``'s held-out clips (`eval/autoencoder.py`, as
    `matrixgame eval-vae` reports them)."""
    from matrixgame.eval.autoencoder import reconstruction_scores
    from matrixgame.train.runs import trained_vae

    vae, (height, width) = trained_vae(run)
    scores = reconstruction_scores(vae, data, height, width, clips, frames)
    return {"score": scores["psnr"], "ssim": scores["ssim"], "sharpness": scores["sharpness"]}


@torch.no_grad()
def dit_heldout_scores(run: Path, latents: Path, windows: int = 32,
                       past_noise: float = 0.0) -> dict:  # fmt: skip
    """The run's EMA DiT on windows of a held-out latent cache, at fixed noise levels and
    noise: minus its flow-matching loss (``score``, higher is better) and ``memory_gain``, how
    much the windows' memory latents lower that loss (the loss with them dropped, minus it):
    whether the model has learned to use its memory, which revisits need, long before an
    evaluation can tell. ``past_noise`` > 0: the past noised to that level as the world plays
    (the level is kept with the figures: checks at another level measure another loss)."""
    from matrixgame.data.windows import window_kwargs, without_memory
    from matrixgame.diffusion.flow_matching import NUM_TIMESTEPS, add_noise
    from matrixgame.inference.rollout import noised_past
    from matrixgame.train.latents import LatentClips
    from matrixgame.train.memory_sampling import WindowDataset
    from matrixgame.train.runs import trained_world
    from matrixgame.train.trainer import _collate

    world = trained_world(run)
    data = WindowDataset(LatentClips(latents, split=None), world.window)
    idx = torch.linspace(0, len(data) - 1, min(windows, len(data))).long().tolist()
    g = torch.Generator().manual_seed(0)
    total = without = 0.0
    for i in idx:
        batch = _collate([data[i]])
        current, past = batch["current"], batch["past"]
        sigma = torch.rand(1, generator=g).clamp(0.05, 0.95)
        noise = torch.randn(current.shape, generator=g)
        k, c = past.shape[2], current.shape[2]
        past = noised_past(batch, past_noise, g)["past"]
        t = torch.cat([torch.full((1, k), NUM_TIMESTEPS * past_noise),
                       (NUM_TIMESTEPS * sigma)[:, None].expand(1, c)], 1)  # fmt: skip
        x = torch.cat([past, add_noise(current, sigma, noise)], 2)
        full, bare = (float((world.dit(x, t, None, **window_kwargs(w))[:, :, k:]
                             - (noise - current)).pow(2).mean())
                      for w in (batch, without_memory(batch)))  # fmt: skip
        total, without = total + full, without + bare
    scores = {"score": -total / len(idx), "memory_gain": (without - total) / len(idx)}
    return {**scores, "past_noise": past_noise} if past_noise > 0 else scores


def in_one_step(student, name: str):
    """A distilled student (a :class:`matrixgame.train.runs.World`) sampling in one step
    from pure noise, its first exit (trained too), as ``name``."""
    return in_steps(student, 1, name)


def in_steps(student, steps: int, name: str):
    """A distilled student sampling in its first ``steps`` levels, then exiting: each of its
    steps' outputs is trained (the rollout's gradient goes through a random one), so a
    prefix of its schedule is a sampler it learned, at fewer evaluations per frame."""
    from dataclasses import replace

    levels = student.meta["sampler"]["sigmas"][:-1]
    if not 1 <= steps <= len(levels):
        raise ValueError(f"{student.name} samples in {len(levels)} steps: it can exit after "
                         f"1 to {len(levels)} of them, not {steps}")  # fmt: skip
    sampler = {**student.meta["sampler"], "steps": steps, "sigmas": [*levels[:steps], 0.0]}
    return replace(student, name=name, meta={**student.meta, "sampler": sampler})


def _same_window(a: dict | None, b: dict | None) -> bool:
    """Whether two runs' window configs are one (fields a config leaves out at defaults)."""
    from matrixgame.data.windows import WindowConfig

    try:
        return WindowConfig(**(a or {})) == WindowConfig(**(b or {}))
    except (TypeError, ValueError):
        return False


def _run_config(run: Path) -> dict:
    """The config of a run's latest checkpoint ({} where it has none or it is unreadable)."""
    from matrixgame.train.runs import latest_config

    try:
        return latest_config(run)
    except ValueError:
        return {}


def _free_name(path: Path) -> Path:
    """``path``, or ``path.2``, ``path.3``... : the first that does not exist."""
    n, free = 1, path
    while free.exists():
        n += 1
        free = path.with_name(f"{path.name}.{n}")
    return free


def _has_checkpoint(run: Path) -> bool:
    return (Path(run) / "checkpoints" / "latest").exists()


def _latest_step(run: Path) -> int:
    latest = Path(run) / "checkpoints" / "latest"
    return int(latest.read_text()) if latest.exists() else 0


def _scalars(logs: dict) -> dict:
    return {k: v for k, v in logs.items() if isinstance(v, int | float)}


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    from matrixgame.accel.capability import cpu_capability

    return f"cpu ({cpu_capability()})"


def _shipped_figures(folder: Path) -> dict | None:
    try:
        return shipped.read_config(folder).get("figures")
    except ValueError:
        return None


def _decoder_step(folder: Path) -> int:
    """The adversarial steps of a world folder's decoder (0: the autoencoder's as trained
    jointly). Configs before ``decoder_step`` was written: the VAE's step when it is not
    the encoder's (the first version's decoder had 1,656 steps on a 2,500-step encoder)."""
    config = shipped.read_config(folder)
    if config.get("decoder_step") is not None:
        return int(config["decoder_step"])
    step = int(config["vae"].get("step", 0))
    return step if step != int(config.get("encoder_step", -1)) else 0


def _run_decoder_step(run: Path, config: dict) -> int:
    """The adversarial steps of a VAE run's decoder: the decoder stage's own step, else what
    the run's ``config`` says (a run seeded from a world folder), else 0."""
    if config.get("weights_prefix"):  # the decoder stage's run
        return _latest_step(run)
    return int(config.get("decoder_step") or 0)


def _folder_version(folder: Path) -> tuple[int, str] | None:
    """(version, autoencoder preset) of the world a folder holds (None: none, or unreadable)."""
    try:
        return _version_of(shipped.read_config(folder))
    except (ValueError, KeyError):
        return None


def _version_of(config: dict) -> tuple[int, str]:
    """(version, autoencoder preset) of a world's config.json."""
    return int(config.get("version", UNVERSIONED)), config["vae"]["preset"]


def _seed_run(out: Path, folder: Path, component: str, spec: WorldSpec) -> None:
    """A run folder holding a shipped component as its only checkpoint (model = EMA = the
    shipped weights, a fresh optimizer), so the stages after it read it like a trained run."""
    from matrixgame.train.trainer import TrainConfig, Trainer

    config = shipped.read_config(folder)
    if component != "vae":
        raise ValueError(f"only the VAE is seeded from shipped weights, not {component!r}")
    vae = shipped.build_vae(config)
    vae.load_state_dict(shipped.component_weights(folder, "vae"))
    meta = {"model": "vae", "preset": config["vae"]["preset"], "height": config["height"],
            "width": config["width"], "latent_mean": config["vae"]["latent_mean"],
            "latent_std": config["vae"]["latent_std"], "from_shipped": str(folder),
            "decoder_step": config.get("decoder_step")}  # fmt: skip
    trainer = Trainer(vae, None, [], TrainConfig(out=str(out), steps=1), meta)
    trainer.step = int(config.get("encoder_step", config["vae"].get("step", 0)))
    trainer.save()


def spec_with(name: str, **overrides) -> WorldSpec:
    """A named spec with some fields changed (the CLI's --vae-steps, --dit-steps, ...)."""
    if name not in SPECS:
        raise ValueError(f"unknown world {name!r}; choose from {sorted(SPECS)}")
    spec = replace(SPECS[name], **{k: v for k, v in overrides.items() if v is not None})
    from matrixgame.inference.rollout import Guidance

    Guidance(spec.action_guidance, spec.memory_guidance)  # a bad weight fails here
    return spec
