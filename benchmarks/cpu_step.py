"""CPU benchmark of the grid defaults: seconds per step, per instance, peak memory.

CI runs it (``make bench-cpu``, from ``.ci/run``, writing to a scratch path) as a smoke
check: it asserts no times. It runs the real loop (``optimize.teach``) with the paper's settings (TTOConfig
defaults: K = 24, rank 16, lr 5e-5, lambda 0.5) on one grid task (96x96, 9 frames),
with a fixed budget of 16 steps (the paper's average) so the instance cost is
comparable: queries written by the teacher + 16 steps + the final generation. It also
times the frozen generation (no LoRA) for the ratio.

Models: the embedded default (``src/vlm_teacher/embedded/grid-wan`` and ``grid-qwen``)
when both are there, else tiny random models of the grid size built with
``vlm_teacher.testing`` and loaded from disk through the same adapters. The table
says which. Finishes in about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import _common as C

from vlm_teacher.optimize import TTOConfig, teach

COLUMNS = [("models", "models"), ("size", "size"), ("frames", "F"), ("k", "K"), ("questions", "Q"),
           ("steps", "steps"), ("step_s", "step s (median)"), ("step_cpu_s", "step CPU s"), ("first_step_s", "first step s"),
           ("queries_s", "queries s"), ("final_gen_s", "final gen s"), ("instance_s", "instance s"),
           ("frozen_gen_s", "frozen gen s"), ("ratio", "instance / frozen"), ("rss_before_mib", "RSS before MiB"),
           ("peak_rss_mib", "peak RSS MiB")]


def load_models(tmp: Path, force_random: bool):
    from vlm_teacher.reasoner.wan import WanReasoner
    from vlm_teacher.teacher.qwen import QwenVLTeacher

    if not force_random:
        try:
            from vlm_teacher.embedded import reasoner_path, teacher_path

            r, t = reasoner_path(), teacher_path()
            return WanReasoner.from_pretrained(r), QwenVLTeacher.from_pretrained(t), "embedded"
        except Exception as exc:  # noqa: BLE001 - missing or unreadable: fall back, say why
            print(f"embedded models not used ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                  "building tiny random ones", flush=True)
    from vlm_teacher.testing.tiny_qwen import build_tiny_qwen_vl
    from vlm_teacher.testing.tiny_wan import build_tiny_wan_pipeline

    wan = build_tiny_wan_pipeline(tmp / "wan", num_frames=9, height=96, width=96, fps=8)
    qwen = build_tiny_qwen_vl(tmp / "qwen", arch="qwen3_vl", max_pixels=128 * 128)
    return WanReasoner.from_pretrained(wan), QwenVLTeacher.from_pretrained(qwen), "tiny random"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="CPU benchmark of the grid defaults (no time is asserted)")
    p.add_argument("--steps", type=int, default=16, help="fixed optimisation steps (paper average: 16)")
    p.add_argument("--random", action="store_true", help="use tiny random models even if embedded ones exist")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: steady on a shared CPU, where more threads spin and stall)")
    p.add_argument("--out", type=Path, default=C.RESULTS / "cpu_step",
                   help="writes OUT.md and OUT.json (default: the committed benchmarks/results/cpu_step; "
                        "`make bench-cpu` and CI give a scratch path, so they change no tracked file)")
    a = p.parse_args(argv)
    command = ("python benchmarks/cpu_step.py " + " ".join(shlex.quote(x) for x in (argv if argv is not None
                                                                                     else sys.argv[1:]))).strip()
    if a.threads:
        torch.set_num_threads(a.threads)
    from vlm_teacher.suites.grid import grid_tasks

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        reasoner, teacher, which = load_models(Path(tmp), a.random)
    grid = grid_tasks("test", n=1, families=("maze",), seed=0)[0]
    task = grid.to_task()
    cfg = TTOConfig(fixed_steps=a.steps)
    device = torch.device("cpu")

    # frozen generation (warm-up once, then timed)
    cond = reasoner.prepare(task.prompt, task.first_frame, 0, num_frames=grid.num_frames)
    reasoner.generate(cond)
    t0 = time.perf_counter()
    reasoner.generate(cond)
    frozen = time.perf_counter() - t0

    rss_before = C.rss_peak_mib()
    marks: list[float] = []  # process CPU time whenever a step's record completes
    res = teach(reasoner, teacher, task, cfg, seed=0, num_frames=grid.num_frames, progress=False,
                on_step=lambda e: marks.append(time.process_time()))
    secs = [e["seconds"] for e in res.history]
    cpu = [b - c for c, b in zip(marks, marks[1:])]
    cpu = cpu[:-1] if not reasoner.sync_grad_norm else cpu  # lazily the last window holds only the last backward
    row: dict[str, Any] = {
        "models": which, "size": f"{cond.width}x{cond.height}", "frames": cond.num_frames,
        "k": cfg.num_frames_shown, "questions": len(res.queries.all), "steps": res.steps,
        "step_s": C.median(secs[1:]) if len(secs) > 1 else secs[0], "first_step_s": secs[0],
        "step_cpu_s": C.median(cpu) if cpu else None,
        "queries_s": res.seconds["queries"], "final_gen_s": res.seconds["generate"],
        "instance_s": res.seconds["total"], "frozen_gen_s": frozen,
        "ratio": res.seconds["total"] / frozen, "rss_before_mib": rss_before, "peak_rss_mib": C.peak_mib(device),
        "step_all_s": secs, "stop_reason": res.stop_reason, "updates": res.updates,
    }
    table = C.markdown_table([row], COLUMNS)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    notes = [
        f"One grid maze task ({grid.id}), TTOConfig defaults with fixed_steps={a.steps}; instance = queries "
        "written by the teacher + the steps + the final generation; frozen gen = the same sampler and decode "
        "without a LoRA (second of two runs).",
        f"step s = median wall time of steps 2..N (step 1 apart); step CPU s = median process CPU time per "
        f"step ({a.threads} thread(s): the compute, without the waiting for a shared CPU); peak RSS = the process's resident-set high-water mark "
        "(imports and model building included); RSS before = the same mark just before the instance.",
        "Models: " + ("the embedded default (src/vlm_teacher/embedded)." if which == "embedded" else
                      "tiny random Wan (1 layer, VAE base 16) and Qwen3-VL (2 layers, hidden 64) from "
                      "vlm_teacher.testing (the embedded reasoner and teacher were not both present)."),
        f"Machine load average while running: {tuple(round(x, 2) for x in load) if load else 'n/a'} "
        "(shared CPU: times vary with other work).",
        f"Whole benchmark: {time.perf_counter() - t_start:.0f} s.",
    ]
    path = C.write_results(a.out.name, "CPU step benchmark (grid defaults)", command, table, [row],
                           {"machine": C.machine(), "loadavg": load, "config": res.config}, notes,
                           out_dir=a.out.parent)
    print(table)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
