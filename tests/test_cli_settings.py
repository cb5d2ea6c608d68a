"""The paper's settings as defaults, every test-time-optimisation flag of `run` and `bench`
reaching what is recorded, and `run`'s outputs checked for their content.

Paper (METHOD.md): N = 40 steps, tau = 0.22, lambda = 0.5, K = 24 frames, LoRA rank 16,
lr 5e-5, gradient through the first denoising step."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vlm_teacher.cli import build_parser, main
from vlm_teacher.cli.options import tto_changes
from vlm_teacher.optimize import TTOConfig, tto_config
from vlm_teacher.video import read_video, to_uint8

PAPER = {"max_steps": 40, "tau": 0.22, "lam": 0.5, "num_frames_shown": 24, "lora_rank": 16, "lr": 5e-5,
         "x0_mode": "first", "fixed_steps": None, "queries": "task"}
#: TTOConfig field -> the flag that sets it (run and bench spell them alike)
FLAGS = {"max_steps": "--steps", "tau": "--tau", "lam": "--lam", "num_frames_shown": "--k", "lora_rank": "--rank",
         "lr": "--lr", "x0_mode": "--x0-mode", "fixed_steps": "--fixed-steps"}
PROMPT = "Move the blue agent to the green square."
#: the mp4 tolerance: mean absolute difference (0-255 levels) of 8x8-pixel block means between
#: video.mp4 and the frames it was encoded from. The codec's loss on these noise-like tiny videos
#: is high-frequency (about 8 levels per pixel, 1.2 on block means); the run's adapter moves the
#: block means by about 4.4 levels, another seed by about 5.
MP4_BLOCK_TOL = 2.0


def _block_diff(a: np.ndarray, b: np.ndarray, block: int = 8) -> float:
    t, h, w, c = a.shape
    blocks = lambda v: v.astype(np.float32).reshape(t, h // block, block, w // block, block, c).mean((2, 4))  # noqa: E731
    return float(np.abs(blocks(a) - blocks(b)).mean())


def _option_dests(command: str) -> dict[str, str]:
    """flag -> argparse dest of one subcommand (read from the parser, not assumed)."""
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return {opt: a.dest for a in sub._actions for opt in a.option_strings}


def _bench_has(*flags: str) -> bool:
    return all(f in _option_dests("bench") for f in flags)


def test_tto_config_defaults_are_the_papers():
    cfg = TTOConfig()
    assert {k: getattr(cfg, k) for k in PAPER} == PAPER


def test_run_parses_to_the_papers_settings(tmp_path):
    args = build_parser().parse_args(["run", "--reasoner", "r", "--teacher", "t", "--prompt", "p", "--out",
                                      str(tmp_path)])
    assert set(FLAGS.values()) <= set(_option_dests("run"))
    assert tto_changes(args) == {}  # no flag given: nothing changes the paper's settings
    cfg = tto_config(tto_changes(args))  # the one flags -> TTOConfig mapping run and bench share
    assert {k: getattr(cfg, k) for k in PAPER} == PAPER
    assert args.generic_queries is False and args.seed == 0


@pytest.mark.slow  # a bench run (or two) on the tiny models: about a minute each on 2 shared cores
def test_bench_leaves_every_setting_to_the_papers_defaults(tmp_path, tiny_wan_dir, tiny_qwen25_dir):
    """bench's flags default to "not given" (None), so the recorded settings are TTOConfig's:
    checked on what a real bench run records in history.json."""
    out = tmp_path / "b"
    assert main(["bench", "--suite", "grid:test", "--methods", "tto_fixed0", "--limit", "1", "--out", str(out),
                 "--reasoner", str(tiny_wan_dir), "--teacher", str(tiny_qwen25_dir), "--no-teacher-eval",
                 "--quiet"]) == 0
    (hist,) = [json.loads(p.read_text()) for p in out.glob("runs/*/*/*/history.json")]
    config = hist["extra"]["config"]
    assert {k: config[k] for k in PAPER} == {**PAPER, "fixed_steps": 0}  # tto_fixed0 changes that one
    assert json.loads((out / "bench.json").read_text())["runs"][-1]["tto"] == {}


# ---------------------------------------------------------------- run: every flag, and its outputs

@pytest.fixture(scope="module")
def run_out(tmp_path_factory, tiny_wan_dir, tiny_qwen25_dir, first_frame_png):
    out = tmp_path_factory.mktemp("run") / "out"
    argv = ["run", "--reasoner", str(tiny_wan_dir), "--teacher", str(tiny_qwen25_dir), "--prompt", PROMPT,
            "--image", str(first_frame_png), "--out", str(out), "--quiet",
            "--steps", "5", "--tau", "-1", "--lam", "0.3", "--k", "3", "--rank", "4", "--lr", "1.0",
            "--x0-mode", "last", "--fixed-steps", "2", "--generic-queries", "--seed", "7"]
    assert main(argv) == 0
    return out


def test_every_run_flag_is_recorded(run_out):
    hist = json.loads((run_out / "history.json").read_text())
    config = hist["config"]
    assert {k: config[k] for k in PAPER} == {"max_steps": 5, "tau": -1.0, "lam": 0.3, "num_frames_shown": 3,
                                             "lora_rank": 4, "lr": 1.0, "x0_mode": "last", "fixed_steps": 2,
                                             "queries": "generic"}
    assert hist["steps"] == 2 and hist["stop_reason"] == "fixed_budget"  # --fixed-steps wins over --steps
    assert json.loads((run_out / "queries.json").read_text())["source"] == "generic"
    assert json.loads((run_out / "task.json").read_text())["seed"] == 7
    adapter = json.loads((run_out / "adapter.json").read_text())
    assert adapter["rank"] == 4 and adapter["alpha"] == 4.0 and adapter["seed"] == 7
    assert adapter["targets"] == list(TTOConfig().lora_targets)
    # lam 0.3: each step's loss is 0.3 * -log p_goal + 0.7 * mean(-log p_process), from the recorded P(Yes)
    for h in hist["history"]:
        nll = [-math.log(p) for p in h["p_yes"]]
        assert h["loss"] == pytest.approx(0.3 * nll[0] + 0.7 * sum(nll[1:]) / len(nll[1:]), rel=1e-4)


def test_run_history_seconds_cost_and_grad_norms(run_out):
    hist = json.loads((run_out / "history.json").read_text())
    steps = hist["history"]
    assert [h["step"] for h in steps] == [1, 2]
    assert all(math.isfinite(h["grad_norm"]) and h["grad_norm"] > 0 and "skipped" not in h for h in steps)
    # the LoRA moved (lr 1), so the two steps saw different models
    assert steps[0]["loss"] != steps[1]["loss"]
    sec = hist["seconds"]
    assert sec["total"] == pytest.approx(sec["queries"] + sec["optimise"] + sec["generate"], rel=1e-6, abs=1e-6)
    assert 0 < sum(h["seconds"] for h in steps) <= sec["optimise"]
    # x0-mode last runs the 4-step sampler for every x0, plus the final sample; generic queries: no
    # query-writing call, one yes/no pass per evaluation. The fixed budget ends after an update, so
    # that update is scored once more before the final video: 2 updates are 3 evaluations
    assert hist["cost"]["reasoner_calls"] == 3 * 4 + 4
    assert hist["cost"]["teacher_calls"] == 3
    assert hist["updates"] == 2


def test_run_adapter_regenerates_the_video(run_out, tiny_wan_dir, first_frame_png):
    """adapter.safetensors in a fresh reasoner, the same seed: video.mp4 again (within the mp4
    round trip); without it the frozen model's video, which is far from it."""
    from vlm_teacher.reasoner import load_reasoner
    from vlm_teacher.video import read_image

    stored = read_video(run_out / "video.mp4")
    fresh = load_reasoner(tiny_wan_dir)
    image = read_image(first_frame_png)
    frozen = to_uint8(fresh.generate(fresh.prepare(PROMPT, image, 7)))
    fresh.load_lora(run_out / "adapter.safetensors")
    adapted = to_uint8(fresh.generate(fresh.prepare(PROMPT, image, 7)))
    other_seed = to_uint8(fresh.generate(fresh.prepare(PROMPT, image, 8)))
    assert stored.shape == adapted.shape == (9, 64, 64, 3)
    assert _block_diff(stored, adapted) < MP4_BLOCK_TOL
    assert _block_diff(stored, frozen) > 1.5 * MP4_BLOCK_TOL
    assert _block_diff(stored, other_seed) > 1.5 * MP4_BLOCK_TOL


# ---------------------------------------------------------------- bench: every flag it has

def _bench(out, wan, qwen, *extra):
    return main(["bench", "--suite", "grid:test", "--limit", "1", "--out", str(out), "--reasoner", str(wan),
                 "--teacher", str(qwen), "--no-teacher-eval", "--quiet", *extra])


@pytest.mark.slow  # a bench run (or two) on the tiny models: about a minute each on 2 shared cores
def test_every_bench_flag_is_recorded(tmp_path, tiny_wan_dir, tiny_qwen25_dir):
    from vlm_teacher.bench import open_store

    out = tmp_path / "b"
    assert _bench(out, tiny_wan_dir, tiny_qwen25_dir, "--methods", "tto_generic", "--seeds", "3,5",
                  "--steps", "1", "--tau", "-1", "--lam", "0.3", "--k", "2", "--rank", "4", "--lr", "0.001") == 0
    given = {"max_steps": 1, "tau": -1.0, "lam": 0.3, "num_frames_shown": 2, "lora_rank": 4, "lr": 0.001}
    assert json.loads((out / "bench.json").read_text())["runs"][-1]["tto"] == given
    with open_store(out) as store:
        rows = store.rows()
    assert sorted(r["seed"] for r in rows) == [3, 5] and all(r["status"] == "done" for r in rows)
    for r in rows:
        hist = json.loads((out / r["history_path"]).read_text())
        assert hist["seed"] == r["seed"] and hist["steps"] == r["steps"] == 1
        assert {k: hist["extra"]["config"][k] for k in given} == given
        assert hist["extra"]["config"]["queries"] == "generic"
        assert len(hist["history"][0]["p_yes"]) == len(hist["queries"]["process"]) + 1
    # other settings are other rows (the store's key), the defaults' rows are not overwritten
    assert _bench(out, tiny_wan_dir, tiny_qwen25_dir, "--methods", "tto_generic", "--seeds", "3",
                  "--steps", "1", "--tau", "-1", "--lam", "0.3", "--k", "2", "--rank", "8", "--lr", "0.001") == 0
    with open_store(out) as store:
        again = store.rows()
    assert len(again) == 3 and len({r["config_hash"] for r in again}) == 2


@pytest.mark.slow
@pytest.mark.skipif(not _bench_has("--x0-mode", "--fixed-steps"),
                    reason="bench has no --x0-mode / --fixed-steps yet (branch i13 adds them); runs once it has")
def test_bench_x0_mode_and_fixed_steps_are_recorded(tmp_path, tiny_wan_dir, tiny_qwen25_dir):
    from vlm_teacher.bench import open_store

    out = tmp_path / "b"
    assert _bench(out, tiny_wan_dir, tiny_qwen25_dir, "--methods", "tto_generic", "--seeds", "2",
                  "--x0-mode", "last", "--fixed-steps", "1", "--k", "2") == 0
    with open_store(out) as store:
        (row,) = store.rows()
    hist = json.loads((out / row["history_path"]).read_text())
    assert hist["extra"]["config"]["x0_mode"] == "last" and hist["extra"]["config"]["fixed_steps"] == 1
    assert row["steps"] == 1 and row["stop_reason"] == "fixed_budget"
    # the last-step x0 runs the whole 4-step sampler; the budget ends after the one update, so it
    # is scored once more before the final video: 2 evaluations of 4 calls, plus the final sample
    assert row["reasoner_calls"] == 2 * 4 + 4
