"""The recipes' shared scaffolding: the command record replays, the schedule's ends, the step plan,
the atomic writers, and the suite hooks' defaults."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from vlm_teacher.errors import UserError
from vlm_teacher.files import atomic_folder
from vlm_teacher.recipes.scaffold import JsonlLog, StepPlan, command_record, save_safetensors, warmup_cosine


@pytest.mark.parametrize("recipe", ["grid_teacher", "grid_reasoner"])
def test_command_record_replays_to_the_same_arguments(recipe):
    import importlib

    module = importlib.import_module(f"vlm_teacher.recipes.{recipe}")
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    flags = ["--out", "o", "--seed", "3"] + (["--no-goal-contrast", "--steps", "7"] if recipe == "grid_teacher"
                                             else ["--dit-steps", "7"])
    args = parser.parse_args(flags)
    words = f"vlm-teacher train {recipe.removeprefix('grid_')}"
    text = command_record(words, args, module.add_arguments, {"out": "o"})
    assert text.startswith(words + " --out o ")
    again = parser.parse_args(text.removeprefix(words).split())
    assert vars(again) == vars(args)


def test_warmup_cosine_ends():
    assert warmup_cosine(0, 0.0, 1.0, 4, 0.1) == pytest.approx(0.25)
    assert warmup_cosine(4, 0.0, 1.0, 4, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(9, 0.5, 1.0, 4, 0.1) == pytest.approx(0.55)
    assert warmup_cosine(9, 1.0, 2.0, 4, 0.05) == pytest.approx(0.1)
    assert warmup_cosine(9, 3.0, 2.0, 4, 0.05) == pytest.approx(0.1)  # past the end it stays at the floor


def test_step_plan_fits_the_budget():
    plan = StepPlan(1000, budget_s=100.0, planned=None, calibration=20, replan_every=100)
    assert not plan.update(10, 1.0) and plan.total == 1000
    assert plan.update(20, 4.0) and plan.planned == 500  # 0.2 s a step -> 500 steps in 100 s
    assert plan.update(100, 25.0) and plan.planned == 400  # slower now
    assert plan.cut_by_time(400) and not plan.cut_by_time(399)
    quick = StepPlan(30, budget_s=100.0, planned=None, calibration=20, replan_every=100)
    assert quick.update(20, 1.0) and quick.planned == 30 and not quick.cut_by_time(30)


def test_log_keeps_lines_up_to_a_step(tmp_path):
    log = JsonlLog(tmp_path / "log.jsonl", stamp=False)
    for step in (1, 2, 3):
        log.write(step=step, loss=1.0 / step)
    log.keep_until(2)
    assert [r["step"] for r in log.records()] == [1, 2]
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0]) == {"step": 1, "loss": 1.0}


def test_atomic_writers(tmp_path):
    from safetensors.torch import load_file

    save_safetensors({"w": torch.ones(2)}, tmp_path / "a.safetensors")
    assert torch.equal(load_file(str(tmp_path / "a.safetensors"))["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(dest) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("killed while writing")
    assert [p.name for p in dest.iterdir()] == ["old.txt"] and not (tmp_path / "model.tmp").exists()
    with atomic_folder(dest) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in dest.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "model"]


def test_suite_hooks_default_to_nothing_to_do():
    from vlm_teacher.suites import load_suite

    grid = load_suite("grid:test")
    assert grid.rescore(None, None, []) == 0
    with pytest.raises(UserError, match="no external scores"):
        grid.import_scores(None, None)
