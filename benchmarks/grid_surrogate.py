"""The trained surrogate preview decoder against the full VAE, on the embedded grid models (issue 19).

One run, each figure with and without the surrogate (``WanReasoner.preview_decoder``):

1. **speed** - the preview (decode of the first-step latent: forward without a gradient, and
   forward + backward) and the TTO step, split into its parts by cutting the graph at the
   latent and at the frames (transformer forward / backward, decode forward / backward,
   teacher forward / backward, LoRA update: clip + AdamW). VAE and surrogate steps alternate,
   so both see the same load on a shared machine. Also the step time of the real loop
   (``optimize.teach``, fixed budget).
2. **tto** - the ``tto`` method (and ``tto_oracle``: the oracle's loss, whose pass rate is not
   zero on this reasoner) on the first ``--limit`` / ``--oracle-limit`` tasks of grid:test:
   pass rate, mean score, steps and wall time per instance.
3. **agreement** - the grid verifier on the VAE's and the surrogate's decode of the same
   latents: each task's ground truth encoded, the frozen first-step prediction, and the
   latents the runs of (2) previewed (every ``--every``-th step and the last one).

    python benchmarks/grid_surrogate.py --limit 10 --oracle-limit 6
    python benchmarks/grid_surrogate.py --reasoner runs/r/model --surrogate runs/s/model/surrogate_decoder.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import _common as C

PARTS = ("transformer_fwd", "decode_fwd", "teacher_fwd", "teacher_bwd", "decode_bwd", "transformer_bwd", "lora_update")


def split_step(reasoner, teacher, cond, idx, questions, params, opt, lam: float) -> dict[str, float]:
    """One TTO step with the graph cut at the latent and at the frames, each part timed."""
    from vlm_teacher.objective import weighted_loss

    times, t0 = {}, time.perf_counter()

    def mark(name: str) -> None:
        nonlocal t0
        times[name] = time.perf_counter() - t0
        t0 = time.perf_counter()

    latent = reasoner.predict_x0(cond, mode="first")
    mark("transformer_fwd")
    lat = latent.detach().requires_grad_()
    frames = reasoner.preview(lat, idx)
    mark("decode_fwd")
    fr = frames.detach().requires_grad_()
    loss = weighted_loss(teacher.yes_logprob(fr, questions), lam)
    mark("teacher_fwd")
    loss.backward()
    mark("teacher_bwd")
    frames.backward(fr.grad)
    mark("decode_bwd")
    latent.backward(lat.grad)
    mark("transformer_bwd")
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    mark("lora_update")
    return times


def speed(reasoner, teacher, surrogate, task, cfg, steps: int) -> list[dict[str, Any]]:
    from vlm_teacher.optimize import teach
    from vlm_teacher.reasoner.base import uniform_frame_indices

    queries = teacher.propose_queries(task.prompt, task.first_frame)
    cond = reasoner.prepare(task.prompt, task.first_frame, 0, **_shape(task))
    idx = uniform_frame_indices(cond.num_frames, cfg.num_frames_shown)
    modes = {"vae": None, "surrogate": surrogate}
    split: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    preview: dict[str, dict[str, list[float]]] = {m: {"fwd": [], "fwd_bwd": []} for m in modes}
    with torch.no_grad():
        latent = reasoner.predict_x0(cond, mode="first")
    for _ in range(steps):
        for mode, dec in modes.items():
            reasoner.preview_decoder = dec
            t0 = time.perf_counter()
            with torch.no_grad():
                reasoner.preview(latent, idx)
            preview[mode]["fwd"].append(time.perf_counter() - t0)
            lat = latent.clone().requires_grad_()
            t0 = time.perf_counter()
            reasoner.preview(lat, idx).sum().backward()
            preview[mode]["fwd_bwd"].append(time.perf_counter() - t0)
            params = reasoner.add_lora(rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=cfg.lora_targets, seed=0)
            opt = torch.optim.AdamW(params, lr=cfg.lr)
            split[mode].append(split_step(reasoner, teacher, cond, idx, queries.all, params, opt, cfg.lam))
            reasoner.remove_lora()
    loop = {}
    for mode, dec in modes.items():
        reasoner.preview_decoder = dec
        res = teach(reasoner, teacher, task, dataclasses.replace(cfg, fixed_steps=steps), seed=0,
                    queries=queries, progress=False, **_shape(task))
        loop[mode] = C.median([e["seconds"] for e in res.history[1:]])
        reasoner.remove_lora()
    reasoner.preview_decoder = None
    rows = []
    for mode in modes:
        parts = {p: C.median([s[p] for s in split[mode][1:]]) for p in PARTS}
        rows.append({"decoder": mode, "preview_fwd_s": C.median(preview[mode]["fwd"][1:]),
                     "preview_fwd_bwd_s": C.median(preview[mode]["fwd_bwd"][1:]), **parts,
                     "split_total_s": sum(parts.values()), "teach_step_s": loop[mode]})
    vae, sur = rows
    rows.append({"decoder": "ratio vae / surrogate",
                 **{k: vae[k] / sur[k] for k in vae if k != "decoder" and sur[k]}})
    return rows


def _shape(task) -> dict[str, int]:
    meta = task.metadata or {}
    return {k: int(meta[k]) for k in ("num_frames", "height", "width") if isinstance(meta.get(k), int)}


def run_methods(reasoner, teacher, surrogate, suite, cfg, method_names: dict[str, int], every: int):
    """Each method on its first N tasks, with the VAE and with the surrogate; rows and the latents previewed."""
    from vlm_teacher.methods import MethodContext, get_method
    from vlm_teacher.recipes.grid_surrogate import PreviewRecorder
    from vlm_teacher.suites.grid import verify

    rows, latents = [], []
    for name, limit in method_names.items():
        for task_id in suite.ids()[:limit]:
            task = suite.task(task_id)
            for mode, dec in (("vae", None), ("surrogate", surrogate)):
                reasoner.preview_decoder = dec
                ctx = MethodContext(reasoner=reasoner, teacher=teacher, tto=cfg, verifier=suite.verifier())
                with PreviewRecorder(reasoner) as rec:
                    out = get_method(name).run(ctx, task, 0)
                v = verify(task, out.video)
                rows.append({"method": name, "decoder": mode, "task": task_id, "passed": bool(v.passed),
                             "score": float(v.score), "steps": out.steps, "wall_s": out.cost.wall_s,
                             "stop": out.stop_reason, "preview_passed": out.extra.get("preview_passed")})
                print({k: rows[-1][k] for k in ("method", "decoder", "task", "passed", "score", "steps", "wall_s")},
                      flush=True)
                seen = rec.latents
                keep = sorted({*range(0, len(seen), every), len(seen) - 1}) if seen else []
                latents += [(f"{name}_{mode}" if i else "frozen", task, seen[i]) for i in keep
                            if i or (name == "tto" and mode == "vae")]
    reasoner.preview_decoder = None
    return rows, latents


def method_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name in dict.fromkeys(r["method"] for r in rows):
        for mode in ("vae", "surrogate"):
            got = [r for r in rows if r["method"] == name and r["decoder"] == mode]
            if got:
                out.append({"method": name, "decoder": mode, "tasks": len(got),
                            "pass_rate": float(np.mean([r["passed"] for r in got])),
                            "mean_score": float(np.mean([r["score"] for r in got])),
                            "mean_steps": float(np.mean([r["steps"] for r in got])),
                            "wall_s_per_task": float(np.mean([r["wall_s"] for r in got])),
                            "wall_s_total": float(np.sum([r["wall_s"] for r in got]))})
    return out


def agreement_rows(reasoner, surrogate, latents, ground_truth) -> list[dict[str, Any]]:
    """``compare`` on every latent, summarised per source; ``ground_truth``: (task, uint8 video) pairs."""
    from vlm_teacher.recipes.grid_surrogate import agreement, compare, encode_videos, latent_stats, surrogate_frames, vae_frames

    mean, std = latent_stats(reasoner)
    items = [("ground_truth", t, encode_videos(reasoner, [video])) for t, video in ground_truth]
    items += [(src, t, lat * std + mean) for src, t, lat in latents]
    judged = [{"source": src, **compare(t, vae_frames(reasoner, z)[0], surrogate_frames(surrogate, z, reasoner.device)[0])}
              for src, t, z in items]
    table = []
    for src in [*dict.fromkeys(r["source"] for r in judged), "all"]:
        a = agreement([r for r in judged if src in ("all", r["source"])])
        table.append({"source": src, **a})
    return table


def main(argv: list[str] | None = None) -> int:
    from vlm_teacher.embedded import reasoner_path, teacher_path
    from vlm_teacher.optimize import tto_config
    from vlm_teacher.reasoner import load_reasoner
    from vlm_teacher.recipes.grid_surrogate import FILE_NAME, SHIPPED_DIR
    from vlm_teacher.suites import load_suite
    from vlm_teacher.suites.grid.verify import as_grid_task
    from vlm_teacher.teacher import load_teacher

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reasoner", default=None, help="Wan pipeline folder (default: the embedded grid-wan)")
    p.add_argument("--teacher", default=None, help="teacher folder (default: the embedded grid-qwen)")
    p.add_argument("--surrogate", default=None, help=f"surrogate file (default: {SHIPPED_DIR.name}/{FILE_NAME})")
    p.add_argument("--limit", type=int, default=10, help="grid:test tasks for tto (default %(default)s)")
    p.add_argument("--oracle-limit", type=int, default=6, help="grid:test tasks for tto_oracle (0: skip)")
    p.add_argument("--timing-steps", type=int, default=8, help="steps per decoder for the speed rows")
    p.add_argument("--max-steps", type=int, default=None, help="TTO step budget N (default: the reasoner's tto.json, "
                   "else the paper's 40)")
    p.add_argument("--every", type=int, default=4, help="keep every N-th previewed latent for the agreement")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", type=Path, default=None, help="where the .md/.json go (default benchmarks/results)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    folder = args.reasoner or str(reasoner_path())
    reasoner = load_reasoner(folder)
    teacher = load_teacher(args.teacher or teacher_path())
    reasoner.load_preview_decoder(args.surrogate or SHIPPED_DIR / FILE_NAME)
    surrogate, reasoner.preview_decoder = reasoner.preview_decoder, None
    cfg = tto_config({} if args.max_steps is None else {"max_steps": args.max_steps}, folder)
    suite = load_suite("grid:test")
    first = suite.task(suite.ids()[0])

    speed_rows = speed(reasoner, teacher, surrogate, first, cfg, args.timing_steps)
    print(speed_rows[-1], flush=True)
    methods = {"tto": args.limit, **({"tto_oracle": args.oracle_limit} if args.oracle_limit else {})}
    rows, latents = run_methods(reasoner, teacher, surrogate, suite, cfg, methods, args.every)
    truths = [(t, as_grid_task(t).video()) for t in map(suite.task, suite.ids()[:args.limit])]
    agree = agreement_rows(reasoner, surrogate, latents, truths)
    print(agree[-1], flush=True)

    tables = [
        "Speed (median of steps 2..N; seconds; the ratio row is VAE / surrogate):", "",
        C.markdown_table(speed_rows, [("decoder", "decoder"), ("preview_fwd_s", "preview fwd"),
                                      ("preview_fwd_bwd_s", "preview fwd+bwd"),
                                      *[(k, k.replace("_", " ")) for k in PARTS],
                                      ("split_total_s", "split step"), ("teach_step_s", "teach() step")]),
        "", "TTO on grid:test (seed 0):", "",
        C.markdown_table(method_table(rows), [("method", "method"), ("decoder", "preview decoder"), ("tasks", "tasks"),
                                              ("pass_rate", "pass rate"), ("mean_score", "mean score"),
                                              ("mean_steps", "mean steps"), ("wall_s_per_task", "wall s / task"),
                                              ("wall_s_total", "wall s total")]),
        "", "Verdict agreement, VAE vs surrogate decode of the same latents:", "",
        C.markdown_table(agree, [("source", "latents"), ("n", "n"), ("agreement", "agreement"),
                                 ("vae_pass_rate", "VAE pass"), ("surrogate_pass_rate", "surrogate pass"),
                                 ("agreement_where_vae_passes", "agreement where VAE passes"),
                                 ("mean_abs_score_diff", "mean abs score diff"), ("psnr_db", "PSNR dB")]),
    ]
    notes = [
        f"Models: reasoner {folder}, teacher {args.teacher or teacher_path()}, surrogate "
        f"{args.surrogate or SHIPPED_DIR / FILE_NAME}; TTO settings: the paper's with the reasoner's tto.json.",
        f"tto on the first {args.limit} and tto_oracle on the first {args.oracle_limit} tasks of grid:test (families "
        "interleaved), seed 0: a CPU-sized sample, not the whole split.",
        "Agreement sources: ground_truth = each tto task's true video encoded by the VAE; frozen = the first "
        "latent tto previewed (the frozen reasoner's first-step prediction); <method>_<decoder> = the latents "
        f"that run previewed after step 1 (every {args.every}th and the last).",
        f"Whole benchmark: {(time.time() - t_start) / 60:.1f} min; machine load average at the end: "
        f"{tuple(round(x, 2) for x in os.getloadavg())} (shared CPU: times vary, ratios are "
        "measured side by side).",
    ]
    command = "python benchmarks/grid_surrogate.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    md = C.write_results("grid_surrogate", "Surrogate preview decoder vs the full VAE (grid)", command.strip(),
                         "\n".join(tables), {"speed": speed_rows, "methods": rows, "agreement": agree},
                         {"machine": C.machine(), "reasoner": folder}, notes=notes, out_dir=args.out_dir)
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
