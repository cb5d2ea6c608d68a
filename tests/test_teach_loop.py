"""The test-time loop on tiny random models loaded through the real adapters."""

from __future__ import annotations

import pytest
import torch

from vlm_teacher.optimize import STOP_BUDGET, STOP_MAX, STOP_TAU, TTOConfig, teach, weighted_loss
from vlm_teacher.reasoner import load_reasoner
from vlm_teacher.task import Queries, Task
from vlm_teacher.teacher import load_teacher
from vlm_teacher.video import read_image

QUERIES = Queries(goal="Does the agent reach the green square?",
                  process=("Does the agent stay out of walls?", "Does the agent move one cell per step?"))


@pytest.fixture(scope="module")
def models(tiny_wan_dir, tiny_qwen_dir):
    return load_reasoner(tiny_wan_dir), load_teacher(tiny_qwen_dir)


@pytest.fixture(scope="module")
def task(first_frame_png):
    return Task(id="t0", prompt="Move the blue agent to the green square.", first_frame=read_image(first_frame_png))


def test_weighted_loss_matches_paper_formula():
    logp = torch.log(torch.tensor([0.5, 0.9, 0.8, 0.7]))
    expected = 0.5 * -logp[0] + 0.5 / 3 * -(logp[1] + logp[2] + logp[3])
    assert torch.allclose(weighted_loss(logp, 0.5), expected)
    assert torch.allclose(weighted_loss(logp, 1.0), -logp[0])
    assert torch.allclose(weighted_loss(logp, 0.0), -logp[1:].mean())


def test_high_tau_stops_at_step_one(models, task):
    reasoner, teacher = models
    res = teach(reasoner, teacher, task, TTOConfig(tau=1e9, max_steps=5, num_frames_shown=3),
                queries=QUERIES, progress=False)
    assert res.steps == 1 and res.updates == 0 and res.stop_reason == STOP_TAU


def test_negative_tau_runs_exactly_n_steps(models, task):
    reasoner, teacher = models
    res = teach(reasoner, teacher, task, TTOConfig(tau=-1.0, max_steps=3, num_frames_shown=3),
                queries=QUERIES, progress=False)
    assert res.steps == 3 and res.updates == 3 and res.stop_reason == STOP_MAX
    assert [h["step"] for h in res.history] == [1, 2, 3]
    for h in res.history:
        assert len(h["p_yes"]) == 3 and all(0.0 <= p <= 1.0 for p in h["p_yes"])


def test_fixed_budget_ignores_tau(models, task):
    reasoner, teacher = models
    res = teach(reasoner, teacher, task, TTOConfig(tau=1e9, fixed_steps=2, num_frames_shown=3),
                queries=QUERIES, progress=False)
    assert res.steps == 2 and res.stop_reason == STOP_BUDGET


def test_only_lora_changes(models, task):
    reasoner, teacher = models
    before_r = {k: v.clone() for k, v in reasoner.base_state_dict().items()}
    before_t = {k: v.clone() for k, v in teacher.base_state_dict().items()}
    res = teach(reasoner, teacher, task, TTOConfig(tau=-1.0, max_steps=3, num_frames_shown=3, lr=1e-2),
                queries=QUERIES, progress=False)
    assert res.updates == 3
    after_r, after_t = reasoner.base_state_dict(), teacher.base_state_dict()
    assert before_r.keys() == after_r.keys() and before_t.keys() == after_t.keys()
    assert all(torch.equal(before_r[k], after_r[k]) for k in before_r)
    assert all(torch.equal(before_t[k], after_t[k]) for k in before_t)
    # ... while the LoRA did move: lora_B starts at zero and is nonzero after the updates
    lora_b = [p for n, p in reasoner.transformer.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)


def test_same_seed_same_video(models, task):
    reasoner, teacher = models
    cfg = TTOConfig(tau=-1.0, max_steps=2, num_frames_shown=3, lr=1e-2)
    a = teach(reasoner, teacher, task, cfg, seed=3, queries=QUERIES, progress=False)
    b = teach(reasoner, teacher, task, cfg, seed=3, queries=QUERIES, progress=False)
    c = teach(reasoner, teacher, task, cfg, seed=4, queries=QUERIES, progress=False)
    assert torch.equal(a.video, b.video)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert not torch.equal(a.video, c.video)


def test_lambda_one_asks_only_the_goal(models, task):
    reasoner, teacher = models
    res = teach(reasoner, teacher, task, TTOConfig(lam=1.0, tau=-1.0, max_steps=1, num_frames_shown=3),
                queries=QUERIES, progress=False)
    assert len(res.history[0]["p_yes"]) == 1


def test_bad_config_is_rejected():
    with pytest.raises(ValueError):
        TTOConfig(lam=1.5)
    with pytest.raises(ValueError):
        TTOConfig(x0_mode="middle")


def test_a_model_folder_carries_its_own_tto_settings_and_flags_win(tmp_path):
    from vlm_teacher.bench import BenchConfig
    from vlm_teacher.embedded import reasoner_path
    from vlm_teacher.errors import UserError
    from vlm_teacher.optimize import MODEL_TTO_FILE, TTOConfig, tto_config

    assert tto_config({}, tmp_path) == TTOConfig() == tto_config()  # real models: the paper's values
    (tmp_path / MODEL_TTO_FILE).write_text('{"lr": 0.002, "lora_rank": 8}')
    cfg = tto_config({"lora_rank": 4}, tmp_path)
    assert (cfg.lr, cfg.lora_rank, cfg.tau) == (0.002, 4, TTOConfig().tau)
    # bench reads the same layers: its reasoner folder's file under its --tto flags
    bench = BenchConfig(suite="grid:test", methods=["tto"], out=tmp_path / "b", reasoner=tmp_path, tto={"tau": 0.1})
    assert (bench.tto_config().lr, bench.tto_config().lora_rank, bench.tto_config().tau) == (0.002, 8, 0.1)
    (tmp_path / MODEL_TTO_FILE).write_text('{"learning_rate": 0.002}')
    with pytest.raises(UserError, match="unknown keys"):
        tto_config({}, tmp_path)
    (tmp_path / MODEL_TTO_FILE).write_text('{"lam": 2}')
    with pytest.raises(UserError, match="lam"):
        tto_config({}, tmp_path)
    assert tto_config({}, reasoner_path()).lr != TTOConfig().lr  # the embedded grid reasoner has its own
