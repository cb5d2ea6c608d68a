"""The frozen reasoner on validation tasks: grid train-split tasks the reasoner recipe never trains on.

`vlm-teacher train reasoner` trains on the first ``--train-tasks`` (default 800) train-split tasks
per family; the tasks after them come from the same generator and were never seen, so they can
choose between two training runs without looking at grid:test. Per folder: pass rate and mean
verifier score (seed 0), by family, and the first broken rule of the failing videos.

    python benchmarks/grid_validation.py src/vlm_teacher/embedded/grid-wan /tmp/run/model   # ~1 min a folder
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import _common as C


def first_rule(reason: str) -> str:
    """'frame 1: 2 agents visible (expected exactly 1)' -> '2 agents visible'; the cell-colour and
    jump reasons lose their coordinates and distances so that they count together."""
    text = reason.split(": ", 1)[-1]
    if "unknown colour" in text:
        return "unknown colour"
    if "jumped" in text:
        return "jump"
    return text.split(" (")[0]


def evaluate(folder: str, start: int, n: int, seed: int) -> dict:
    from vlm_teacher.identity import model_id
    from vlm_teacher.reasoner import load_reasoner
    from vlm_teacher.suites.grid import FAMILIES, verify
    from vlm_teacher.suites.grid.generate import make_task
    from vlm_teacher.video import to_uint8

    reasoner = load_reasoner(folder)
    rows = []
    for family in FAMILIES:
        for i in range(start, start + n):
            task = make_task(family, "train", i, 0)
            cond = reasoner.prepare(task.prompt, task.first_frame(), seed, **task.video_shape())
            v = verify(task, to_uint8(reasoner.generate(cond)))
            rows.append({"family": family, "passed": v.passed, "score": v.score, "reason": v.reason})
    fails = Counter(first_rule(r["reason"]) for r in rows if not r["passed"])
    out = {"folder": folder, "id": model_id(folder), "tasks": len(rows),
           "pass_rate": sum(r["passed"] for r in rows) / len(rows),
           "mean_score": sum(r["score"] for r in rows) / len(rows),
           "first_broken_rules": ", ".join(f"{k} {v}" for k, v in fails.most_common(4))}
    for family in FAMILIES:
        mine = [r for r in rows if r["family"] == family]
        out[f"{family}_pass"] = sum(r["passed"] for r in mine) / len(mine)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="+", help="reasoner pipeline folders")
    p.add_argument("--start", type=int, default=800,
                   help="first train-split task index per family (default %(default)s: the recipe's --train-tasks)")
    p.add_argument("--tasks", type=int, default=50, help="tasks per family (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also write results/<out>.md and .json (a path: written there)")
    a = p.parse_args(argv)
    if a.tasks <= 0 or a.start < 0:
        p.error("--tasks must be positive and --start >= 0")
    import torch

    torch.set_num_threads(a.threads)
    rows = []
    for folder in a.folders:
        rows.append(evaluate(folder, a.start, a.tasks, a.seed))
        r = rows[-1]
        print(f"{r['id']}: pass {r['pass_rate']:.0%} (maze {r['maze_pass']:.0%}, push {r['push_pass']:.0%}), "
              f"score {r['mean_score']:.3f}; failing: {r['first_broken_rules']}", flush=True)
    table = C.markdown_table([{**r, "pass_rate": f"{r['pass_rate']:.0%}", "maze_pass": f"{r['maze_pass']:.0%}",
                               "push_pass": f"{r['push_pass']:.0%}", "mean_score": f"{r['mean_score']:.3f}"}
                              for r in rows],
                             [("id", "reasoner"), ("tasks", "tasks"), ("pass_rate", "pass"), ("maze_pass", "maze"),
                              ("push_pass", "push"), ("mean_score", "score"),
                              ("first_broken_rules", "first broken rule of the failing videos")])
    print(table)
    if a.out:
        command = "python benchmarks/grid_validation.py " + " ".join(sys.argv[1:] if argv is None else argv)
        path = C.write_results(a.out, "Frozen reasoners on unseen train-split tasks (validation)", command, table,
                               rows, {"machine": C.machine(), "start": a.start, "tasks_per_family": a.tasks},
                               [f"Tasks: train split, indices {a.start}-{a.start + a.tasks - 1} per family, "
                                "never in the recipe's training set; seed 0."])
        print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
