"""The world recipe (`matrixgame world build`) on the `tiny` spec: it runs end to end, resumes
after a SIGKILL without redoing finished stages, ships a loadable world, and continues from
the shipped weights alone when its work folder is gone."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("vizdoom")

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def build(work: Path, ship: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "matrixgame.cli", "world", "build", "--world", "tiny",
            "--work", str(work), "--ship-to", str(ship), "--workers", "1", *extra]  # fmt: skip


def _mtimes(work: Path) -> dict[str, int]:
    files = [work / "data" / "manifest.json", work / "eval-data" / "manifest.json",
             work / "latents" / "manifest.json",
             *sorted((work / "vae").rglob("*.safetensors"))]  # fmt: skip
    return {str(f.relative_to(work)): f.stat().st_mtime_ns for f in files}


def _checks(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "heldout.jsonl").read_text().splitlines()]


def _logged_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def built(module_tmp):
    """A tiny world built with one SIGKILL in the world-model stage, then resumed."""
    root = module_tmp("world")
    work, ship = root / "work", root / "ship"
    proc = subprocess.Popen(build(work, ship), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV)  # fmt: skip
    latest = work / "dit" / "checkpoints" / "latest"
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if latest.exists():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    before = _mtimes(work)
    dit_step = int(latest.read_text())
    done = subprocess.run(build(work, ship), capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"work": work, "ship": ship, "before": before, "killed_at": dit_step,
            "output": done.stdout}  # fmt: skip


@pytest.mark.slow
def test_resume_after_sigkill_keeps_finished_stages(built):
    work = built["work"]
    assert _mtimes(work) == built["before"]  # record, vae, latents: not redone
    state = json.loads((work / "recipe.json").read_text())
    stages = ("record", "vae", "latents", "dit", "student", "ship")
    assert all(state["stages"][s]["done"] for s in stages)
    assert state["stages"]["dit"]["step"] == 8
    student = state["stages"]["student"]  # cold start 2 + multi-segment 2, from the final DiT
    assert (student["step"], student["teacher_step"]) == (4, 8)
    assert [_logged_steps(work / r)[-1] for r in ("student-cold", "student")] == [2, 2]
    steps = _logged_steps(work / "dit")
    assert steps == sorted(steps) and steps[-1] == 8  # continued, not restarted
    assert (work / "report" / "report.json").exists()
    last = state["sessions"][-1]  # the call that evaluated logs the figures it measured
    assert last["evaluated"] and "psnr" in last["figures"]


@pytest.mark.slow
def test_the_shipped_world_loads_decodes_and_rolls_out(built):
    from matrixgame.data.shards import Manifest, read_clip
    from matrixgame.inference.rollout import decode_frames, rollout
    from matrixgame.train.latents import latent_clip
    from matrixgame.worlds import load

    ship = built["ship"]
    for name in ("vae.safetensors", "dit.safetensors", "config.json", "README.md"):
        assert (ship / name).exists(), name
    world = load(ship)
    assert (world.height, world.width) == (32, 48)
    data = built["work"] / "eval-data"
    name = sorted(Manifest.load(data).shards)[0]
    clip = latent_clip(world.vae, read_clip(data / name), world.height, world.width, 41)
    ctx = world.window.past + 1
    out = rollout(world.dit, clip, ctx, ctx + 1, world.window, world.height, world.width)
    frames = decode_frames(world.vae, out.latents)
    assert world.window.frames_per_latent == 2  # the doom-2x autoencoder
    assert frames.shape == (1 + 2 * ctx, 32, 48, 3) and frames.dtype.name == "uint8"
    card = (ship / "README.md").read_text()
    assert "Training log" in card and "| tiny" not in card  # rows name the device, not the spec
    assert "evaluated |" in card
    assert (
        "2 euler steps, shift 3.0, classifier-free guidance 2 on the actions, the past "
        "latents noised to level 0.35 (trained with noise on its past); a window whose memory "
        "sees its view better than its last past latent does is generated from memory alone."
    ) in card
    config = json.loads((ship / "config.json").read_text())
    assert config["sampler"]["past_noise"] == config["student"]["sampler"]["past_noise"] == 0.35
    assert config["dit"]["step"] == 8 and "psnr" in config["figures"]
    # every run's held-out checks ship, for the card's predictions (the autoencoder's with
    # SSIM and sharpness beside PSNR)
    curves = config["curves"]
    assert set(curves) == {"vae", "decoder", "dit"}
    dit_steps = [c["step"] for c in curves["dit"]]
    assert dit_steps == sorted(set(dit_steps)) and dit_steps[-1] == 8
    assert [c["step"] for c in curves["vae"]][-1] == 6
    assert {"score", "ssim", "sharpness"} <= set(curves["vae"][-1])
    assert {"score", "memory_gain"} <= set(curves["dit"][-1])  # and what its memory is worth


def test_the_world_models_heldout_check_measures_what_its_memory_is_worth(built, monkeypatch):
    import matrixgame.train.runs as runs
    from matrixgame.worlds.recipe import dit_heldout_scores

    work = built["work"]
    run, heldout = work / "dit", work / "eval-latents"
    scores = dit_heldout_scores(run, heldout, windows=4)
    assert set(scores) == {"score", "memory_gain"} and scores["memory_gain"] != 0.0
    assert dit_heldout_scores(run, heldout, windows=4) == scores  # fixed noise: repeatable
    trained = runs.trained_world

    def blind(*args, **kwargs):  # the same world model with its memory latents never seen
        world = trained(*args, **kwargs)
        forward = world.dit.forward
        keys = ("memory", "memory_index", "keyboard_memory", "mouse_memory")

        def without(x, t, context, plucker, **kw):
            if kw.get("memory") is not None:  # its camera rays (and RoPE offsets) go with it
                m = kw["memory"].shape[2]
                plucker = plucker[:, :, m:]
                if kw.get("rope_offset") is not None:
                    kw["rope_offset"] = kw["rope_offset"][:, m:]
            return forward(x, t, context, plucker=plucker,
                           **{k: v for k, v in kw.items() if k not in keys})  # fmt: skip

        world.dit.forward = without
        return world

    monkeypatch.setattr(runs, "trained_world", blind)
    blind_scores = dit_heldout_scores(run, heldout, windows=4)
    assert blind_scores["memory_gain"] == 0.0
    assert blind_scores["score"] != scores["score"]
    # as the world plays with noise on its past: another loss, and the level kept with it
    monkeypatch.setattr(runs, "trained_world", trained)
    noised = dit_heldout_scores(run, heldout, windows=4, past_noise=0.35)
    assert noised["past_noise"] == 0.35 and noised["score"] != scores["score"]
    assert dit_heldout_scores(run, heldout, windows=4, past_noise=0.35) == noised


@pytest.mark.slow
def test_the_shipped_light_decoder_decodes_the_same_latents_with_a_quarter_of_the_channels(
    built,
):
    from matrixgame.worlds import load
    from matrixgame.worlds.shipped import has_light

    ship = built["ship"]
    assert has_light(ship)
    light, full = load(ship, light=True), load(ship)
    config = json.loads((ship / "config.json").read_text())["light"]
    assert config["pruning_rate"] == 0.75 and config["step"] == 2
    assert {"psnr", "ssim", "sharpness", "full_psnr", "full_ssim", "full_sharpness"} <= set(
        config["figures"]
    )
    assert light.vae.config.pruning_rate == 0.75

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(light.vae.decoder) < count(full.vae.decoder) / 4  # widths / 4: ~1/16
    assert torch.equal(light.vae.encoder.conv1.weight, full.vae.encoder.conv1.weight)
    assert torch.equal(light.dit.patch_embedding.weight, full.dit.patch_embedding.weight)
    z = torch.randn(1, light.vae.config.z_dim, 2, 4, 6)
    with torch.no_grad():
        assert light.vae.decode(z).shape == full.vae.decode(z).shape == (1, 3, 3, 32, 48)
    card = (ship / "README.md").read_text()
    assert "**Light decoder**" in card
    assert f"SSIM {config['figures']['ssim']:.3f} against" in card


@pytest.mark.slow
def test_the_shipped_student_loads_with_its_sampler_and_steps_a_session(built):
    from matrixgame.inference.session import WorldSession
    from matrixgame.worlds import load
    from matrixgame.worlds.shipped import has_student, load_starts

    ship = built["ship"]
    assert has_student(ship)
    student, teacher = load(ship, student=True), load(ship)
    assert student.name == "tiny student" and student.step == 4
    sampler = student.meta["sampler"]
    assert sampler["distilled"] and sampler["steps"] == 3 and len(sampler["sigmas"]) == 4
    # both play revisits from memory alone, at the recipe's margin
    assert sampler["revisit_margin"] == teacher.meta["sampler"]["revisit_margin"] == 0.0
    assert WorldSession(student).revisit_margin == 0.0
    assert not torch.equal(student.dit.blocks[0].self_attn.q.weight,
                           teacher.dit.blocks[0].self_attn.q.weight)  # fmt: skip
    session = WorldSession(student)
    assert session.sigmas is not None and len(session.sigmas) == 4  # its own schedule
    session.reset(load_starts(ship)[0])
    n = session.frames_per_step
    segment = session.step(torch.zeros(n, 6), torch.zeros(n, 2))
    assert segment.frames.shape == (n, 32, 48, 3)
    config = json.loads((ship / "config.json").read_text())
    assert config["student"]["teacher_step"] == 8 and "psnr" in config["student"]["figures"]
    # also evaluated in one step (its first exit), a figure of its own
    one, three = config["student"]["figures_1_step"], config["student"]["figures"]
    assert "psnr" in one and one["psnr"] != three["psnr"]
    # and its cold start alone (the multi-segment stage continued it), evaluated beside it
    cold = config["student"]["cold_start"]
    assert cold["step"] == 2 and "psnr" in cold["figures"]
    card = (ship / "README.md").read_text()
    assert "## The few-step student" in card and "In one step" in card
    # `matrixgame eval` opens it as FOLDER:student (teacher vs student in one report)
    from matrixgame.worlds.shipped import open_world

    opened = open_world(f"{ship}:student")
    assert opened.name == "tiny student" and opened.meta["sampler"] == sampler
    assert torch.equal(opened.dit.blocks[0].self_attn.q.weight,
                       student.dit.blocks[0].self_attn.q.weight)  # fmt: skip


def test_a_student_exits_after_a_prefix_of_its_steps_and_no_more_than_it_has(built):
    from matrixgame.inference.session import WorldSession
    from matrixgame.worlds import load
    from matrixgame.worlds.recipe import in_one_step, in_steps

    student = load(built["ship"], student=True)
    levels = student.meta["sampler"]["sigmas"]
    two = in_steps(student, 2, "two")
    assert two.meta["sampler"]["sigmas"] == [*levels[:2], 0.0] and two.meta["sampler"]["steps"] == 2
    assert two.dit is student.dit and student.meta["sampler"]["sigmas"] == levels  # untouched
    assert WorldSession(two).sigmas.tolist() == [*levels[:2], 0.0]  # the session samples so
    assert in_one_step(student, "one").meta["sampler"]["sigmas"] == [levels[0], 0.0]
    assert in_steps(student, 3, "all").meta["sampler"]["sigmas"] == levels
    for steps in (0, 4):
        with pytest.raises(ValueError, match="can exit after 1 to 3 of them, not"):
            in_steps(student, steps, "bad")


def test_a_student_is_refused_where_none_ships_and_a_bad_schedule_named(built, tmp_path):
    import shutil

    from matrixgame.worlds import load
    from matrixgame.worlds.shipped import read_config

    folder = tmp_path / "w"
    shutil.copytree(built["ship"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["student"]["sampler"]["sigmas"] = [1.0, 0.2, 0.5, 0.0]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"student\.sampler\.sigmas must be"):
        read_config(folder)
    del config["student"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="ships no student"):
        load(folder, student=True)


@pytest.mark.slow
def test_a_fresh_work_folder_continues_from_the_shipped_weights(built, tmp_path):
    from matrixgame.train.runs import latest_weights
    from matrixgame.worlds.recipe import WorldSpec
    from matrixgame.worlds.shipped import component_weights, load_world

    work, ship = tmp_path / "fresh", tmp_path / "ship"
    shutil.copytree(built["ship"], ship)
    assert json.loads((ship / "config.json").read_text())["student"]["step"] == 4  # 2 + 2
    more = ("--dit-steps", "10", "--decoder-steps", "6", "--student-multi-steps", "4",
            "--light-steps", "3", "--until", "student")  # fmt: skip
    done = subprocess.run(build(work, ship, *more), capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((work / "recipe.json").read_text())
    assert state["stages"]["vae"].get("from_shipped") is True
    assert _logged_steps(work / "light") == [3]  # the shipped light decoder (2) continued
    light_run = latest_weights(work / "light", model="vae")[1]  # its cosine, as the recipe's
    assert light_run["train"]["final_lr"] == WorldSpec().light_final_lr < 1
    steps = _logged_steps(work / "dit")
    assert steps[0] > 8 and steps[-1] == 10  # counted on from the shipped step
    dit_run = latest_weights(work / "dit", model="dit")[1]  # its cooldown, as the recipe's
    spec = WorldSpec()
    assert (dit_run["train"]["final_lr"], dit_run["train"]["decay_steps"]) == (
        spec.dit_final_lr, spec.dit_decay_steps)  # fmt: skip
    decoder = _logged_steps(work / "decoder")
    shipped_decoder = json.loads((ship / "config.json").read_text())["vae"]["step"]
    assert decoder[0] > shipped_decoder and decoder[-1] == 6
    # the shipped student continues past its cold start (no cold start run here)
    assert _logged_steps(work / "student") == [3, 4] and not (work / "student-cold").exists()
    # not better than the shipped world yet (not evaluated): kept beside it (its student with
    # the critic, which never ships), a world that loads, and the next fresh work folder
    # continues it rather than the shipped steps
    kept = ship / "next"
    config = json.loads((kept / "config.json").read_text())
    assert config["dit"]["step"] == 10 and config["student"]["step"] == 6
    # the training log goes on where the shipped world's left off (it survives a fresh clone)
    shipped_log = json.loads((ship / "config.json").read_text())["training_log"]
    assert shipped_log and shipped_log == built_log(built)
    assert config["training_log"][: len(shipped_log)] == shipped_log
    assert config["training_log"][-1]["trained"]["dit"] == 10
    shipped_curve = json.loads((ship / "config.json").read_text())["curves"]["dit"]
    assert config["curves"]["dit"] == [*shipped_curve, *_checks(work / "dit")]  # continued
    assert [c["step"] for c in config["curves"]["dit"]][-2:] == [8, 10]
    assert (kept / "critic.safetensors").exists() and not (ship / "critic.safetensors").exists()
    assert config["light"]["step"] == 3 and config["light"]["decoder_step"] == 6
    # distilled from a decoder that moved on (6 steps, 4 shipped): not shipped beside it
    assert json.loads((ship / "config.json").read_text())["light"]["step"] == 2
    light = [component_weights(f, "light") for f in (kept, ship)]
    assert light[0].keys() == light[1].keys()
    assert not all(torch.equal(light[0][k], light[1][k]) for k in light[0])
    assert load_world(kept).step == 10 and load_world(kept, student=True).step == 6
    more = ("--dit-steps", "10", "--decoder-steps", "6", "--student-multi-steps", "5",
            "--until", "student")  # fmt: skip
    done = subprocess.run(build(work, ship, *more), capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]  # the same folder: its own run resumes
    assert _logged_steps(work / "student") == [3, 4, 5] and not (work / "student-cold").exists()
    again = tmp_path / "again"
    more = ("--dit-steps", "12", "--decoder-steps", "6", "--student-multi-steps", "6",
            "--light-steps", "4", "--until", "student")  # fmt: skip
    done = subprocess.run(build(again, ship, *more), capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = _logged_steps(again / "dit")
    assert steps[0] > 10 and steps[-1] == 12
    assert _logged_steps(again / "student") == [6]
    assert _logged_steps(again / "light") == [4]  # the kept one (3) continued
    config = json.loads((kept / "config.json").read_text())
    assert config["dit"]["step"] == 12 and config["student"]["step"] == 8
    log = config["training_log"]  # the kept log, continued by a third work folder
    assert len(log) == len(shipped_log) + 3 and log[-1]["trained"]["dit"] == 12


@pytest.mark.slow
def test_a_new_version_starts_its_world_model_from_the_shipped_one_carried_onto_its_latents(
    built, tmp_path, monkeypatch
):
    from dataclasses import replace

    from matrixgame.train import jobs
    from matrixgame.worlds.recipe import Recipe, spec_with
    from matrixgame.worlds.shipped import component_weights

    work, ship = tmp_path / "work", tmp_path / "ship"
    shutil.copytree(built["ship"], ship)
    for part in ("data", "eval-data", "vae", "latents", "eval-latents"):
        shutil.copytree(built["work"] / part, work / part)
    spec = spec_with("tiny")
    spec = replace(spec, version=spec.version + 1)  # the shipped world is of the version before
    state = json.loads((built["work"] / "recipe.json").read_text())
    state["spec"]["version"] = spec.version
    state["stages"] = {k: state["stages"][k] for k in ("record", "vae", "latents")}
    (work / "recipe.json").write_text(json.dumps(state))
    started = []
    train_dit = jobs.train_dit
    monkeypatch.setattr(
        jobs, "train_dit", lambda job, *a: started.append(job) or train_dit(job, *a)
    )
    recipe = Recipe(spec, work, ship_to=ship, workers=1, progress=lambda _: None)
    recipe.run(only="dit")
    carried = json.loads((work / "dit-carried" / "carried.json").read_text())
    assert carried["version"] == spec.version - 1 and carried["step"] == 8
    assert recipe.state["stages"]["dit"]["carried_from"] == carried
    (job,) = started
    assert job.init == str(work / "dit-carried" / "dit.safetensors") and job.start_step == 0
    assert _logged_steps(work / "dit")[-1] == 8  # counted from 0: a new world model
    # the shipped autoencoder's encoder is this build's (only its decoder was fine-tuned): the
    # rotation found is the identity, and the carried weights are the shipped ones
    assert carried["explained"] > 0.99
    start, before = component_weights(work / "dit-carried", "dit"), component_weights(ship, "dit")
    assert start.keys() == before.keys()
    for k in before:
        torch.testing.assert_close(start[k].float(), before[k].float(), atol=2e-3, rtol=2e-2)
    # evaluated beside the shipped world and not better: the shipped folder is left as it is
    # (its card and training log are another version's); the evaluation's row is kept in next/
    from matrixgame.worlds import card

    shutil.copytree(built["work"] / "idm", work / "idm")
    recipe.run(only="idm")
    recipe.run(only="eval")
    figures = card.figures_of
    monkeypatch.setattr(card, "figures_of", lambda report, name: {"psnr": 10.0} if name ==
                        spec.name else {**figures(report, name), "psnr": 20.0})  # fmt: skip
    shipped = {f: (ship / f).read_bytes() for f in ("config.json", "README.md")}
    recipe.run(only="ship")
    assert recipe.state["stages"]["ship"]["shipped"] is False
    assert {f: (ship / f).read_bytes() for f in shipped} == shipped
    log = json.loads((ship / "next" / "config.json").read_text())["training_log"]
    assert log[-1]["evaluated"] and log[-1]["steps"]["dit"] == 8


@pytest.mark.slow
def test_from_shipped_a_new_student_of_the_shipped_world_model_ships_alone_when_better(
    built, tmp_path
):
    """--from shipped: a fresh work folder starts from the shipped weights although a kept
    version exists; its new student of the shipped world model is evaluated beside the
    shipped student on the same clips and ships alone when it beats it (the world model,
    the same weights, is never re-shipped on figures of other clips)."""
    from matrixgame.worlds.card import figures_of, improves

    work, ship = tmp_path / "fresh", tmp_path / "ship"
    shutil.copytree(built["ship"], ship)
    shutil.copytree(built["ship"], ship / "next")
    config = json.loads((ship / "next/config.json").read_text())
    config["dit"]["step"] = 99  # a kept version in training that --from shipped passes by
    (ship / "next/config.json").write_text(json.dumps(config))
    shipped_step = json.loads((ship / "config.json").read_text())["dit"]["step"]
    more = ("--from", "shipped", "--dit-steps", str(shipped_step), "--student-multi-steps", "4")
    done = subprocess.run(build(work, ship, *more), capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((work / "recipe.json").read_text())
    assert state["stages"]["dit"]["step"] == shipped_step  # seeded at its step, not next/'s
    assert _logged_steps(work / "student") == [3, 4]  # the shipped student (2 + 2) went on
    report = json.loads((work / "report" / "report.json").read_text())
    new, old = figures_of(report, "tiny student"), figures_of(report, "tiny student (shipped)")
    methods = report["fidelity"]["methods"]
    assert "psnr" in new and "psnr" in old and "tiny (shipped)" not in methods
    ship_state = state["stages"]["ship"]
    assert ship_state["shipped"] is False  # the same world model
    assert ship_state["student_shipped"] == improves(new, old)
    config = json.loads((ship / "config.json").read_text())
    assert config["dit"]["step"] == shipped_step
    assert config["student"]["step"] == (6 if ship_state["student_shipped"] else 4)
    if ship_state["student_shipped"]:
        assert config["student"]["figures"]["psnr"] == new["psnr"] and not (ship / "next").exists()
    else:  # kept: this call's version (the shipped world model, the new student)
        assert json.loads((ship / "next/config.json").read_text())["dit"]["step"] == shipped_step


def built_log(built) -> list[dict]:
    """The training log of the fixture's build (its recipe.json's rows)."""
    return json.loads((built["work"] / "recipe.json").read_text())["sessions"]


@pytest.mark.slow
def test_a_light_decoder_of_the_shipped_decoder_ships_beside_it_at_once(built, tmp_path):
    from matrixgame.worlds import load

    work, ship = tmp_path / "fresh", tmp_path / "ship"
    shutil.copytree(built["ship"], ship, ignore=shutil.ignore_patterns("next"))
    (ship / "light.safetensors").unlink()
    config = json.loads((ship / "config.json").read_text())
    del config["light"]
    (ship / "config.json").write_text(json.dumps(config))
    before = {p.name: p.read_bytes() for p in ship.glob("*.safetensors")}
    more = ("--until", "light", "--light-steps", "3")
    done = subprocess.run(build(work, ship, *more), capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _logged_steps(work / "light")[-1] == 3
    shipped = json.loads((ship / "config.json").read_text())
    assert shipped["light"]["step"] == 3 and shipped["light"]["decoder_step"] == 4
    assert {k: v for k, v in shipped.items() if k not in ("light", "training_log")} == \
        {k: v for k, v in config.items() if k != "training_log"}  # fmt: skip
    row = shipped["training_log"][-1]
    assert row["trained"] == {"light": 3}  # the steps of the version it continues:
    assert row["steps"] == {"vae": 6, "decoder": 4, "dit": 8, "student": 4}
    assert all((ship / n).read_bytes() == b for n, b in before.items())  # nothing else moved
    assert load(ship, light=True).vae.config.pruning_rate == 0.75
    assert "**Light decoder**" in (ship / "README.md").read_text()


def test_the_decoder_continues_a_folders_fine_tuning_only_where_it_had_some(tmp_path):
    """A fresh work folder's decoder stage counts on from a kept or shipped decoder's
    adversarial steps; a kept autoencoder never fine-tuned starts its decoder at step 0 (not
    at the encoder's step, which would mark the stage done before it trained)."""
    from helpers import make_world_folder
    from matrixgame.worlds.recipe import _decoder_step

    folder = make_world_folder(tmp_path / "w")
    path = folder / "config.json"
    for extra, step in (({"encoder_step": 6000}, 6000), ({"encoder_step": 2500}, 1656),
                        ({"encoder_step": 6000, "decoder_step": 0}, 6000),
                        ({"encoder_step": 2500, "decoder_step": 1656}, 1656)):  # fmt: skip
        config = json.loads(path.read_text())
        config.pop("decoder_step", None)
        config["vae"]["step"] = step
        path.write_text(json.dumps({**config, **extra}))
        expected = 0 if step == extra["encoder_step"] else 1656
        assert _decoder_step(folder) == expected, extra


def test_the_autoencoders_step_means_the_same_in_a_work_folder_seeded_from_the_world(
    built, tmp_path
):
    """On a fresh machine the autoencoder's run is seeded from the shipped world and the
    decoder stage's run is not rebuilt: the world's ``vae.step`` is still its decoder's steps
    (it used to read the seeded run's encoder steps), so the shipped world is still this one."""
    from matrixgame.worlds import shipped
    from matrixgame.worlds.recipe import Recipe, _seed_run, spec_with

    work, ship = tmp_path / "work", tmp_path / "ship"
    shutil.copytree(built["work"], work)
    shutil.copytree(built["ship"], ship)
    recipe = Recipe(spec_with("tiny"), work, ship_to=ship)
    config = shipped.read_config(ship)
    assert config["decoder_step"] != config["encoder_step"]
    assert recipe._vae_step() == config["vae"]["step"] == config["decoder_step"]
    assert recipe._ships_current()
    for run in ("vae", "decoder"):
        shutil.rmtree(work / run)
    _seed_run(work / "vae", ship, "vae", recipe.spec)
    assert recipe.vae_run() == work / "vae"
    assert recipe._vae_step() == config["vae"]["step"]
    assert recipe._ships_current()


@pytest.mark.parametrize("older", ["preset", "version"])
def test_a_new_version_shipped_over_an_old_one_leaves_none_of_its_weights(built, tmp_path, older):
    """An autoencoder without adversarial fine-tuning exported over another version's world
    (another autoencoder preset, or an older `version` of the recipe): that version's
    discriminator goes, and config and card say the decoder was not tuned."""
    from matrixgame.worlds.card import _summary
    from matrixgame.worlds.recipe import Recipe, spec_with

    work, folder = tmp_path / "work", tmp_path / "old"
    shutil.copytree(built["work"], work, ignore=shutil.ignore_patterns("decoder"))
    shutil.copytree(built["ship"], folder)
    config = json.loads((folder / "config.json").read_text())
    if older == "preset":
        config["vae"]["preset"] = "doom"  # an older version's world
    else:
        del config["version"]  # a world from before versions were written: an older one
    (folder / "config.json").write_text(json.dumps(config))
    assert (folder / "discriminator.safetensors").exists()
    recipe = Recipe(spec_with("tiny"), work, ship_to=folder, progress=lambda _: None)
    recipe.export({}, folder=folder)
    assert not (folder / "discriminator.safetensors").exists()
    config = json.loads((folder / "config.json").read_text())
    assert config["vae"]["preset"] == "doom-2x" and config["decoder_step"] == 0
    assert config["version"] == spec_with("tiny").version
    summary = "\n".join(_summary(config, {}))
    assert f"**Version**: {spec_with('tiny').version} (the recipe's" in summary
    assert "no adversarial decoder fine-tuning yet" in summary and "discriminator" not in summary
    recipe.export({}, folder=tmp_path / "new")  # the same version's folder keeps its own
    shutil.copy(built["ship"] / "discriminator.safetensors", tmp_path / "new")
    recipe.export({}, folder=tmp_path / "new")
    assert (tmp_path / "new" / "discriminator.safetensors").exists()


def test_a_new_sampler_is_a_new_version_and_keeps_the_student_of_the_same_world_model(
    built, tmp_path
):
    """Guidance changed in the recipe (the same weights): the shipped world is no longer the
    current version (so it is evaluated beside it); shipping it writes the new sampler and
    keeps the folder's student, a student of this very world model."""
    from matrixgame.worlds.recipe import Recipe, spec_with
    from matrixgame.worlds.shipped import load_world

    work, folder = tmp_path / "work", tmp_path / "ship"
    shutil.copytree(built["work"], work, ignore=shutil.ignore_patterns("student*"))
    shutil.copytree(built["ship"], folder)
    before = json.loads((folder / "config.json").read_text())
    assert before["sampler"]["guidance"] == {"actions": 2.0, "memory": 1.0}  # the recipe's
    assert before["student"]["teacher_step"] == before["dit"]["step"]
    same = Recipe(spec_with("tiny"), work, ship_to=folder, progress=lambda _: None)
    assert same._ships_current() and same.shipped_world() is None
    recipe = Recipe(spec_with("tiny", action_guidance=2.0, memory_guidance=1.5), work,
                    ship_to=folder, progress=lambda _: None)  # fmt: skip
    assert not recipe._ships_current() and recipe.shipped_world() is not None
    assert recipe.world().meta["sampler"]["guidance"] == {"actions": 2.0, "memory": 1.5}
    recipe.export({}, folder=folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["sampler"]["guidance"] == {"actions": 2.0, "memory": 1.5}
    assert config["student"] == before["student"] and recipe._ships_current()
    assert load_world(folder, student=True).dit is not None
    with pytest.raises(ValueError, match="actions guidance"):
        spec_with("tiny", action_guidance=-1.0)


def test_no_multi_segment_steps_ship_the_cold_start_alone(built, tmp_path):
    """--student-multi-steps 0: the student stage trains no multi-segment run, the cold start
    is the student, and the card says so."""
    from matrixgame.worlds.card import write_card
    from matrixgame.worlds.recipe import Recipe, spec_with

    work, folder = tmp_path / "work", tmp_path / "ship"
    shutil.copytree(built["work"], work, ignore=shutil.ignore_patterns("student"))
    recipe = Recipe(spec_with("tiny", student_multi_steps=0), work, ship_to=folder,
                    progress=lambda _: None)  # fmt: skip
    assert recipe.student_run() == recipe.cold_run and recipe._student_step() == 2
    probe = recipe.student_world(None, recipe.cold_run, "probe")  # another run, played alike
    assert probe.name == "probe" and recipe.spec.play_revisit_margin is not None
    assert probe.meta["sampler"]["revisit_margin"] == recipe.spec.play_revisit_margin
    assert recipe.stage_student() is None and not (work / "student").exists()
    assert recipe.state["stages"]["student"]["done"] and recipe._student_step() == 2
    recipe.export({}, {"psnr": 1.0}, folder=folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["student"]["cold_start_only"] and config["student"]["guidance"] == 4.0
    write_card(folder, recipe.state, {"fidelity": {"methods": {}}}, None, None)
    card = (folder / "README.md").read_text()
    assert "(a cold start on recorded pasts; its last run with DMD" in card
    assert "world model guided 4 on the actions" in card


def test_a_student_of_a_world_model_under_another_window_is_not_kept_with_it(built, tmp_path):
    """The world model continued with camera-aligned RoPE switched: its student, distilled
    under the grids it had before, no longer fits it, so the kept folder leaves it out (and
    says so) while the world model's config carries the new window."""
    from matrixgame.worlds.recipe import Recipe, spec_with
    from matrixgame.worlds.shipped import load_world

    work, folder = tmp_path / "work", tmp_path / "kept"
    shutil.copytree(built["work"], work)
    switched = _switch_camera_rope(work)
    said = []
    recipe = Recipe(spec_with("tiny"), work, ship_to=tmp_path / "ship", progress=said.append)
    assert recipe.student_run() is not None
    recipe.export({}, folder=folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["window"]["camera_rope"] == switched and "student" not in config
    assert not (folder / "student.safetensors").exists()
    assert any("another window" in line for line in said)
    assert load_world(folder).window.camera_rope == switched


def _switch_camera_rope(work: Path) -> bool:
    """Flip camera-aligned RoPE in the world-model run's latest config; the new setting."""
    dit_ckpt = work / "dit" / "checkpoints"
    config_path = dit_ckpt / (dit_ckpt / "latest").read_text().strip() / "config.json"
    run_config = json.loads(config_path.read_text())
    switched = not run_config["window"].get("camera_rope", False)
    run_config["window"]["camera_rope"] = switched
    config_path.write_text(json.dumps(run_config))
    return switched


def test_the_student_is_distilled_anew_when_its_run_is_gone_or_of_another_window(built, tmp_path):
    """A student stage marked done is redone (not skipped) once its runs no longer fit the
    world model: distilled under another window they are set aside, not deleted; removed,
    they are distilled again."""
    from matrixgame.train.runs import latest_weights
    from matrixgame.worlds.recipe import Recipe, spec_with

    work = tmp_path / "work"
    shutil.copytree(built["work"], work)
    switched = _switch_camera_rope(work)
    said = []
    recipe = Recipe(spec_with("tiny"), work, ship_to=tmp_path / "ship", progress=said.append)
    assert recipe.done("student") and recipe._stale("student")
    recipe.run(only="student")
    assert all((work / f"{run}.other-window").exists() for run in ("student-cold", "student"))
    assert any("moved to student-cold.other-window/" in line for line in said)
    assert [_logged_steps(work / run) for run in ("student-cold", "student")] == [[1, 2]] * 2
    assert latest_weights(work / "student", model="dmd")[1]["window"]["camera_rope"] == switched
    assert recipe.done("student") and not recipe._stale("student")
    for run in ("student-cold", "student"):  # removed (and none kept to continue from)
        shutil.rmtree(work / run)
    again = Recipe(spec_with("tiny"), work, ship_to=tmp_path / "ship", progress=said.append)
    (again.kept / "student.safetensors").unlink()
    assert again._stale("student")
    again.run(only="student")
    assert [_logged_steps(work / run) for run in ("student-cold", "student")] == [[1, 2]] * 2
    assert not (work / "student.other-window.2").exists()  # nothing of this window set aside


@pytest.mark.slow
def test_the_student_follows_its_world_model_once_that_trained_on(built, tmp_path):
    """A finished student is continued against its world model once that has trained the
    follow gap past the step the student last trained against; not before, and only once."""
    from matrixgame.worlds.recipe import Recipe, spec_with

    work = tmp_path / "work"
    shutil.copytree(built["work"], work)
    said = []

    def recipe(dit_steps: int) -> Recipe:
        spec = spec_with("tiny", dit_steps=dit_steps, student_follow_gap=2,
                         student_follow_steps=3)  # fmt: skip
        return Recipe(spec, work, ship_to=tmp_path / "ship", progress=said.append)

    first = recipe(9)
    teacher = first.state["stages"]["student"]["teacher_step"]
    assert teacher == 8 and first.done("student") and not first._stale("student")
    first.run(only="dit")  # one step on: under the gap
    assert not first._stale("student")
    first.run(only="student")  # asked for: nothing to do, the student keeps its teacher
    assert _logged_steps(work / "student") == [1, 2]
    assert first.state["stages"]["student"]["teacher_step"] == 8
    again = recipe(10)
    again.run(only="dit")
    assert again._stale("student")
    again.run(only="student")
    assert _logged_steps(work / "student") == [1, 2, 3, 4, 5]  # 3 more, from the multi run's 2
    assert any("trained on from step 8 to 10: 3 more" in line for line in said)
    info = again.state["stages"]["student"]
    assert info["teacher_step"] == 10 and info["done"] and info["multi_target"] == 5
    assert again.done("student") and not again._stale("student")
    again.run(only="student")  # followed: not again
    assert _logged_steps(work / "student") == [1, 2, 3, 4, 5]


def test_a_student_distilled_for_another_noise_on_the_past_is_distilled_anew(built, tmp_path):
    """The world now plays with another noise level on its past: the student, distilled
    seeing the past at the old level, is set aside and distilled at the new one, which its
    sampler then plays with; a shipped student of the old level does not seed it."""
    from matrixgame.train.runs import latest_weights
    from matrixgame.worlds.recipe import Recipe, spec_with

    work = tmp_path / "work"
    shutil.copytree(built["work"], work)
    spec = spec_with("tiny", play_past_noise=0.2)
    assert spec.sampler["past_noise"] == 0.2
    said = []
    recipe = Recipe(spec, work, ship_to=tmp_path / "ship", progress=said.append)
    assert recipe.done("student") and recipe._stale("student")
    assert not recipe._holds(recipe.kept, "student")  # kept at the old level: no seed
    assert not recipe._stale("eval")
    recipe.run(only="student")
    assert recipe._stale("eval")  # the same step count, another student: evaluated anew
    assert all((work / f"{run}.other-past-noise").exists() for run in ("student-cold", "student"))
    assert any("noise level 0.35" in line and "plays at 0.2" in line for line in said)
    meta = latest_weights(work / "student", model="dmd")[1]
    assert meta["job"]["past_noise"] == 0.2 and meta["sampler"]["past_noise"] == 0.2
    assert recipe.done("student") and not recipe._stale("student")
    with pytest.raises(ValueError, match="play_past_noise"):
        spec_with("tiny", dit_past_noise=0.2, play_past_noise=0.3)


def test_a_kept_student_past_its_cold_start_is_distilled_anew_without_a_multi_stage(
    built, tmp_path
):
    """A fresh work folder under a cold-start-only recipe whose kept folder holds a student
    past its cold start with multi-segment training: nothing could continue or hold that
    student here, so the stage distils one anew from the world model (it did nothing, and
    evaluated no student)."""
    from matrixgame.worlds.recipe import Recipe, spec_with

    work, ship = tmp_path / "work", tmp_path / "ship"
    shutil.copytree(built["work"], work)
    shutil.copytree(built["ship"], ship)
    for run in ("student-cold", "student"):
        shutil.rmtree(work / run)
    said = []
    recipe = Recipe(spec_with("tiny", student_multi_steps=0), work, ship_to=ship,
                    progress=said.append)  # fmt: skip
    assert recipe.seed_folder("student") is not None and recipe._stale("student")
    recipe.run(only="student")
    assert any("distilling anew" in line for line in said)
    assert _logged_steps(work / "student-cold") == [1, 2] and recipe.student_run() is not None
    assert recipe.done("student") and not recipe._stale("student")


def test_a_kept_cold_start_of_the_world_model_is_kept_not_distilled_anew(built, tmp_path):
    """A fresh work folder whose kept folder holds a cold-start student of the very world
    model it continues, under a cold-start-only recipe: that student becomes the cold-start
    run at its step (weights equal, nothing trained), so the evaluation sees it; a kept
    student of an earlier world model is distilled anew."""
    from safetensors.torch import load_file

    from matrixgame.train.runs import latest_weights, sub_state
    from matrixgame.worlds.recipe import Recipe, spec_with

    spec = spec_with("tiny", student_multi_steps=0)
    first, ship = tmp_path / "first", tmp_path / "ship"
    shutil.copytree(built["work"], first, ignore=shutil.ignore_patterns("student"))
    shutil.copytree(built["ship"], ship)
    keeper = Recipe(spec, first, ship_to=ship, progress=lambda _: None)
    keeper.export({}, {"psnr": 1.0}, folder=keeper.kept)
    kept = json.loads((keeper.kept / "config.json").read_text())["student"]
    assert kept["cold_start_only"] and (kept["step"], kept["teacher_step"]) == (2, 8)

    work = tmp_path / "work"
    shutil.copytree(built["work"], work, ignore=shutil.ignore_patterns("student*"))
    said = []
    recipe = Recipe(spec, work, ship_to=ship, progress=said.append)
    assert recipe.student_run() is None and recipe._stale("student")
    rows = len(recipe.state["sessions"])
    recipe.run(only="student")
    assert any("kept as it is" in line for line in said)
    assert recipe.student_run() == recipe.cold_run and recipe._student_step() == 2
    assert not (recipe.cold_run / "log.jsonl").exists()  # not a step trained
    student = recipe.state["stages"]["student"]
    assert student["done"] and (student["step"], student["teacher_step"]) == (2, 8)
    assert "student" not in recipe.trained and len(recipe.state["sessions"]) == rows
    assert recipe._student_key() is not None and not recipe._stale("student")
    weights = sub_state(latest_weights(recipe.cold_run, model="dmd")[0], "student.")
    expected = load_file(keeper.kept / "student.safetensors")
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k].float(), expected[k].float()) for k in expected)

    config = json.loads((keeper.kept / "config.json").read_text())
    config["student"]["teacher_step"] = 6  # a student of an earlier world model
    (keeper.kept / "config.json").write_text(json.dumps(config))
    shutil.rmtree(work / "student-cold")
    again = Recipe(spec, work, ship_to=ship, progress=said.append)
    again.run(only="student")
    assert any("distilling anew" in line for line in said)
    assert _logged_steps(work / "student-cold") == [1, 2]


@pytest.mark.slow
def test_a_bounded_call_trains_then_still_evaluates_and_ships(built):
    """--hours: the world model trains until the training deadline (a quarter of the call is
    kept for evaluation), then the call evaluates and ships what it has."""
    work, ship = built["work"], built["ship"]
    more = ("--dit-steps", "100000", "--hours", "0.02")
    done = subprocess.run(build(work, ship, *more), capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((work / "recipe.json").read_text())
    dit = state["stages"]["dit"]
    assert 8 < dit["step"] < 100000 and not dit["done"] and dit["stopped"] == "deadline"
    assert state["stages"]["eval"]["dit_step"] == dit["step"]  # evaluated what it trained
    assert state["stages"]["ship"]["done"]
    assert state["sessions"][-1]["trained"]["dit"] == dit["step"]
    # the shipped world (step 8) was evaluated beside it: the ship rule compared like with like
    from matrixgame.worlds.card import figures_of

    report = json.loads((work / "report" / "report.json").read_text())
    assert "tiny (shipped)" in report["fidelity"]["methods"]
    assert state["stages"]["ship"]["previous"] == figures_of(report, "tiny (shipped)")


def test_the_card_compares_multi_segment_training_with_its_cold_start_alone():
    from matrixgame.worlds.card import _cold_start_line

    def figures(psnr, first, last):
        return {"psnr": psnr, "drift_first_psnr": first, "drift_last_psnr": last}

    student = {"step": 3000, "sampler": {"steps": 3}, "figures": figures(18.0, 19.0, 17.5),
               "cold_start": {"step": 600, "figures": figures(17.0, 19.2, 16.0)}}  # fmt: skip
    (line,) = [x for x in _cold_start_line(student) if x]
    assert "600 steps" in line and "17.50 vs 16.00 dB" in line and "1.50 vs 3.20" in line
    assert "holds up better" in line and "does not" not in line
    student["cold_start"]["figures"]["drift_last_psnr"] = 18.0
    assert "does not hold up better" in "".join(_cold_start_line(student))
    del student["cold_start"]["figures"]["drift_last_psnr"]  # not measured: no line
    assert _cold_start_line(student) == [] and _cold_start_line({"figures": {}}) == []
    from matrixgame.worlds.card import _regression

    assert _regression(student) == "" and "weight 1, toward" in _regression({"regression": 1.0})


@pytest.mark.parametrize("stopped", ["signal", "deadline"])
def test_an_interrupted_stage_ends_the_call_which_logs_and_keeps(tmp_path, monkeypatch, stopped):
    """Ctrl-C in the world-model stage (its trainer checkpointed and stopped "signal") ends
    the call there: no later stage runs, the call's row is logged, the version is kept. Out
    of time ("deadline"), the call goes on to the stages that evaluate and ship."""
    from types import SimpleNamespace

    from matrixgame.worlds.recipe import STAGES, Recipe, spec_with

    recipe = Recipe(spec_with("tiny"), tmp_path / "work", ship_to=tmp_path / "ship",
                    progress=lambda *_: None)  # fmt: skip
    ran, kept = [], []

    def stage(name):
        def run():
            ran.append(name)
            if name == "dit":
                recipe.trained["dit"] = 5
                return recipe._ended(SimpleNamespace(stopped=stopped))
            return None

        return run

    for name in STAGES:
        monkeypatch.setattr(recipe, f"stage_{name}", stage(name))
    monkeypatch.setattr(recipe, "keep", lambda: kept.append(True))
    recipe.run()
    before = list(STAGES[: STAGES.index("dit") + 1])
    assert ran == (before if stopped == "signal" else list(STAGES))
    assert recipe.interrupted == (stopped == "signal") and kept == [True]
    assert recipe.state["sessions"][-1]["trained"] == {"dit": 5}


def test_heldout_stop_waits_patience_checks_without_a_new_best(tmp_path):
    from matrixgame.worlds.recipe import HeldoutStop

    scores = iter([1.0, 2.0, 1.5, 1.9, 1.2, 3.0, 2.0])
    stop = HeldoutStop(tmp_path, patience=3, score=lambda: next(scores))
    decisions = [stop(step) for step in range(7)]
    assert decisions == [False, False, False, False, True, False, False]
    assert [h["score"] for h in stop.history()] == [1.0, 2.0, 1.5, 1.9, 1.2, 3.0, 2.0]
    # a score with other figures: they are kept beside it, the score alone decides
    more = HeldoutStop(tmp_path / "more", patience=1, score=lambda: {"score": 2, "ssim": 0.5})
    (tmp_path / "more").mkdir()
    assert more(250) is False and more(500) is True
    assert more.history() == [{"step": 250, "score": 2.0, "ssim": 0.5},
                              {"step": 500, "score": 2.0, "ssim": 0.5}]  # fmt: skip
    # checks with noise on the past measure another loss: compared only with each other
    levels = iter([{"score": 5.0}, {"score": 1.0, "past_noise": 0.35},
                   {"score": 0.9, "past_noise": 0.35}])  # fmt: skip
    noised = HeldoutStop(tmp_path / "noised", patience=1, score=lambda: next(levels))
    (tmp_path / "noised").mkdir()
    assert [noised(step) for step in (250, 500, 750)] == [False, False, True]


def test_the_card_predicts_from_the_curves_the_steps_to_the_goals_not_met():
    from matrixgame.worlds.card import predictions

    figures = {"vae_psnr": 28.0, "vae_ssim": 0.95, "vae_sharpness": 0.5, "psnr@1s": 20.0,
               "copy_psnr@1s": 21.0, "blur_psnr@1s": 19.0}  # fmt: skip
    # the PSNR check gains 0.5 dB per 1,000 steps (the last 8 checks; earlier ones flat),
    # the sharpness falls; the world model's loss 0.5 falls by 0.01 per 1,000 steps
    vae = [{"step": 250 * i, "score": 20.0 + (0.125 * (i - 10) if i > 10 else 0.0),
            "sharpness": 0.6 - 0.001 * i} for i in range(1, 21)]  # fmt: skip
    dit = [{"step": 1000 * i, "score": -(0.6 - 0.01 * i)} for i in range(1, 11)]
    lines = predictions({"figures": figures, "curves": {"vae": vae, "dit": dit}})
    assert lines[:3] == ["", "**What more training predicts**", ""]
    psnr, sharp, world = lines[3:]
    assert psnr.startswith("- Autoencoder PSNR 28.00 dB of 30 dB: the autoencoder's training")
    assert "+0.5 dB per 1,000 steps over its checks at steps 3,250-5,000" in psnr
    assert "the goal is about 4,000 steps further" in psnr
    assert "sharpness ratio 0.50 of 0.9" in sharp and "not predicted to reach" in sharp
    assert "SSIM" not in "".join(lines)  # met
    assert "(1 not met)" in world and "0.5 at step 10,000" in world
    assert "fell 2% per 1,000 steps" in world and "more steps still lower it" in world
    # memory, 0.5 dB of the 2 on revisits: its worth on the held-out checks grows, or not
    revisits = {**figures, "revisit_psnr": 21.5, "revisit_psnr_no_memory": 21.0}
    gaining = [{**c, "memory_gain": 0.001 * i} for i, c in enumerate(dit, 1)]
    memory = predictions({"figures": revisits, "curves": {"dit": gaining}})[-1]
    assert memory.startswith("- Memory on revisits +0.50 dB of +2 dB")
    assert "lower its flow-matching loss by 0.01 (2% of the loss without them) at step 10,000"\
        in memory  # fmt: skip
    assert "changed by +0.001 per 1,000 steps: training is teaching it" in memory
    still = [{**c, "memory_gain": 0.01} for c in dit]
    assert "not predicted to teach it" in predictions(
        {"figures": revisits, "curves": {"dit": still}})[-1]  # fmt: skip
    done = {**revisits, "revisit_psnr": 23.5}
    assert not any("Memory" in line for line in predictions(
        {"figures": done, "curves": {"dit": gaining}}))  # fmt: skip
    flat = [{"step": 1000 * i, "score": -0.5} for i in range(1, 11)]
    lines = predictions({"figures": figures, "curves": {"dit": flat}})
    assert "has not fallen" in lines[-1] and "best 0.5 at step 1,000" in lines[-1]
    assert predictions({"figures": figures}) == []  # no curves: nothing predicted
    met = {**figures, "vae_psnr": 31.0, "vae_sharpness": 0.95, "psnr@1s": 22.0}
    assert predictions({"figures": met, "curves": {"vae": vae, "dit": dit}}) == []


def test_weights_trained_since_the_evaluation_are_not_shipped(built, tmp_path):
    """`--only ship` after the world model trained on ships nothing: its figures are of
    other weights; it says to evaluate first and leaves the shipped folder as it was."""
    from matrixgame.worlds.recipe import Recipe, spec_with

    work, ship = tmp_path / "work", tmp_path / "ship"
    shutil.copytree(built["work"], work)
    shutil.copytree(built["ship"], ship)
    state = json.loads((work / "recipe.json").read_text())
    state["stages"]["eval"]["dit_step"] -= 1  # evaluated one step before the run's weights
    state["stages"]["ship"]["done"] = False
    (work / "recipe.json").write_text(json.dumps(state))
    before = {f.name: f.read_bytes() for f in ship.iterdir() if f.is_file()}
    said = []
    recipe = Recipe(spec_with("tiny"), work, ship_to=ship, progress=said.append)
    recipe.run(only="ship")
    assert not recipe.state["stages"]["ship"]["done"]
    assert any("evaluate first" in line for line in said)
    assert {f.name: f.read_bytes() for f in ship.iterdir() if f.is_file()} == before


def test_the_ship_rule_counts_the_goals_met_before_the_mean_psnr():
    """A world that meets more of the issue's goals improves on the shipped one even at a
    lower 60-s PSNR (which a blurred still frame can win); at equal counts the PSNR decides,
    by more than 0.05 dB; anything improves on nothing."""
    from matrixgame.worlds.card import goals_met, improves

    base = {"psnr": 19.9, "idm_turn": 0.48, "idm_turn_real": 0.93,
            "drift_first_psnr": 20.0, "drift_last_psnr": 19.0}  # fmt: skip
    follows = {**base, "psnr": 18.6, "idm_turn": 0.88}  # reads 95% of the turns: one more goal
    assert (goals_met(base), goals_met(follows)) == (1, 2)
    assert improves(follows, base) and not improves(base, follows)
    assert not improves({**base, "psnr": 19.94}, base) and improves({**base, "psnr": 19.96}, base)
    assert improves(base, None) and improves(base, {})
    drifting = {**follows, "drift_last_psnr": 16.0}  # the turns gained, the drift goal lost
    assert goals_met(drifting) == 1 and not improves(drifting, base)


def test_the_card_says_where_a_world_model_was_carried_from():
    from matrixgame.worlds.card import _carried

    carried = {"version": 2, "step": 5902, "explained": 0.6512, "clips": 16}
    assert _carried({"step": 10}) == ""
    assert _carried({"carried_from": carried}) == (
        " from version 2's world model (5902 steps) carried onto these latents by a rotation "
        "(it explains 65% of their variance in the earlier autoencoder's)"
    )


def test_unknown_world_and_bad_budget_are_clear_errors(capsys):
    from matrixgame.cli import main

    assert main(["world", "build", "--world", "nowhere"]) == 2
    assert "unknown world 'nowhere'" in capsys.readouterr().err
    assert main(["world", "build", "--hours", "0"]) == 2
    assert "--hours must be positive" in capsys.readouterr().err


def test_load_names_missing_worlds(tmp_path):
    from matrixgame.worlds import load

    with pytest.raises(ValueError, match="no world 'atlantis'"):
        load("atlantis")
    (tmp_path / "config.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a matrixgame-world/1 config"):
        load(tmp_path)


@pytest.mark.parametrize("key, value, says", [
    ("training_log", {"date": "x"}, r"training_log must be a list"),
    ("training_log", ["row"], r"training_log\[0\] must be an object"),
    ("training_log", [{"date": 1}], r"training_log\[0\]\.date must be a string"),
    ("training_log", [{"date": "d", "device": "cpu", "threads": 1, "seconds": "1",
                       "trained": {}, "steps": {}}],
     r"training_log\[0\]\.seconds must be a number"),
    ("training_log", [{"date": "d", "device": "cpu", "threads": 1, "seconds": 1, "trained": {},
                       "steps": {}, "figures": {"psnr": "high"}}],
     r"training_log\[0\]\.figures must be an object with"),
    ("curves", [], r"curves must be an object with some of the keys"),
    ("curves", {"student": []}, r"curves must be an object with some of the keys"),
    ("curves", {"dit": {}}, r"curves\.dit must be a list"),
    ("curves", {"vae": [{"step": 250}]}, r"curves\.vae\[0\] must be an object of numbers"),
    ("curves", {"vae": [{"step": 1.5, "score": 2}]}, r"curves\.vae\[0\] must be"),
    ("curves", {"vae": [{"step": 250, "score": 2}, {"step": 500, "score": "high"}]},
     r"curves\.vae\[1\] must be"),
])  # fmt: skip
def test_a_malformed_training_log_or_curve_is_named(tmp_path, key, value, says):
    from matrixgame.worlds import world_folder
    from matrixgame.worlds.shipped import read_config

    config = json.loads((world_folder("doom-e1m1") / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(ValueError, match=says):
        read_config(tmp_path)


def test_a_new_version_of_a_world_neither_continues_an_old_build_nor_its_shipped_weights(
    tmp_path,
):
    from dataclasses import replace

    from helpers import make_world_folder
    from matrixgame.worlds.recipe import Recipe, spec_with

    spec = spec_with("tiny")
    work = tmp_path / "work"
    work.mkdir()
    old = {"spec": {**vars(replace(spec, vae_preset="doom")), "maps": ["E1M1"]}, "stages": {}}
    (work / "recipe.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="another version of tiny \\(vae_preset 'doom'; this "
                                         "recipe: 'doom-2x'\\): give a new --work"):  # fmt: skip
        Recipe(spec, work, progress=lambda _: None)
    ship = make_world_folder(tmp_path / "ship")  # a world of the `tiny` autoencoder
    recipe = Recipe(spec, tmp_path / "fresh", ship_to=ship, progress=lambda _: None)
    assert recipe.seed_folder("vae") is None and recipe.seed_folder("dit") is None
    same = Recipe(replace(spec, vae_preset="tiny", dit_preset="tiny", current=1), tmp_path / "x",
                  ship_to=ship, progress=lambda _: None)  # fmt: skip
    assert same.seed_folder("vae") == ship and same.seed_folder("dit") == ship


def test_a_raised_recipe_version_alone_is_a_new_version(tmp_path):
    """`version` raised in the recipe (the same presets): a build from before versions were
    written (UNVERSIONED) does not continue, nor do world folders of another version."""
    from dataclasses import replace

    from helpers import make_world_folder
    from matrixgame.worlds.recipe import UNVERSIONED, Recipe, spec_with
    from matrixgame.worlds.shipped import read_config

    spec = replace(spec_with("tiny"), vae_preset="tiny", dit_preset="tiny", current=1)
    assert spec.version > UNVERSIONED
    work = tmp_path / "work"
    work.mkdir()
    old = {k: v for k, v in vars(spec).items() if k != "version"}
    (work / "recipe.json").write_text(json.dumps({"spec": {**old, "maps": ["E1M1"]},
                                                  "stages": {}}))  # fmt: skip
    says = f"another version of tiny \\(version {UNVERSIONED}; this recipe: {spec.version}\\)"
    with pytest.raises(ValueError, match=says):
        Recipe(spec, work, progress=lambda _: None)
    ship = make_world_folder(tmp_path / "ship")
    recipe = Recipe(spec, tmp_path / "fresh", ship_to=ship, progress=lambda _: None)
    assert recipe.seed_folder("vae") == ship and recipe.seed_folder("dit") == ship
    config = json.loads((ship / "config.json").read_text())
    for version in (UNVERSIONED, spec.version + 1, None):  # None: written before versions were
        config.pop("version", None)
        (ship / "config.json").write_text(json.dumps(config | ({"version": version}
                                                               if version else {})))  # fmt: skip
        assert recipe.seed_folder("vae") is None and recipe.seed_folder("dit") is None, version
    for bad in (0, "2", True):
        (ship / "config.json").write_text(json.dumps({**config, "version": bad}))
        with pytest.raises(ValueError, match="version must be an integer from 1 up"):
            read_config(ship)


def test_the_revisit_margin_reaches_the_world_and_its_students_sampler_or_neither(tmp_path):
    """The recipe's revisit margin is in the world's sampler and put on its student's (as
    evaluated and shipped); a recipe without one leaves both following their past."""
    from dataclasses import replace

    from matrixgame.worlds.recipe import SPECS, Recipe

    student = {"name": "renoise", "steps": 3, "revisit_margin": 0.3}
    on = Recipe(SPECS["tiny"], tmp_path / "a", progress=lambda _: None)
    assert on.spec.sampler["revisit_margin"] == 0.0 == on.played(student)["revisit_margin"]
    off = Recipe(replace(SPECS["tiny"], play_revisit_margin=None), tmp_path / "b",
                 progress=lambda _: None)  # fmt: skip
    assert "revisit_margin" not in off.spec.sampler and "revisit_margin" not in off.played(student)
    with pytest.raises(ValueError, match="play_revisit_margin"):
        replace(SPECS["tiny"], play_revisit_margin=1.5)
