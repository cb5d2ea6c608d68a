"""Each performance switch measured before/after, on the CPU at reduced size.

Every variant runs in its own process (so the resident-memory peak is its own): the
real loop (``optimize.teach``, fixed budget, queries given) on random-weight models of
the ``wan-small`` / ``qwen3-vl-small`` presets, 13 frames at 192x192, K = 8, one goal
and three process questions. It reports the median step time over steps 2..N, the
first step, and the peak RSS measured at the end of the last step (before the final
generation). The rows pair each switch's "off" and "on"; the baseline has every
switch at its library default.

    python benchmarks/switches.py                 # all variants, writes results/switches.md
    python benchmarks/switches.py --only vae_ckpt,surrogate

CPU figures show the direction and the size of an effect on this machine only; the
GPU ones come from ``full_size.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import _common as C

#: name -> (what it toggles, settings of the "off" run, settings of the "on" run)
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "transformer_ckpt": ("Wan transformer gradient checkpointing (WanReasoner.grad_checkpointing)",
                         {"transformer_ckpt": False}, {"transformer_ckpt": True}),
    "teacher_ckpt": ("VLM gradient checkpointing, language model + vision tower (QwenVLTeacher.grad_checkpointing)",
                     {"teacher_ckpt": False}, {"teacher_ckpt": True}),
    "vae_ckpt": ("per-latent-frame checkpointing of the VAE preview decode (WanReasoner.vae_checkpointing)",
                 {"vae_ckpt": False}, {"vae_ckpt": True}),
    "needed_only": ("decode only the latent frames the K frames need (WanReasoner.preview_needed_only)",
                    {"needed_only": False}, {"needed_only": True}),
    "surrogate": ("tiny surrogate preview decoder instead of the VAE (WanReasoner.preview_decoder)",
                  {"surrogate": False}, {"surrogate": True}),
    "batch_questions": ("vision once + questions batched vs one VLM forward per question "
                        "(QwenVLTeacher.batch_questions)", {"batch_questions": False}, {"batch_questions": True}),
    "share_prefix": ("questions share the video prefix in one LM sequence vs one padded row per question "
                     "(QwenVLTeacher.share_prefix)", {"share_prefix": False}, {"share_prefix": True}),
    "bf16": ("bfloat16 models, float32 logits and LoRA (dtype) vs float32", {"dtype": "float32"},
             {"dtype": "bfloat16"}),
    "compile": ("torch.compile of the Wan transformer blocks (WanReasoner.compile)", {"compile": False},
                {"compile": True}),
    "one_sync": ("one host sync per step: grad norm read lazily (reasoner.sync_grad_norm=False) vs on the "
                 "host right after backward (True)", {"sync_grad_norm": True}, {"sync_grad_norm": False}),
}
DEFAULTS = {"transformer_ckpt": False, "teacher_ckpt": False, "vae_ckpt": False, "needed_only": True,
            "surrogate": False, "batch_questions": True, "share_prefix": True, "dtype": "float32", "compile": False,
            "sync_grad_norm": False}
SIZE, FRAMES, K = 192, 13, 8
COLUMNS = [("switch", "switch"), ("setting", "setting"), ("step_cpu_s", "step CPU s"),
           ("step_s", "step wall s"), ("first_step_s", "first step wall s"), ("peak_rss_mib", "peak RSS MiB"),
           ("delta_step", "step CPU vs off"), ("delta_rss", "RSS vs off")]


def run_variant(settings: dict[str, Any], steps: int, threads: int) -> dict[str, Any]:
    """One measurement in this process (called in a child process)."""
    import numpy as np

    torch.set_num_threads(threads)
    from vlm_teacher.optimize import TTOConfig, teach
    from vlm_teacher.perf.presets import build_qwen_teacher, build_wan_reasoner, random_prompt_embeds
    from vlm_teacher.reasoner.surrogate import TinyWanDecoder
    from vlm_teacher.task import Queries, Task

    s = {**DEFAULTS, **settings}
    dtype = getattr(torch, s["dtype"])
    reasoner = build_wan_reasoner("wan-small", "cpu", dtype, seed=0)
    teacher = build_qwen_teacher("qwen3-vl-small", "cpu", dtype, seed=0)
    reasoner.grad_checkpointing = s["transformer_ckpt"]
    reasoner.vae_checkpointing = s["vae_ckpt"]
    reasoner.preview_needed_only = s["needed_only"]
    if s["surrogate"]:
        torch.manual_seed(0)
        reasoner.use_preview_decoder(TinyWanDecoder(latent_channels=48, patch=2, widths=(64, 32, 16, 16)))
    if s["compile"]:
        reasoner.compile = True
    teacher.grad_checkpointing = s["teacher_ckpt"]
    teacher.batch_questions = s["batch_questions"]
    teacher.share_prefix = s["share_prefix"]

    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    prompt = "Move the blue agent to the green square."
    reasoner.set_prompt_embeds(prompt, random_prompt_embeds(reasoner))
    queries = Queries(goal="Does the agent reach the green square?",
                      process=("Does it move one cell per step?", "Does it avoid walls?", "Do walls stay?"))
    reasoner.sync_grad_norm = s["sync_grad_norm"]
    cfg = TTOConfig(fixed_steps=steps, num_frames_shown=K)
    marks: list[tuple[float, float]] = []  # (process CPU seconds, RSS peak) whenever a step's record completes
    res = teach(reasoner, teacher, Task(id="switch", prompt=prompt, first_frame=first), cfg, seed=0,
                queries=queries, num_frames=FRAMES, progress=False,
                on_step=lambda e: marks.append((time.process_time(), C.rss_peak_mib())))
    secs = [e["seconds"] for e in res.history]
    cpu = [b[0] - a[0] for a, b in zip(marks, marks[1:])]  # one full step per window (steps 2..N)
    if not s["sync_grad_norm"]:
        # lazily, step s's record completes at step s+1's sync, the last one after the loop:
        # the last window holds only the last backward
        cpu = cpu[:-1]
    return {"step_s": C.median(secs[1:]), "first_step_s": secs[0], "step_all_s": secs,
            "step_cpu_s": C.median(cpu) if cpu else None, "step_cpu_all_s": cpu,
            "peak_rss_mib": max(m[1] for m in marks), "skipped": sum(1 for e in res.history if e.get("skipped"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="before/after of each performance switch (CPU, reduced size)")
    p.add_argument("--only", help="comma-separated switches (default: all): " + ",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=4, help="steps per run (median over steps 2..N)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    p.add_argument("--out", default="switches")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print("RESULT " + json.dumps(run_variant(json.loads(a.child), a.steps, a.threads)), flush=True)
        return 0
    command = ("python benchmarks/switches.py " + " ".join(shlex.quote(x) for x in (argv if argv is not None
                                                                                     else sys.argv[1:]))).strip()
    torch.set_num_threads(a.threads)  # what the machine line reports; each child sets it too
    names = [n for n in (a.only.split(",") if a.only else VARIANTS) if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown switches {unknown}; choose from {list(VARIANTS)}")
    rows: list[dict[str, Any]] = []
    loads = []
    for name in names:
        what, off, on = VARIANTS[name]
        results = {}
        for label, settings in (("off", off), ("on", on)):
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(settings), "--steps",
                                   str(a.steps), "--threads", str(a.threads)], capture_output=True, text=True,
                                  cwd=C.ROOT.parent)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                results[label] = {"error": " | ".join(tail)}
            else:
                results[label] = json.loads(line[len("RESULT "):])
            loads.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
            print(f"{name} {label}: {results[label]} ({time.perf_counter() - t0:.0f}s)", flush=True)
        for label, settings in (("off", off), ("on", on)):
            r = results[label]
            row = {"switch": name, "what": what, "setting": label, "settings": settings, **r}
            if label == "on" and "error" not in r and "error" not in results["off"]:
                row["delta_step"] = f"{r['step_cpu_s'] / results['off']['step_cpu_s']:.2f}x"
                row["delta_rss"] = f"{r['peak_rss_mib'] - results['off']['peak_rss_mib']:+.0f} MiB"
            if "error" in r:
                row["step_s"] = None
                row["delta_step"] = "error: " + r["error"][:80]
            rows.append(row)
    table = C.markdown_table(rows, COLUMNS)
    base = [r["step_cpu_s"] for r in rows if r.get("step_cpu_s") is not None
            and all(DEFAULTS.get(k) == v for k, v in r["settings"].items())]
    legend = [f"`{n}`: {VARIANTS[n][0]}" for n in names]
    notes = [
        "Models: random weights of the `wan-small` (4 layers, 4x48 heads, VAE base 24/32) and `qwen3-vl-small` "
        f"(4 layers, hidden 256; vision depth 4, hidden 128) presets; {FRAMES} frames at {SIZE}x{SIZE}, K = {K}, Q = 4 questions, {a.steps} steps of optimize.teach, "
        f"{a.threads} CPU thread(s), each run in its own process; every other switch at its default "
        f"({DEFAULTS}).",
        "step CPU s = median CPU time of the process per step (steps 2..N; with one thread this is the "
        "compute, not the waiting for a shared CPU); step wall s = median wall time (steps 2..N).",
        "peak RSS = the process's resident-set high-water mark at the end of the last step (imports and "
        "models included, so differences, not levels, are the signal).",
        f"Load average (1 min) during the runs: min {min(x for x in loads if x is not None):.1f}, "
        f"max {max(x for x in loads if x is not None):.1f} on {os.cpu_count()} logical CPUs shared with "
        "other work: step times carry that noise." if any(x is not None for x in loads) else "",
        (f"Noise: the library-default configuration appears in {len(base)} rows; its step CPU s ranged from "
         f"{min(base):.2f} to {max(base):.2f}. Differences inside that spread are not effects."
         if len(base) > 1 else ""),
        *legend,
    ]
    path = C.write_results(a.out, "Performance switches before/after (CPU, reduced size)", command, table, rows,
                           {"machine": C.machine(), "loadavg_1min": loads}, [n for n in notes if n])
    print(table)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
