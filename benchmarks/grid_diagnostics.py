"""Why the test-time method does or does not gain on the grid suite: figures about the models.

Everything is judged by the pixel verifier; nothing here trains or changes a model.

- ``oracle``: N seeds of the frozen reasoner per task; how many pass, the best score,
  oracle pass@N (is there a legal video to find at all?), and the first broken rule of seed 0;
  and, over all N samples, where the agents stand in the first frame that shows two or more
  (on the ground-truth cell of that frame, elsewhere on the solution path, or off it: a
  hedge between the right move and a wrong branch, or a left-behind copy?);
- ``teacher``: on those same samples, the teacher's P(Yes) per question type, apart for
  samples the verifier passes and fails (does the teacher tell a legal video from an
  almost-legal one, question by question?);
- ``sampler``: the frozen pass rate and mean score over flow shifts x sampler steps
  (is the few-step sampler the limit, or the model?);
- ``fit``: the same on train tasks the reasoner was trained on vs held-out test tasks
  (does it fail to generalise, or to fit?).

    python benchmarks/grid_diagnostics.py                      # embedded models, ~10 min on 1 CPU thread
    python benchmarks/grid_diagnostics.py --tasks 2 --seeds 2 --shifts 2 --steps 4 --out /tmp/d   # quick
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections import Counter
from typing import Any

import numpy as np
import torch

import _common as C


def _sample(reasoner, task, seed: int, *, steps: int | None = None):
    cond = reasoner.prepare(task.prompt, task.first_frame(), seed, steps=steps, **task.video_shape())
    return reasoner.generate(cond)


def oracle_and_teacher(reasoner, teacher, tasks, seeds: int) -> tuple[list[dict], dict[str, dict], Counter]:
    """Per task: passes among ``seeds`` samples, best score, seed 0's first broken rule; the
    teacher's P(Yes) per question type on passing / failing samples; and how often each
    combination of ``extra_agent_places`` turned up among all samples."""
    from vlm_teacher.methods import candidate_seeds
    from vlm_teacher.suites.grid import verify
    from vlm_teacher.suites.grid.questions import PROCESS_TYPES, grid_queries
    from vlm_teacher.video import to_uint8

    rows, p_yes, places = [], {"pass": [], "fail": []}, Counter()  # (question type, P(Yes)) pairs
    for task in tasks:
        kinds = ["goal", *PROCESS_TYPES[task.family]]
        queries = grid_queries(task).all
        verdicts = []
        for i, seed in enumerate(candidate_seeds(0, seeds)):
            video = _sample(reasoner, task, seed)
            v = verify(task, to_uint8(video))
            verdicts.append(v)
            where = extra_agent_places(task, video)
            if where is not None:
                places[" + ".join(where)] += 1
            if teacher is not None:
                probs = teacher.yes_prob_no_grad(video, queries).tolist()
                p_yes["pass" if v.passed else "fail"] += list(zip(kinds, probs))
        rows.append({"task": task.id, "moves": len(task.solution), "samples": seeds,
                     "passed": sum(v.passed for v in verdicts), "best_score": max(v.score for v in verdicts),
                     "seed0": "pass" if verdicts[0].passed else verdicts[0].reason.split(":")[0] + ": "
                     + _rule(verdicts[0])})
        print(f"  {task.id}: {rows[-1]['passed']}/{seeds} pass, best {rows[-1]['best_score']:.3f}", flush=True)
    teacher_rows = {}
    for outcome, pairs in p_yes.items():
        by_kind: dict[str, list[float]] = {}
        for kind, p in pairs:
            by_kind.setdefault(kind, []).append(p)
        teacher_rows[outcome] = {k: (float(np.mean(v)), len(v)) for k, v in by_kind.items()}
    return rows, teacher_rows, places


AGENT_PLACES = ("right cell", "previous cell", "later on the path", "earlier on the path", "off the path")


def extra_agent_places(task, video) -> tuple[str, ...] | None:
    """Where the agents of the first frame with two or more stand in ``video`` (the reasoner's
    (T, 3, H, W) float frames), relative to the ground truth: sorted ``AGENT_PLACES`` names, one
    per agent, or None when no frame shows two."""
    from vlm_teacher.suites.grid.verify import read_states
    from vlm_teacher.video import to_uint8

    path = [s.agent for s in task.states()]
    frames = read_states(task, to_uint8(video))  # the verifier's own reading of every cell
    for t in range(1, len(frames)):
        agents = frames[t].agents
        if len(agents) < 2:
            continue
        now, before = path[min(t, len(path) - 1)], path[min(t - 1, len(path) - 1)]
        places = []
        for cell in agents:
            if cell == now:
                places.append("right cell")
            elif cell == before:
                places.append("previous cell")
            elif cell in path[t + 1:]:
                places.append("later on the path")
            elif cell in path:
                places.append("earlier on the path")
            else:
                places.append("off the path")
        return tuple(sorted(places, key=AGENT_PLACES.index))
    return None


def _rule(verdict) -> str:
    failures = verdict.details.get("failures") or []
    return failures[0]["rule"] if failures else "-"


def pass_and_score(reasoner, tasks, *, steps: int | None = None, seeds: int = 1) -> tuple[float, float]:
    from vlm_teacher.suites.grid import verify
    from vlm_teacher.video import to_uint8

    vs = [verify(t, to_uint8(_sample(reasoner, t, s, steps=steps))) for t in tasks for s in range(seeds)]
    return float(np.mean([v.passed for v in vs])), float(np.mean([v.score for v in vs]))


def main(argv: list[str] | None = None) -> int:
    from vlm_teacher.embedded import REASONER_DIR, TEACHER_DIR

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reasoner", default=str(REASONER_DIR))
    p.add_argument("--teacher", default=str(TEACHER_DIR), help="'' to skip the teacher figures")
    p.add_argument("--tasks", type=int, default=10, help="grid:test tasks per family (default %(default)s)")
    p.add_argument("--seeds", type=int, default=32, help="samples per task for oracle pass@N (default %(default)s)")
    p.add_argument("--shifts", default="0.5,1,2,4,8", help="flow shifts of the sampler sweep")
    p.add_argument("--steps", default="4,8,16", help="sampler steps of the sweep")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="grid_diagnostics", help="results/<out>.md and .json (a path: written there)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()

    from vlm_teacher.reasoner import load_reasoner
    from vlm_teacher.recipes.grid_videos import train_tasks
    from vlm_teacher.suites.grid import grid_tasks

    reasoner = load_reasoner(a.reasoner)
    teacher = None
    if a.teacher:
        from vlm_teacher.teacher import load_teacher
        teacher = load_teacher(a.teacher)
    test = grid_tasks("test", n=a.tasks)

    print(f"oracle pass@{a.seeds} and teacher P(Yes) on {len(test)} test tasks", flush=True)
    oracle_rows, teacher_rows, places = oracle_and_teacher(reasoner, teacher, test, a.seeds)

    print("sampler sweep", flush=True)
    default_shift = reasoner.flow_shift
    sweep = []
    for shift in (float(x) for x in a.shifts.split(",")):
        reasoner.flow_shift = shift
        for steps in (int(x) for x in a.steps.split(",")):
            rate, score = pass_and_score(reasoner, test, steps=steps, seeds=2)
            sweep.append({"shift": shift, "steps": steps, "pass_rate": rate, "mean_score": score})
            print(f"  shift {shift} steps {steps}: pass {rate:.3f} score {score:.3f}", flush=True)
    reasoner.flow_shift = default_shift

    print("fit: train tasks it was trained on vs test", flush=True)
    seen = train_tasks(a.tasks)  # the first tasks of the recipe's training set
    fit = []
    for name, tasks in (("train (seen in training)", seen), ("test (held out)", test)):
        for fam in ("maze", "push"):
            rate, score = pass_and_score(reasoner, [t for t in tasks if t.family == fam])
            fit.append({"tasks": name, "family": fam, "n": sum(t.family == fam for t in tasks),
                        "pass_rate": rate, "mean_score": score})

    n_pass = sum(r["passed"] > 0 for r in oracle_rows)
    total = Counter(r["seed0"].split(": ")[-1] for r in oracle_rows)
    tables = [
        f"## Oracle pass@{a.seeds} (frozen reasoner, verifier picks): {n_pass}/{len(oracle_rows)} tasks = "
        f"{100 * n_pass / max(1, len(oracle_rows)):.0f}%",
        "",
        C.markdown_table(oracle_rows, [("task", "task"), ("moves", "moves"), ("passed", f"passing of {a.seeds}"),
                                       ("best_score", "best score"), ("seed0", "seed 0: first broken rule")]),
        "",
        "First broken rule of seed 0: " + ", ".join(f"{k} {v}" for k, v in total.most_common()),
        "",
        f"## Extra agents: where they stand in the first frame showing two or more (all {a.seeds} samples per task)",
        "",
        f"{sum(places.values())} of {a.seeds * len(oracle_rows)} samples have such a frame.",
        "",
        C.markdown_table([{"places": k, "samples": v} for k, v in places.most_common()] or [{"places": "-", "samples": 0}],
                         [("places", "the agents' cells, relative to the ground truth"), ("samples", "samples")]),
    ]
    if teacher is not None:
        kinds = ("goal", "moves", "box", "intact")
        trows = [{"samples": f"verifier {o} ({teacher_rows[o].get('goal', (0, 0))[1]})",
                  **{k: (f"{teacher_rows[o][k][0]:.2f}" if k in teacher_rows[o] else "-") for k in kinds}}
                 for o in ("pass", "fail") if teacher_rows[o]]
        tables += ["", "## Teacher mean P(Yes) per question type on the same samples", "",
                   C.markdown_table(trows, [("samples", "samples (n)"), *((k, k) for k in kinds)])]
    tables += ["", "## Sampler sweep (2 seeds per task)", "",
               C.markdown_table(sweep, [("shift", "flow shift"), ("steps", "steps"), ("pass_rate", "pass rate"),
                                        ("mean_score", "mean score")]),
               "", "## Fit: tasks seen in training vs held out (seed 0)", "",
               C.markdown_table(fit, [("tasks", "tasks"), ("family", "family"), ("n", "n"),
                                      ("pass_rate", "pass rate"), ("mean_score", "mean score")])]
    command = "python benchmarks/grid_diagnostics.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    from vlm_teacher.identity import model_id

    notes = [f"Models: reasoner {model_id(a.reasoner)}" + (f", teacher {model_id(a.teacher)}" if a.teacher else ""),
             f"Test tasks: the first {a.tasks} per family of grid:test; seeds as best_of_n draws them "
             "(methods.candidate_seeds); the sampler's own shift is "
             f"{default_shift}.",
             f"Whole run: {time.perf_counter() - t_start:.0f} s."]
    path = C.write_results(a.out, "Grid diagnostics: where the embedded models fail", command.strip(),
                           "\n".join(tables), oracle_rows,
                           {"machine": C.machine(), "teacher": teacher_rows, "extra_agents": dict(places), "sampler": sweep,
                            "fit": fit}, notes)
    print("\n".join(tables))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
