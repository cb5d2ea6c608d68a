"""How far must the reasoner's latent move to fool the teacher, and how far does the loop move it? (issue 15)

Two figures on train-split grid tasks (the teacher recipe's ``--attack-*`` options are set from them):

- ``attack``: from the frozen reasoner's first-step latent, ``--steps`` normalised gradient steps of
  root-mean-square size ``--step-size`` (the latents have unit RMS; the first latent frame, which the
  reasoner pins, is never moved) down the teacher's test-time loss (lambda-weighted -log P(Yes) of the
  suite's questions). At every point: the teacher's loss and the pixel verifier's verdict of the decoded
  video. A point with loss <= tau on a failing video is one the loop would stop on: a fooled teacher.
- ``loop`` (``--loop-updates``): the RMS distance between the frozen first-step latent and the one after
  that many updates of the real test-time loop (optimize.teach, fixed budget, lr ``--lr``).

    python benchmarks/latent_attack.py --tasks 4 --step-size 0.02                  # shipped models, ~1 min
    python benchmarks/latent_attack.py --teacher runs/t/grid-qwen --loop-updates 5,16,40 --out /tmp/la
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import Any

import numpy as np
import torch

import _common as C


def latent_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square distance of two latents over the frames the loop can move (not frame 0)."""
    return round(float((a - b)[:, :, 1:].pow(2).mean().sqrt()), 4)


def attack_row(reasoner, teacher, task, seed: int, steps: int, step_size: float, lam: float,
               tau: float) -> dict[str, Any]:
    from vlm_teacher.recipes.teacher_data import attack_loss, attack_step, first_step_latent
    from vlm_teacher.suites.grid import verify
    from vlm_teacher.suites.grid.questions import grid_queries
    from vlm_teacher.video import to_uint8

    _, z0 = first_step_latent(reasoner, task, seed)
    queries = grid_queries(task).all
    z, losses, shown = z0.float(), [], []
    for _ in range(steps):
        z_next, loss, frames = attack_step(reasoner, teacher, z, queries, step_size, lam)
        losses.append(loss)
        shown.append(frames)
        z = z_next
    with torch.no_grad():  # the last point is judged, not stepped from
        loss, frames = attack_loss(reasoner, teacher, z, queries, lam)
        losses.append(float(loss))
        shown.append(frames)
    losses = [round(x, 4) for x in losses]
    passed = [bool(verify(task, to_uint8(f.clamp(0, 1))).passed) for f in shown]
    fooled = [lo <= tau and not ok for lo, ok in zip(losses, passed)]
    return {"task": task.id, "losses": losses, "passed": passed, "start_loss": losses[0],
            "min_loss": min(losses), "fooled_at_start": fooled[0], "fooled": any(fooled),
            "first_fooled": fooled.index(True) if any(fooled) else None,
            "moved_rms": latent_rms(z, z0)}


def loop_distance(reasoner, teacher, task, seed: int, updates: int, lr: float, reasoner_dir: str) -> float:
    from vlm_teacher.optimize import teach, tto_config
    from vlm_teacher.recipes.teacher_data import first_step_latent
    from vlm_teacher.suites.grid.questions import grid_queries

    _, z0 = first_step_latent(reasoner, task, seed)
    cfg = tto_config({"lr": lr, "fixed_steps": updates}, reasoner_dir)
    try:
        teach(reasoner, teacher, task.to_task(), cfg, seed=seed, queries=grid_queries(task), progress=False,
              **task.video_shape())
        _, z1 = first_step_latent(reasoner, task, seed)  # the LoRA is still on
    finally:
        reasoner.remove_lora()
    return latent_rms(z1, z0)


def main(argv: list[str] | None = None) -> int:
    from vlm_teacher.embedded import REASONER_DIR, TEACHER_DIR

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reasoner", default=str(REASONER_DIR))
    p.add_argument("--teacher", default=str(TEACHER_DIR))
    p.add_argument("--tasks", type=int, default=4, help="train-split tasks per family (default %(default)s)")
    p.add_argument("--task-seed", type=int, default=7, help="which train tasks (grid_tasks seed; default 7)")
    p.add_argument("--seed", type=int, default=123, help="the reasoner's noise seed (default 123)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--step-size", type=float, default=0.02)
    p.add_argument("--loop-updates", default="", help="comma-separated update counts for the loop figure")
    p.add_argument("--lr", type=float, default=2e-3, help="the loop's lr for --loop-updates (default 2e-3)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="latent_attack", help="results/<out>.md and .json (a path: written there)")
    a = p.parse_args(argv)
    if a.tasks <= 0 or a.steps <= 0 or a.step_size <= 0:
        p.error("--tasks, --steps and --step-size must be positive")
    updates = [int(x) for x in a.loop_updates.split(",") if x.strip()]
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()

    from vlm_teacher.identity import model_id
    from vlm_teacher.optimize import TTOConfig
    from vlm_teacher.reasoner import load_reasoner
    from vlm_teacher.suites.grid import grid_tasks
    from vlm_teacher.teacher import load_teacher

    reasoner, teacher = load_reasoner(a.reasoner), load_teacher(a.teacher)
    cfg = TTOConfig()
    rows = []
    for task in grid_tasks("train", a.tasks, seed=a.task_seed):
        row = attack_row(reasoner, teacher, task, a.seed, a.steps, a.step_size, cfg.lam, cfg.tau)
        for n in updates:
            row[f"loop_rms_{n}"] = loop_distance(reasoner, teacher, task, a.seed, n, a.lr, a.reasoner)
        rows.append(row)
        print(task.id, " ".join(f"{lo:.2f}{'P' if ok else 'f'}" for lo, ok in zip(row["losses"], row["passed"])),
              *(f"loop {n}: {row[f'loop_rms_{n}']}" for n in updates), flush=True)
    n = len(rows)
    high = [r for r in rows if r["start_loss"] > 1.0]
    summary = {
        "tasks": n, "fooled_at_start": sum(r["fooled_at_start"] for r in rows),
        "fooled_within_steps": sum(r["fooled"] for r in rows),
        "from_above_1_to_below_0.05_failing": sum(
            any(lo < 0.05 and not ok for lo, ok in zip(r["losses"], r["passed"])) for r in high),
        "start_above_1": len(high),
        "moved_rms_mean": round(float(np.mean([r["moved_rms"] for r in rows])), 4),
        **{f"loop_rms_{k}": [r[f"loop_rms_{k}"] for r in rows] for k in updates},
    }
    table = "\n".join([
        f"## Summary ({n} train tasks, noise seed {a.seed}, {a.steps} steps of RMS {a.step_size:g}, tau {cfg.tau})", "",
        C.markdown_table([{"figure": k, "value": v} for k, v in summary.items()], [("figure", "figure"),
                                                                                    ("value", "value")]),
        "", "## Per task (teacher loss at each point; P = the verifier passes the decoded video)", "",
        C.markdown_table([{"task": r["task"], "trajectory": " ".join(
            f"{lo:.2f}{'P' if ok else 'f'}" for lo, ok in zip(r["losses"], r["passed"])),
            "moved": r["moved_rms"], **{f"loop {k}": r[f"loop_rms_{k}"] for k in updates}} for r in rows],
            [("task", "task"), ("trajectory", "trajectory"), ("moved", "latent RMS moved"),
             *((f"loop {k}", f"loop RMS after {k} updates") for k in updates)]),
    ])
    command = "python benchmarks/latent_attack.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    notes = [f"Models: reasoner {a.reasoner} ({model_id(a.reasoner)}), teacher {a.teacher} ({model_id(a.teacher)}).",
             f"Whole run: {time.perf_counter() - t_start:.0f} s."]
    path = C.write_results(a.out, "Latent attacks on the teacher", command.strip(), table, rows,
                           {"machine": C.machine(), "summary": summary}, notes)
    print(table)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
