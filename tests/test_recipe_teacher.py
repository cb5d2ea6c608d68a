"""The teacher recipe (`vlm-teacher train teacher`) and the shipped embedded teacher.

Recipe runs use tiny sizes and a handful of steps; the reasoner-data path uses a
tiny random Wan pipeline at the grid size (96 px, 9 frames)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from vlm_teacher.cli import main
from vlm_teacher.embedded import TEACHER_DIR
from vlm_teacher.suites.grid import corrupt, grid_tasks, verify
from vlm_teacher.suites.grid.questions import answers, grid_queries, queries_json, questions
from vlm_teacher.teacher.queries import parse_queries

TINY = ["--vocab", "700", "--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1",
        "--intermediate", "64", "--vision-depth", "1", "--vision-hidden", "32", "--vision-heads", "2",
        "--vision-intermediate", "64", "--train-tasks", "3", "--batch", "2", "--warmup", "2", "--weight-scan", "40"]


shipped = pytest.mark.skipif(not (TEACHER_DIR / "config.json").is_file(), reason="no embedded teacher shipped")


def _train(out: Path, *extra: str) -> int:
    return main(["train", "teacher", "--out", str(out), "--work", str(out) + ".work", *TINY, *extra])


def _weights(folder: Path) -> dict[str, np.ndarray]:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def grid_wan_dir(tmp_path_factory):
    from vlm_teacher.testing.tiny_wan import build_tiny_wan_pipeline

    return build_tiny_wan_pipeline(tmp_path_factory.mktemp("gridwan") / "wan", seed=0, height=96, width=96)


def test_questions_cover_the_verifier():
    """All answers Yes <=> the verifier passes, on ground truth and on every corruption."""
    rng = np.random.default_rng(0)
    from vlm_teacher.suites.grid import CORRUPTIONS

    for task in grid_tasks("test", 3):
        video = task.video()
        assert all(answers(task, verify(task, video)).values())
        for kind in CORRUPTIONS[task.family]:
            try:
                bad = corrupt(task, video, kind, rng)
            except ValueError:
                continue
            verdict = verify(task, bad)
            got = answers(task, verdict)
            assert all(got.values()) == verdict.passed, (task.id, kind, got)
        assert parse_queries(queries_json(task)).all == grid_queries(task).all
        assert set(questions(task)) == {"goal", "moves", "intact"} | ({"box"} if task.family == "push" else set())


@pytest.mark.slow  # ~30 s on the shared 2-core machine
def test_recipe_end_to_end_with_a_reasoner(tmp_path, grid_wan_dir):
    from vlm_teacher.teacher import load_teacher

    out = tmp_path / "teacher"
    rc = _train(out, "--reasoner", str(grid_wan_dir), "--steps", "3", "--reasoner-jobs", "2",
                "--eval-tasks", "1", "--eval-reasoner", "1", "--eval-queries", "1")
    assert rc == 0
    figures = json.loads((out / "eval.json").read_text())
    assert figures["training"]["steps"] == 3 and figures["training"]["reasoner_train_videos"] == 2
    assert set(figures["reasoner"]) == {"test", "ood"}
    for split in ("test", "ood"):
        r = figures["reasoner"][split]
        assert r["videos"] == 4  # 1 task per family x 2 seeds
        assert r["reasoner_preview"]["goal"]["n"] > 0
        cal = r["calibration"]  # the ECE is the bins' weighted gap (3-decimal rounding)
        assert sum(b["n"] for b in cal["bins"]) == cal["n"] > 0
        assert cal["ece"] == pytest.approx(sum(b["n"] / cal["n"] * abs(b["mean_p_yes"] - b["frac_yes"])
                                               for b in cal["bins"]), abs=2e-3)
        # hacking counts the answers labelled No (the bins say how many) and the (video, goal) pairs
        # with at least one of them
        h = r["hacking"]
        assert h["questions_no"] == round(sum(b["n"] * (1 - b["frac_yes"]) for b in cal["bins"]))
        if h["questions_no"]:
            assert 1 <= h["videos_failing"] <= h["questions_no"]
        assert figures["queries"][split]["n"] == 2
        assert {"test/clean", "test/corrupted"} <= set(figures["renders"])
    lines = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    card = (out / "MODEL_CARD.md").read_text()
    assert str(figures["training"]["steps"]) in card and "Reward hacking" in card
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))
    teacher = load_teacher(out)  # the adapter loads it like any Qwen3-VL folder
    task = grid_tasks("test", 1)[0]
    from vlm_teacher.video import to_float

    p = teacher.yes_prob_no_grad(to_float(task.video()), grid_queries(task).all)
    assert p.shape == (3,) and bool(((p > 0) & (p < 1)).all())
    # the reasoner's videos were cached for a rerun, under the reasoner's weights (not its folder name)
    from vlm_teacher.bench import model_id

    assert len(list((Path(str(out) + ".work") / f"reasoner-{model_id(grid_wan_dir)}").glob("*.npz"))) == 2 + 8
    # continued with adversarial examples from the test-time loop run against it
    again = tmp_path / "again"
    assert _train(again, "--reasoner", str(grid_wan_dir), "--init-from", str(out), "--steps", "2",
                  "--reasoner-jobs", "2", "--eval-reasoner", "1", "--tto-jobs", "2", "--no-eval") == 0
    assert len(list((Path(str(again) + ".work")).glob("tto-*/*.npz"))) == 2
    sources = {src for line in (again / "train_log.jsonl").read_text().splitlines()
               for src in json.loads(line)["sources"]}
    assert sources <= {"gt", "counterfactual", "degraded", "reasoner_final", "reasoner_preview",
                       "tto_final", "tto_preview"} | {s for s in sources if s.startswith("corrupt:")}


@shipped
def test_test_time_loop_samples_are_labelled_by_their_own_final_video(tmp_path, grid_wan_dir):
    """``run_tto`` (the adversarial examples of --tto-jobs): the preview and final video of the
    reasoner AFTER the updates, answers from the verifier on that final video, the LoRA gone
    afterwards, and the kind and step count kept through the cache."""
    from vlm_teacher.reasoner import load_reasoner
    from vlm_teacher.recipes.teacher_data import ReasonerSample, load_sample, run_reasoner, run_tto, save_sample
    from vlm_teacher.teacher import load_teacher

    reasoner, teacher = load_reasoner(grid_wan_dir), load_teacher(TEACHER_DIR)
    task = grid_tasks("train", 1, seed=11)[0]
    frozen = run_reasoner(reasoner, task, seed=3)
    sample = run_tto(reasoner, teacher, task, seed=3, steps=2, lr=1e-2)
    assert (sample.kind, sample.steps) == ("tto", 2)
    assert sample.preview.shape == frozen.preview.shape and sample.final.shape == frozen.final.shape
    assert not np.array_equal(sample.final, frozen.final)  # the updates changed the video
    assert np.array_equal(run_reasoner(reasoner, task, seed=3).final, frozen.final)  # and the LoRA is gone
    for ex in sample.examples():
        assert ex.source in ("tto_final", "tto_preview")
        assert ex.labels == answers(ex.task, verify(ex.task, sample.final))
    save_sample(tmp_path / "s.npz", sample)
    back = load_sample(tmp_path / "s.npz", task)
    assert (back.kind, back.steps, back.seed) == ("tto", 2, 3) and np.array_equal(back.preview, sample.preview)
    # a cache written before test-time-loop samples existed reads as the frozen reasoner's
    with open(tmp_path / "old.npz", "wb") as fh:
        np.savez_compressed(fh, preview=frozen.preview, final=frozen.final, seed=3)
    assert load_sample(tmp_path / "old.npz", task).kind == "reasoner"
    with pytest.raises(ValueError, match="unknown reasoner sample kind"):
        ReasonerSample(task=task, seed=3, preview=sample.preview, final=sample.final, kind="tta")


def test_latent_attacks_move_the_preview_and_are_labelled_by_the_verifier(grid_wan_dir):
    """``attack_example``: the reasoner's first-step latent moved down the teacher's loss, decoded whole,
    first frame kept, answers read by the verifier from the decoded video, the same for the same draw."""
    from vlm_teacher.reasoner import load_reasoner
    from vlm_teacher.recipes.teacher_data import AttackSettings, attack_example, run_reasoner
    from vlm_teacher.teacher import load_teacher

    reasoner = load_reasoner(grid_wan_dir)
    teacher = load_teacher(TEACHER_DIR) if (TEACHER_DIR / "config.json").is_file() else None
    if teacher is None:
        pytest.skip("no embedded teacher shipped")
    task = grid_tasks("train", 1, seed=11)[0]
    frozen = run_reasoner(reasoner, task, seed=3)
    settings = AttackSettings(steps=2, step_size=0.2, noise=0.0)
    ex = attack_example(reasoner, teacher, task, 3, np.random.default_rng(0), settings)
    assert ex.source == "attack" and ex.task is task and ex.video.shape == frozen.final.shape
    assert np.array_equal(ex.video[0], frozen.preview[0])  # the pinned first frame is never attacked
    assert not np.array_equal(ex.video, frozen.preview)
    assert ex.labels == answers(task, verify(task, ex.video))
    again = attack_example(reasoner, teacher, task, 3, np.random.default_rng(0), settings)
    assert np.array_equal(again.video, ex.video)


def test_recipe_with_latent_attacks_resumes_to_the_same_weights(tmp_path, grid_wan_dir):
    args = ("--reasoner", str(grid_wan_dir), "--steps", "3", "--reasoner-jobs", "2", "--eval-reasoner", "1",
            "--attack-batch", "1", "--attack-steps", "2", "--no-eval")
    assert _train(tmp_path / "full", *args) == 0
    sources = [json.loads(x)["sources"] for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert all(s[-1] == "attack" for s in sources) and len(sources) == 3
    assert _train(tmp_path / "cut", *args, "--stop-at", "1") == 0
    assert _train(tmp_path / "cut", *args, "--resume") == 0
    full, cut = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert all(np.allclose(full[k], cut[k], atol=1e-6) for k in full)


def test_recipe_is_seeded(tmp_path):
    assert _train(tmp_path / "a", "--no-reasoner", "--steps", "2", "--no-eval") == 0
    assert _train(tmp_path / "b", "--no-reasoner", "--steps", "2", "--no-eval") == 0
    assert _train(tmp_path / "c", "--no-reasoner", "--steps", "2", "--no-eval", "--seed", "1") == 0
    a, b, c = (_weights(tmp_path / x) for x in "abc")
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a if k in c)


def test_blends_are_labelled_by_the_verifier_of_the_blend():
    """``blend_example``: a failing video moved part of the way to its ground truth, first frame and
    shape kept, answers read by the verifier from the blend itself; the ground truth comes back as it is."""
    from vlm_teacher.recipes.teacher_data import blend_example, labelled

    task = grid_tasks("train", 1)[0]
    rng = np.random.default_rng(0)
    failing = labelled(task, corrupt(task, task.video(), "vanish", rng), "corrupt:vanish")
    assert not all(failing.labels.values())
    seen = set()
    for _ in range(12):
        ex = blend_example(failing, rng)
        assert ex.source == "blend" and ex.video.shape == failing.video.shape and ex.video.dtype == np.uint8
        assert ex.labels == answers(task, verify(task, ex.video))
        assert all(ex.soft[k] == 1.0 if yes else 0.0 <= ex.soft[k] < 0.5 for k, yes in ex.labels.items())
        assert np.abs(ex.video.astype(int) - task.video()).sum() <= np.abs(failing.video.astype(int) - task.video()).sum()
        seen.add(tuple(ex.labels.values()))
    assert len(seen) == 2  # near the failing end it fails, near the truth it passes
    truth = labelled(task, task.video(), "gt")
    assert blend_example(truth, rng) is truth


def test_alignment_loss_reads_the_direction_to_the_truth():
    """``align_loss`` is 1 - cosine of the input gradient of the loop's loss with (video - truth):
    it lies in [0, 2], it has a gradient in the teacher's weights (double backprop), and it applies
    only to failing videos of the truth's shape."""
    import torch

    from vlm_teacher.recipes.grid_teacher import align_loss, align_target
    from vlm_teacher.recipes.teacher_data import labelled
    from vlm_teacher.teacher.qwen import QwenVLTeacher

    teacher = QwenVLTeacher.from_pretrained(TEACHER_DIR, attn_implementation="eager")
    teacher.model.requires_grad_(True)
    task = grid_tasks("train", 1)[0]
    failing = labelled(task, corrupt(task, task.video(), "vanish", np.random.default_rng(0)), "corrupt:vanish")
    truth = align_target(failing)
    assert truth is not None and np.array_equal(truth, task.video())
    assert align_target(labelled(task, task.video(), "gt")) is None
    loss = align_loss(teacher, failing, truth)
    assert 0.0 <= float(loss.detach()) <= 2.0
    loss.backward()
    grads = [p.grad for p in teacher.model.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    assert torch.isfinite(torch.stack([g.abs().sum() for g in grads])).all()


def test_recipe_trains_on_blends_with_the_alignment_loss(tmp_path):
    assert _train(tmp_path / "q", "--no-reasoner", "--steps", "3", "--no-eval", "--blend-share", "1",
                  "--align-loss", "0.5", "--align-batch", "1") == 0
    log = [json.loads(x) for x in (tmp_path / "q" / "train_log.jsonl").read_text().splitlines()]
    assert all(set(r["sources"]) <= {"blend", "gt", "counterfactual", "degraded"} | {
        s for s in r["sources"] if s.startswith("corrupt:")} for r in log)
    assert any("blend" in r["sources"] for r in log)
    assert all(r["align_videos"] <= 1 and (r["align_videos"] == 0 or 0 <= r["align_loss"] <= 2) for r in log)
    assert any(r["align_videos"] == 1 for r in log)
    assert main(["train", "teacher", "--out", str(tmp_path / "x"), "--blend-share", "1.5"]) == 2
    assert main(["train", "teacher", "--out", str(tmp_path / "x"), "--align-loss", "-1"]) == 2


@shipped
def test_card_quotes_the_alignment_figures(tmp_path):
    """``benchmarks/teacher_alignment.py --card`` puts its summary in eval.json; the card renders it."""
    from vlm_teacher.recipes.teacher_eval import write_model_card

    figures = json.loads((TEACHER_DIR / "eval.json").read_text())
    figures["alignment"] = {"command": "python benchmarks/teacher_alignment.py --tasks 2", "reasoner": "R", "lr": 2e-3,
                            "tasks": 2, "false_yes_rate": {"goal": 0.25}, "false_yes": {"goal": "1/4"},
                            "cosine_mean": 0.4321, "cosine_positive": 2, "line_monotone": 1,
                            "line_mean": [1.0, 0.5], "early_stops": 3, "early_stops_failing": 1, "tto_pass": 1,
                            "frozen_pass": 0}
    card = write_model_card(tmp_path, figures, "unused").read_text()
    assert "python benchmarks/teacher_alignment.py --tasks 2" in card and "+0.432" in card
    assert "goal 25.0% (1/4)" in card and "1 of 3 early stops" in card
    del figures["alignment"]
    assert "loop's own previews" not in write_model_card(tmp_path, figures, "unused").read_text()


def test_recipe_resumes_to_the_same_weights(tmp_path):
    assert _train(tmp_path / "full", "--no-reasoner", "--steps", "4", "--no-eval") == 0
    assert _train(tmp_path / "cut", "--no-reasoner", "--steps", "4", "--no-eval", "--stop-at", "2") == 0
    assert not (tmp_path / "cut").exists()  # stopped before shipping
    state = json.loads((tmp_path / "cut.work" / "state.json").read_text())
    assert state["step"] == 2
    assert _train(tmp_path / "cut", "--no-reasoner", "--steps", "4", "--no-eval", "--resume") == 0
    full, cut = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert all(np.allclose(full[k], cut[k], atol=1e-6) for k in full)
    steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_bad_arguments_are_user_errors(tmp_path, capsys):
    assert main(["train", "teacher", "--out", str(tmp_path / "x"), "--reasoner", str(tmp_path)]) == 2
    assert "model_index.json" in capsys.readouterr().err
    assert main(["train", "teacher", "--out", str(tmp_path / "x"), "--batch", "0"]) == 2
    assert main(["train", "teacher", "--out", str(tmp_path / "x"), "--tto-jobs", "4"]) == 2
    assert "--init-from" in capsys.readouterr().err
    assert main(["train", "teacher", "--out", str(tmp_path / "x"), "--tto-jobs", "4", "--no-reasoner",
                 "--init-from", str(tmp_path)]) == 2
    assert "--no-reasoner" in capsys.readouterr().err
    assert main(["train", "teacher", "--out", str(tmp_path / "x"), "--attack-batch", "1", "--no-reasoner"]) == 2
    assert "--no-reasoner" in capsys.readouterr().err
    assert main(["train", "teacher", "--out", str(tmp_path / "x"), "--attack-steps", "0"]) == 2
    assert "--attack-steps" in capsys.readouterr().err


# ---------------------------------------------------------------- the shipped teacher


@pytest.fixture(scope="module")
def embedded_teacher():
    from vlm_teacher.teacher import load_teacher

    return load_teacher(TEACHER_DIR)


@shipped
def test_embedded_teacher_writes_the_task_questions(embedded_teacher):
    for task in grid_tasks("test", 3):
        q = embedded_teacher.propose_queries(task.prompt, task.first_frame())
        assert q.source == "teacher", task.id
        assert task.goal_colour in q.goal, (task.id, q.goal)


def test_a_continued_teacher_records_every_run_that_made_it(tmp_path):
    """--init-from chains: the card of a continued teacher must list the commands of all
    earlier runs (read from each folder's eval.json), so the chain can be remade."""
    from vlm_teacher.recipes.grid_teacher import init_lineage

    first, second = tmp_path / "first", tmp_path / "second"
    for folder, command, lineage in ((first, "vlm-teacher train teacher --out first", []),
                                     (second, "vlm-teacher train teacher --out second --init-from first",
                                      init_lineage(tmp_path / "first_missing"))):
        folder.mkdir()
        (folder / "eval.json").write_text(json.dumps({"training": {
            "command": command, "steps": 10, "train_seconds": 1.0, "reasoner": None, "lineage": lineage}}))
    chain = init_lineage(second)
    assert [r["command"] for r in chain] == ["vlm-teacher train teacher --out second --init-from first", None]
    assert "no eval.json training record" in chain[1]["note"]
    assert init_lineage(None) == [] and [r["command"] for r in init_lineage(first)] == [
        "vlm-teacher train teacher --out first"]


@shipped
def test_embedded_teacher_prefers_the_true_goal(embedded_teacher):
    from vlm_teacher.video import to_float

    rng = np.random.default_rng(0)
    tasks = grid_tasks("test", 5)  # 5 maze + 5 push
    better = right = 0
    for task in tasks:
        goal = grid_queries(task).goal
        gt = embedded_teacher.yes_prob_no_grad(to_float(task.video()), [goal])[0]
        wrong = embedded_teacher.yes_prob_no_grad(to_float(corrupt(task, task.video(), "wrong_target", rng)), [goal])[0]
        better += bool(gt > wrong)
        right += bool(gt > 0.5) + bool(wrong < 0.5)
    # the card: goal accuracy 100% on test/clean and test/corrupted (the shipped teacher gets 10 of 10
    # here). One miss allowed; a coin flip reaches 9 of 10 preferences 1% of the time, and a teacher
    # that always (or never) says Yes gets 10 of the 20 answers right
    assert better >= 9, f"P(yes) higher on the ground truth for only {better} of {len(tasks)} tasks"
    assert right >= 18, f"only {right} of {2 * len(tasks)} goal answers agree with the verifier"


@shipped
def test_embedded_teacher_files_and_size():
    files = {p.name for p in TEACHER_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json", "MODEL_CARD.md",
            "eval.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    assert sum(p.stat().st_size for p in TEACHER_DIR.glob("*.safetensors")) < 15e6


def test_calibration_and_hacking_figures_by_hand():
    """ECE, Brier and the reward-hacking rates of four answers worked out by hand."""
    from types import SimpleNamespace

    from vlm_teacher.recipes.teacher_eval import calibration, hacking

    scored = [(SimpleNamespace(labels={"goal": True, "moves": False}), {"goal": 0.9, "moves": 0.8}),
              (SimpleNamespace(labels={"goal": False, "moves": False}), {"goal": 0.2, "moves": 0.85})]
    cal = calibration(scored)
    # bins [0.8, 0.9): 0.8, 0.85 (mean 0.825, none Yes); [0.9, 1.0]: 0.9 (Yes); [0.2, 0.3): 0.2 (No)
    assert cal["ece"] == pytest.approx(2 / 4 * 0.825 + 1 / 4 * 0.1 + 1 / 4 * 0.2, abs=1e-3)
    assert cal["brier"] == pytest.approx((0.1 ** 2 + 0.8 ** 2 + 0.2 ** 2 + 0.85 ** 2) / 4, abs=1e-3)
    assert [b["n"] for b in cal["bins"]] == [1, 2, 1]
    h = hacking(scored)
    # three answers should be No; two of them got P(Yes) > 0.5. Both videos fail; the first fooled
    # every question, the second did not.
    assert h == {"question_rate": pytest.approx(2 / 3, abs=1e-3), "questions_no": 3,
                 "video_rate": 0.5, "videos_failing": 2}


def test_a_budget_with_no_training_time_is_refused_before_anything_is_written(tmp_path, capsys):
    """`train teacher --minutes 1` used to train 0 steps, exit 0 and write a model folder."""
    out = tmp_path / "short"
    assert main(["train", "teacher", "--out", str(out), "--no-reasoner", "--minutes", "1"]) != 0
    err = capsys.readouterr().err
    assert "leaves no training time" in err and "Traceback" not in err
    assert not out.exists() and not Path(str(out) + ".work").exists()


def test_a_second_trainer_on_the_same_work_folder_is_refused(tmp_path, capsys):
    from vlm_teacher.recipes.scaffold import WorkLock

    out = tmp_path / "busy"
    with WorkLock(Path(str(out) + ".work"), "test holder"):
        assert _train(out, "--no-reasoner", "--steps", "1", "--no-eval") != 0
    assert "in use by another" in capsys.readouterr().err
    assert not out.exists()
    assert _train(out, "--no-reasoner", "--steps", "1", "--no-eval") == 0
