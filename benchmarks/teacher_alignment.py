"""Is the teacher's gradient a fix or an attack? Its figures where the test-time loop uses it (issue 15).

Everything is judged by the pixel verifier; the teacher is never its own judge. Per grid:test task
(maze and push interleaved, seed 0), with the suite's own queries (which equal the teacher's ideal ones):

- ``cosine``: at the frozen preview (a fresh LoRA, as the loop's first step sees it), the cosine of the
  gradient of the teacher's loss (lambda-weighted -log P(Yes)) pulled back to the LoRA parameters with the
  gradient of the MSE to the ground-truth frames (the direction of a legal video), the same pull-back;
- ``line``: the teacher's loss on the straight line from the frozen preview to the ground truth (it should
  fall all the way; ``monotone`` allows rises of at most 0.01);
- ``loop``: one run of the test-time loop (optimize.teach, default early stop at tau, lr ``--lr``): every
  preview it showed the teacher is verified (a preview holds every frame of an in-domain video, so the
  verifier reads it directly), and each question the verifier answers No that the teacher gave P(Yes) > 0.5
  counts as a false Yes, per question type; the final video is verified: an early stop (loss <= tau) on a
  failing final video is reward hacking.

    python benchmarks/teacher_alignment.py --tasks 16 --lr 2e-3            # shipped models, ~10 min, 1 thread
    python benchmarks/teacher_alignment.py --tasks 2 --out /tmp/ta        # quick
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch

import _common as C

LINE_POINTS = 11
LINE_TOLERANCE = 0.01


def interleaved_test_tasks(n: int, split: str = "test"):
    """The first ``n`` tasks of ``split``, maze and push interleaved (maze 0, push 0, maze 1, ...)."""
    from vlm_teacher.suites.grid import grid_tasks

    maze, push = grid_tasks(split, (n + 1) // 2, families=("maze",)), grid_tasks(split, (n + 1) // 2,
                                                                                families=("push",))
    return [t for pair in zip(maze, push) for t in pair][:n]


class RecordingTeacher:
    """The teacher, keeping a detached copy of every frame batch the loop shows it."""

    def __init__(self, inner) -> None:
        self.inner, self.shown = inner, []

    def yes_logprob(self, frames: torch.Tensor, questions):
        self.shown.append(frames.detach().clamp(0, 1).cpu().clone())
        return self.inner.yes_logprob(frames, questions)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads if g is not None])


def frozen_figures(reasoner, teacher, task, cfg, seed: int) -> dict[str, Any]:
    """LoRA-level gradient cosine of the teacher loss with the MSE-to-truth, and the loss along the line."""
    from vlm_teacher.objective import weighted_loss
    from vlm_teacher.reasoner.base import uniform_frame_indices
    from vlm_teacher.suites.grid.oracle import ground_truth_frames
    from vlm_teacher.suites.grid.questions import grid_queries

    questions = grid_queries(task).all
    cond = reasoner.prepare(task.prompt, task.first_frame(), seed, **task.video_shape())
    idx = uniform_frame_indices(cond.num_frames, cfg.num_frames_shown)
    params = reasoner.add_lora(rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=cfg.lora_targets, seed=seed)
    try:
        frames = reasoner.preview(reasoner.predict_x0(cond, mode=cfg.x0_mode), idx)
        truth = ground_truth_frames(task, idx).to(frames)
        teacher_loss = weighted_loss(teacher.yes_logprob(frames, questions), cfg.lam)
        g_teacher = _flat(torch.autograd.grad(teacher_loss, params, retain_graph=True, allow_unused=True))
        g_truth = _flat(torch.autograd.grad((frames - truth).pow(2).mean(), params, allow_unused=True))
        cosine = float(torch.nn.functional.cosine_similarity(g_teacher, g_truth, dim=0))
        start = frames.detach().clamp(0, 1)
    finally:
        reasoner.remove_lora()
    line = []
    with torch.no_grad():
        for a in np.linspace(0.0, 1.0, LINE_POINTS):
            logp = teacher.yes_logprob((1 - a) * start + a * truth, questions)
            line.append(float(weighted_loss(logp, cfg.lam)))
    rises = np.diff(line)
    return {"cosine": round(cosine, 4), "line": [round(x, 4) for x in line],
            "line_monotone": bool((rises <= LINE_TOLERANCE).all()),
            "line_half_below_start": bool(line[LINE_POINTS // 2] < line[0]),
            "truth_below_tau": bool(line[-1] <= cfg.tau)}


def loop_figures(reasoner, teacher, task, cfg, seed: int) -> dict[str, Any]:
    """One test-time run: false Yes per question type over its previews, stop reason, final verdict."""
    from vlm_teacher.optimize import STOP_TAU, teach
    from vlm_teacher.suites.grid import verify
    from vlm_teacher.suites.grid.questions import PROCESS_TYPES, answers, grid_queries
    from vlm_teacher.video import to_uint8

    kinds = ["goal", *PROCESS_TYPES[task.family]]
    recorder = RecordingTeacher(teacher)
    try:
        result = teach(reasoner, recorder, task.to_task(), cfg, seed=seed, queries=grid_queries(task),
                       progress=False, **task.video_shape())
    finally:
        reasoner.remove_lora()
    p_yes = [e["p_yes"] for e in result.history] + ([result.final["p_yes"]] if result.final else [])
    no, false_yes = defaultdict(int), defaultdict(int)
    previews_all_yes_failing = previews_failing = 0
    for frames, p in zip(recorder.shown, p_yes):
        verdict = verify(task, to_uint8(frames))
        truth = answers(task, verdict)
        if not verdict.passed:
            previews_failing += 1
            previews_all_yes_failing += all(x > 0.5 for x in p)
        for kind, yes in zip(kinds, p):
            if not truth[kind]:
                no[kind] += 1
                false_yes[kind] += yes > 0.5
    final = verify(task, to_uint8(result.video))
    early = result.stop_reason == STOP_TAU
    return {"updates": result.updates, "early_stop": early, "final_passed": bool(final.passed),
            "hacked": bool(early and not final.passed), "previews": len(p_yes), "previews_failing": previews_failing,
            "previews_all_yes_failing": previews_all_yes_failing,
            "verifier_no": dict(no), "false_yes": dict(false_yes),
            "final_loss": result.final_loss, "seconds": round(result.seconds["total"], 1)}


def frozen_pass(reasoner, task, seed: int) -> bool:
    from vlm_teacher.suites.grid import verify
    from vlm_teacher.video import to_uint8

    with torch.no_grad():
        cond = reasoner.prepare(task.prompt, task.first_frame(), seed, **task.video_shape())
        return bool(verify(task, to_uint8(reasoner.generate(cond))).passed)


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue-15 figures over all tasks."""
    no, fy = defaultdict(int), defaultdict(int)
    for r in rows:
        for k, v in r["verifier_no"].items():
            no[k] += v
            fy[k] += r["false_yes"].get(k, 0)
    early = [r for r in rows if r["early_stop"]]
    cos = [r["cosine"] for r in rows]
    n = len(rows)
    return {
        "tasks": n,
        "false_yes_rate": {k: round(fy[k] / no[k], 3) for k in sorted(no)},
        "false_yes": {k: f"{fy[k]}/{no[k]}" for k in sorted(no)},
        "cosine_mean": round(float(np.mean(cos)), 4), "cosine_positive": sum(c > 0 for c in cos),
        "line_monotone": sum(r["line_monotone"] for r in rows),
        "line_half_below_start": sum(r["line_half_below_start"] for r in rows),
        "truth_below_tau": sum(r["truth_below_tau"] for r in rows),
        "line_mean": [round(float(x), 4) for x in np.mean([r["line"] for r in rows], axis=0)],
        "early_stops": len(early), "early_stops_failing": sum(r["hacked"] for r in early),
        "reward_hacking": sum(r["hacked"] for r in rows),
        "previews_failing": sum(r["previews_failing"] for r in rows),
        "previews_all_yes_failing": sum(r["previews_all_yes_failing"] for r in rows),
        "tto_pass": sum(r["final_passed"] for r in rows), "frozen_pass": sum(r["frozen_pass"] for r in rows),
    }


def write_into_card(folder: str, alignment: dict[str, Any]) -> None:
    import json
    from pathlib import Path

    from vlm_teacher.files import write_json
    from vlm_teacher.recipes.grid_teacher import EVAL_NAME
    from vlm_teacher.recipes.teacher_eval import write_model_card

    path = Path(folder) / EVAL_NAME
    figures = json.loads(path.read_text(encoding="utf-8"))
    figures["alignment"] = alignment
    write_json(path, figures)
    write_model_card(Path(folder), figures, f"vlm-teacher train teacher --out {folder}")


def main(argv: list[str] | None = None) -> int:
    from vlm_teacher.embedded import REASONER_DIR, TEACHER_DIR

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reasoner", default=str(REASONER_DIR))
    p.add_argument("--teacher", default=str(TEACHER_DIR))
    p.add_argument("--tasks", type=int, default=16, help="grid:test tasks, maze and push interleaved (default %(default)s)")
    p.add_argument("--lr", type=float, default=None,
                   help="the loop's learning rate (default: the reasoner folder's tto.json, else TTOConfig's)")
    p.add_argument("--fixed-steps", type=int, default=None,
                   help="run the loop for exactly this many updates, no early stop (default: the early stop at tau)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="teacher_alignment", help="results/<out>.md and .json (a path: written there)")
    p.add_argument("--card", action="store_true",
                   help="also write the summary into the teacher folder's eval.json (\"alignment\") and "
                        "rewrite its MODEL_CARD.md from it")
    a = p.parse_args(argv)
    if a.tasks <= 0:
        p.error("--tasks must be positive")
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()

    from vlm_teacher.identity import model_id
    from vlm_teacher.optimize import tto_config
    from vlm_teacher.reasoner import load_reasoner
    from vlm_teacher.teacher import load_teacher

    reasoner, teacher = load_reasoner(a.reasoner), load_teacher(a.teacher)
    changes = {k: v for k, v in (("lr", a.lr), ("fixed_steps", a.fixed_steps)) if v is not None}
    cfg = tto_config(changes or None, a.reasoner)
    rows = []
    for task in interleaved_test_tasks(a.tasks):
        row = {"task": task.id, "frozen_pass": frozen_pass(reasoner, task, a.seed)}
        row |= frozen_figures(reasoner, teacher, task, cfg, a.seed)
        row |= loop_figures(reasoner, teacher, task, cfg, a.seed)
        rows.append(row)
        print(f"{task.id}: cosine {row['cosine']:+.3f}, line {row['line'][0]:.2f} -> {row['line'][5]:.2f} -> "
              f"{row['line'][-1]:.2f}, {row['updates']} updates, early stop {row['early_stop']}, "
              f"final pass {row['final_passed']}, false Yes {row['false_yes']} of No {row['verifier_no']} "
              f"({row['seconds']} s)", flush=True)
    s = summary(rows)
    kinds = list(s["false_yes_rate"])
    table = [
        f"## Summary ({s['tasks']} grid:test tasks, seed {a.seed}, lr {cfg.lr:g}, tau {cfg.tau}, lam {cfg.lam})", "",
        C.markdown_table([{"figure": k, "value": v} for k, v in (
            *((f"false-Yes rate on loop previews, {k}", f"{s['false_yes_rate'][k]:.3f} ({s['false_yes'][k]})")
              for k in kinds),
            ("LoRA-level gradient cosine with MSE-to-truth, mean", f"{s['cosine_mean']:+.3f}"),
            ("  tasks with cosine > 0", f"{s['cosine_positive']}/{s['tasks']}"),
            ("loss falls all the way preview -> truth", f"{s['line_monotone']}/{s['tasks']}"),
            ("loss at the midpoint below the start", f"{s['line_half_below_start']}/{s['tasks']}"),
            ("truth itself satisfies the teacher (loss <= tau)", f"{s['truth_below_tau']}/{s['tasks']}"),
            ("early stops on a failing video (reward hacking)", f"{s['early_stops_failing']}/{s['early_stops']}"),
            ("loop previews failing the verifier with every P(Yes) > 0.5",
             f"{s['previews_all_yes_failing']}/{s['previews_failing']}"),
            ("final video passes: tto / frozen", f"{s['tto_pass']}/{s['tasks']} / {s['frozen_pass']}/{s['tasks']}"),
        )], [("figure", "figure"), ("value", "value")]),
        "", "Mean teacher loss along frozen preview -> ground truth (11 points): "
        + ", ".join(f"{x:.2f}" for x in s["line_mean"]),
        "", "## Per task", "",
        C.markdown_table(rows, [("task", "task"), ("cosine", "cosine"), ("line_monotone", "line falls"),
                                ("updates", "updates"), ("early_stop", "early stop"), ("final_passed", "tto pass"),
                                ("frozen_pass", "frozen pass"), ("previews_failing", "failing previews"),
                                ("seconds", "s")]),
    ]
    command = "python benchmarks/teacher_alignment.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    notes = [f"Models: reasoner {a.reasoner} ({model_id(a.reasoner)}), teacher {a.teacher} ({model_id(a.teacher)}).",
             "Tasks: the first of grid:test, maze and push interleaved; no task picked by outcome.",
             f"Whole run: {time.perf_counter() - t_start:.0f} s."]
    path = C.write_results(a.out, "Teacher alignment: its answers and gradient on the loop's own previews",
                           command.strip(), "\n".join(table), rows, {"machine": C.machine(), "summary": s,
                                                                     "lr": cfg.lr, "tau": cfg.tau}, notes)
    print("\n".join(table))
    print(f"written {path}")
    if a.card:
        write_into_card(a.teacher, {"command": command.strip(), "reasoner": a.reasoner, "lr": cfg.lr, **s})
        print(f"written the alignment figures into {a.teacher}/eval.json and MODEL_CARD.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
