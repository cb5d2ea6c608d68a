"""The boundaries of the package: import arrows one way, one count of reasoner calls,
best-of-N ranked by the loss TTO minimises, the prompt-embedding cache."""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path

import pytest
import torch

import vlm_teacher

SRC = Path(vlm_teacher.__file__).resolve().parent

#: module (or package) -> what it must never import (the arrows: cli -> bench -> methods -> optimize -> adapters)
FORBIDDEN = {
    "bench": ("cli",),
    "methods": ("bench", "cli"),
    "optimize": ("methods", "bench", "cli"),
    "reasoner": ("optimize", "methods", "bench", "cli"),
    "teacher": ("optimize", "methods", "bench", "cli"),
    "suites": ("methods", "bench", "cli"),
    "runtime": ("optimize", "methods", "bench", "cli", "reasoner", "teacher"),
    "identity": ("optimize", "methods", "bench", "cli"),
    "objective": ("optimize", "methods", "bench", "cli", "reasoner", "teacher"),
}
#: inside bench: executors -> runner -> plan
BENCH_FORBIDDEN = {"plan": ("runner", "executors"), "runner": ("executors",)}


def _module_name(path: Path, root: Path = SRC) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def _imports(path: Path, root: Path = SRC) -> set[str]:
    """Every vlm_teacher module ``path`` imports, at any depth (lazy imports count too)."""
    here = _module_name(path, root).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("vlm_teacher"):
                mod = node.module.removeprefix("vlm_teacher").lstrip(".")
            else:
                continue
            found.add(mod)
            found.update(f"{mod}.{a.name}".lstrip(".") for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("vlm_teacher").lstrip(".") for a in node.names
                         if a.name.startswith("vlm_teacher"))
    return found


def _top(name: str) -> str:
    return name.split(".")[0]


def _violations(root: Path = SRC) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        name = _module_name(path, root)
        rules = FORBIDDEN.get(_top(name), ())
        if name.startswith("bench."):
            rules = (*rules, *(f"bench.{m}" for m in BENCH_FORBIDDEN.get(name.split(".")[1], ())))
        for imported in _imports(path, root):
            if any(imported == r or imported.startswith(r + ".") or (_top(imported) == r and "." not in r)
                   for r in rules):
                bad.append(f"{name} imports {imported}")
    return bad


def test_import_arrows_point_one_way():
    bad = _violations()
    assert not bad, "\n".join(bad)


def test_the_arrow_check_sees_wrong_imports(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "methods.py").write_text("def f():\n    from .bench import plan\n")
    (tmp_path / "bench" / "runner.py").write_text("from ..cli import main\nfrom .executors import run_local\n")
    (tmp_path / "bench" / "plan.py").write_text("from ..methods import parse_method\n")
    (tmp_path / "reasoner.py").write_text("import vlm_teacher.optimize\n")
    assert sorted(_violations(tmp_path)) == ["bench.runner imports bench.executors", "bench.runner imports bench.executors.run_local",
                                             "bench.runner imports cli", "bench.runner imports cli.main",
                                             "methods imports bench", "methods imports bench.plan",
                                             "reasoner imports optimize"]


def test_tto_cost_reads_the_prepared_sampler_steps(tiny_wan_dir, tiny_qwen25_dir):
    """A 2-step sampler: 1 call per evaluated step at x0 'first', the whole sampler at 'last',
    plus the final sample (a fixed '4' would be wrong for both)."""
    from vlm_teacher.optimize import TTOConfig, teach
    from vlm_teacher.reasoner import load_reasoner
    from vlm_teacher.task import Queries, Task
    from vlm_teacher.teacher import load_teacher

    reasoner, teacher = load_reasoner(tiny_wan_dir), load_teacher(tiny_qwen25_dir)
    reasoner.defaults = dataclasses.replace(reasoner.defaults, steps=2)
    assert reasoner.sampler_steps == 2
    task = Task(id="t", prompt="move the red square to the right")
    queries = Queries(goal="Is the square on the right?", process=["Does the square move?"])
    # 3 updates, the last one scored before the video: 4 evaluations
    for mode, expected in (("first", 4 * 1 + 2), ("last", 4 * 2 + 2)):
        result = teach(reasoner, teacher, task, TTOConfig(fixed_steps=3, num_frames_shown=2, x0_mode=mode),
                       queries=queries, num_frames=5, progress=False)
        assert len(result.history) == 3
        assert result.cost["reasoner_calls"] == expected, mode
        assert result.cost["teacher_calls"] == 4  # the queries were given
        assert result.final is not None and result.final_loss == result.final["loss"]
        assert result.cost["peak_mem_mb"] > 50
    # the final video is made with the parameters the final score is about (the LoRA stays attached)
    from vlm_teacher.objective import weighted_loss
    from vlm_teacher.reasoner.base import uniform_frame_indices

    cond = reasoner.prepare(task.prompt, None, 0, num_frames=5)
    with torch.no_grad():
        frames = reasoner.preview(reasoner.predict_x0(cond, mode="last"), uniform_frame_indices(5, 2))
        again = float(weighted_loss(teacher.yes_logprob(frames, queries.all), 0.5))
    assert again == pytest.approx(result.final["loss"], rel=1e-5)
    stopped = teach(reasoner, teacher, task, TTOConfig(tau=1e9, num_frames_shown=2), queries=queries, num_frames=5,
                    progress=False)
    assert stopped.final is None and stopped.cost["reasoner_calls"] == 1 + 2  # stopped before any update


def test_best_of_n_keeps_the_candidate_with_the_lowest_tto_loss(tiny_wan_dir, tiny_qwen25_dir):
    from vlm_teacher.methods import BestOfN, MethodContext
    from vlm_teacher.objective import weighted_loss
    from vlm_teacher.optimize import TTOConfig
    from vlm_teacher.reasoner import load_reasoner
    from vlm_teacher.suites import load_suite
    from vlm_teacher.teacher import load_teacher

    suite = load_suite("grid:test")
    task = suite.task(suite.ids()[0])
    lam = 0.8
    ctx = MethodContext(reasoner=load_reasoner(tiny_wan_dir), teacher=load_teacher(tiny_qwen25_dir),
                        tto=TTOConfig(num_frames_shown=2, lam=lam))
    out = BestOfN(3).run(ctx, task, seed=0)
    cands = out.extra["candidates"]
    for c in cands:  # the recorded loss is the lambda-weighted -log P(Yes) of the recorded P(Yes)
        expected = float(weighted_loss(torch.log(torch.tensor(c["p_yes"], dtype=torch.float64)), lam))
        assert c["teacher_loss"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
        assert c["teacher_score"] == -c["teacher_loss"]
    best = min(cands, key=lambda c: c["teacher_loss"])
    assert out.extra["chosen_seed"] == best["seed"]
    assert math.isclose(out.extra["teacher_score"], -best["teacher_loss"])


def test_prompt_embedding_cache_is_hit(tiny_wan_dir):
    from vlm_teacher.reasoner import load_reasoner

    r = load_reasoner(tiny_wan_dir)
    calls = []
    r.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    first = r.prepare("push the box left", None, 0, num_frames=5)
    second = r.prepare("push the box left", None, 1, num_frames=5)
    assert len(calls) == 1
    assert torch.equal(first.extra["prompt_embeds"], second.extra["prompt_embeds"])
    r.prepare("another prompt", None, 0, num_frames=5)
    assert len(calls) == 2
    assert second.steps == r.sampler_steps
