"""Time the test-time step and a frozen generation at the real models' size.

Builds Wan2.2-TI2V-5B (transformer + VAE) and the teachers (Qwen3-VL-4B, Qwen2.5-VL-7B)
from their published architectures with random weights, directly on the device in
bfloat16 (``vlm_teacher.perf.presets``), and measures in one run, per teacher and size:

- one test-time step of the real loop (``optimize.teach`` with a fixed budget):
  x0 prediction -> preview of K frames -> teacher on all questions -> backward ->
  AdamW step; median over steps 2..S (step 1 is reported apart: warm-up);
- one frozen 4-step generation with the full VAE decode (best of ``--gen-repeats``);
- the instance: S steps + the final generation of the adapted model, measured;
- peak GPU memory of the step and of the generation; FLOPs (``vlm_teacher.perf.flops``,
  analytic) and model FLOP utilisation; host-device syncs per step (CUDA only,
  counted with ``torch.cuda.set_sync_debug_mode``).

Random weights change no shape, so time and memory are those of the real models
(except data-dependent early stopping, which a fixed budget removes). The 4.7B UMT5
text encoder is not built: it runs once per instance outside the step; random
prompt embeddings of its output shape stand in (``set_prompt_embeds``).

``--preset tiny`` runs the same code on small models on the CPU (a check that the
script works; its figures say nothing about GPUs). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import gc
import math
import shlex
import sys
import time
import traceback
import warnings
from typing import Any

import numpy as np
import torch

import _common as C

from vlm_teacher.perf import flops as F
from vlm_teacher.optimize import TTOConfig, teach
from vlm_teacher.perf.presets import (VIDEO_PRESETS, build_teacher, build_video_reasoner, build_wan_reasoner,
                                      random_prompt_embeds, wan_preset)
from vlm_teacher.reasoner.base import uniform_frame_indices
from vlm_teacher.reasoner.surrogate import TinyWanDecoder
from vlm_teacher.task import Queries, Task

PRESETS: dict[str, dict[str, Any]] = {
    "full": {"reasoner": "wan2.2-ti2v-5b", "teachers": "qwen3-vl-4b,qwen2.5-vl-7b",
             "sizes": "1280x704,832x480", "frames": 89, "k": 24, "steps": 16},
    "tiny": {"reasoner": "wan-tiny", "teachers": "qwen3-vl-tiny,qwen2.5-vl-tiny",
             "sizes": "96x64,64x64", "frames": 9, "k": 6, "steps": 3},
    # the other reasoners (vlm_teacher.perf.presets.VIDEO_PRESETS), each at its native size with Qwen3-VL-4B
    **{name: {"reasoner": name, "teachers": "qwen3-vl-4b", "sizes": f"{p.width}x{p.height}",
              "frames": p.num_frames, "k": 24, "steps": 16}
       for name, p in VIDEO_PRESETS.items() if not name.endswith("-tiny")},
    **{name: {"reasoner": name, "teachers": "qwen3-vl-tiny", "sizes": "64x64", "frames": 9, "k": 6, "steps": 3}
       for name in VIDEO_PRESETS if name.endswith("-tiny")},
}
PROMPT = "Move the blue agent through the maze to the green square without crossing any black wall."
#: one goal and the maximum of three process questions (the costliest case, Q = 4)
QUERIES = Queries(goal="Does the blue agent end on the green square?",
                  process=("Does the agent move one cell per step along free cells?",
                           "Does the agent never pass through a black wall?",
                           "Do the walls and the green square stay unchanged in every frame?"))
#: usable memory of an "80 GB" H100 (79.6 GiB) less the CUDA context and some headroom
FITS_GIB = 78.0

COLUMNS = [
    ("teacher", "teacher"), ("size", "size"), ("frames", "F"), ("k", "K"), ("questions", "Q"),
    ("teacher_tokens", "tokens/question"), ("preview", "preview"),
    ("step_s", "step s (median)"), ("first_step_s", "first step s"), ("gen_s", "frozen gen s"),
    ("instance_s", "instance s (S steps + gen)"), ("ratio", "instance / frozen"),
    ("flop_ratio", "FLOP ratio"), ("step_peak_gib", "step peak GiB"), ("gen_peak_gib", "gen peak GiB"),
    ("fits", "fits 80 GB"), ("step_tflop", "step TFLOP"), ("step_mfu", "step MFU"),
    ("gen_mfu", "gen MFU"), ("syncs_per_step", "syncs/step"), ("status", "status"),
]


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"size must look like 1280x704 (width x height), got {text!r}") from None
    return w, h


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="full")
    p.add_argument("--teachers", help="comma-separated teacher presets (default: the preset's)")
    p.add_argument("--sizes", help="comma-separated WIDTHxHEIGHT (default: the preset's)")
    p.add_argument("--frames", type=int, help="video frames (4k+1)")
    p.add_argument("--k", type=int, help="frames shown to the teacher")
    p.add_argument("--steps", type=int, help="optimisation steps of the instance (paper: ~16 on average)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], help="model dtype (default: bf16 on CUDA)")
    p.add_argument("--vae-dtype", choices=["bfloat16", "float32"], help="VAE dtype (default: --dtype)")
    p.add_argument("--preview", choices=["surrogate", "vae"], default="surrogate",
                   help="decoder of the teacher's preview: the tiny surrogate (paper) or the full VAE")
    p.add_argument("--surrogate", metavar="FILE", help="surrogate weights (.safetensors); default random")
    p.add_argument("--no-transformer-ckpt", action="store_true", help="turn off Wan gradient checkpointing")
    p.add_argument("--no-teacher-ckpt", action="store_true", help="turn off VLM gradient checkpointing")
    p.add_argument("--no-vae-ckpt", action="store_true", help="turn off per-frame VAE checkpointing")
    p.add_argument("--compile", action="store_true", help="torch.compile the Wan transformer blocks")
    p.add_argument("--no-batch-questions", action="store_true",
                   help="naive teacher: one full VLM forward per question")
    p.add_argument("--no-share-prefix", action="store_true",
                   help="teacher: one padded row per question instead of the shared video prefix")
    p.add_argument("--sync-grad-norm", action="store_true", help="read the grad norm on the host each step")
    p.add_argument("--teacher-max-pixels", type=int, help="per-frame pixel budget of the teacher")
    p.add_argument("--gen-repeats", type=int, default=2, help="frozen generations timed (best is kept)")
    p.add_argument("--no-count-syncs", action="store_true", help="skip the sync-counting run (CUDA)")
    p.add_argument("--peak-tflops", type=float, help="device peak bf16 TFLOP/s for MFU (default: by name)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="results name under benchmarks/results (default: full_size[_tiny])")
    p.add_argument("--append", action="store_true",
                   help="keep the rows of other teachers/sizes already in the results file (split runs)")
    a = p.parse_args(argv)
    preset = PRESETS[a.preset]
    for key in ("teachers", "sizes", "frames", "k", "steps"):
        if getattr(a, key) is None:
            setattr(a, key, preset[key])
    a.teachers = [t for t in str(a.teachers).split(",") if t]
    a.sizes = [parse_size(s) for s in str(a.sizes).split(",") if s]
    a.device = torch.device(a.device)
    if a.dtype is None:
        a.dtype = "bfloat16" if a.device.type == "cuda" else "float32"
    a.dtype = getattr(torch, a.dtype)
    a.vae_dtype = getattr(torch, a.vae_dtype) if a.vae_dtype else a.dtype
    a.out = a.out or ("full_size" if a.preset == "full" else f"full_size_{a.preset}".replace(".", "_"))
    return a


def switches(a: argparse.Namespace) -> dict[str, Any]:
    return {"transformer_grad_checkpointing": not a.no_transformer_ckpt,
            "teacher_grad_checkpointing": not a.no_teacher_ckpt,
            "vae_checkpointing": not a.no_vae_ckpt and a.preview == "vae",
            "preview": a.preview, "surrogate_weights": a.surrogate or ("random" if a.preview == "surrogate" else None),
            "preview_needed_only": True, "compile": a.compile, "batch_questions": not a.no_batch_questions,
            "share_prefix": not a.no_share_prefix,
            "sync_grad_norm": a.sync_grad_norm, "dtype": str(a.dtype), "vae_dtype": str(a.vae_dtype),
            "logits": "float32", "teacher_max_pixels": a.teacher_max_pixels}


class SyncCounter:
    """Counts CUDA synchronisations (torch's sync debug mode turns each into a warning)
    and where they come from (the innermost project / library frame)."""

    def __init__(self) -> None:
        self.count = 0
        self.origins: dict[str, int] = {}

    def __enter__(self):
        self._old = warnings.showwarning
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("always")
        warnings.showwarning = self._record
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = self._old
        self._catch.__exit__(*exc)

    def _record(self, message, category, filename, lineno, file=None, line=None):
        if "synchronizing" not in str(message):
            return
        self.count += 1
        where = "?"
        for frame in reversed(traceback.extract_stack()[:-1]):
            name = frame.filename
            if any(k in name for k in ("vlm_teacher", "transformers", "diffusers", "peft", "torch/optim",
                                        "torch/nn/utils")):
                short = name.split("site-packages/")[-1].split("src/")[-1]
                where = f"{short}:{frame.lineno} ({frame.name})"
                break
        self.origins[where] = self.origins.get(where, 0) + 1


def build_reasoner(a: argparse.Namespace):
    name = PRESETS[a.preset]["reasoner"]
    build = build_video_reasoner if name in VIDEO_PRESETS else (lambda n, *args, **kw: build_wan_reasoner(
        wan_preset(n), *args, **kw))
    reasoner = build(name, a.device, a.dtype, a.vae_dtype, seed=a.seed)
    reasoner.grad_checkpointing = not a.no_transformer_ckpt
    reasoner.vae_checkpointing = not a.no_vae_ckpt
    if a.preview == "surrogate":
        if a.surrogate:
            reasoner.load_preview_decoder(a.surrogate, dtype=a.vae_dtype)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(a.seed)
                decoder = TinyWanDecoder(latent_channels=reasoner.z_dim, patch=reasoner.scale_spatial // 8)
            reasoner.use_preview_decoder(decoder, dtype=a.vae_dtype)
    if a.compile:
        reasoner.compile = True
    return reasoner


def run_case(reasoner, teacher, teacher_name: str, size: tuple[int, int], a: argparse.Namespace,
             peak_tflops: float | None) -> dict[str, Any]:
    device = a.device
    width, height = size
    rng = np.random.default_rng(a.seed)
    first = rng.integers(0, 256, (height, width, 3), dtype=np.uint8) if reasoner.takes_first_frame else None
    task = Task(id=f"bench-{width}x{height}", prompt=PROMPT, first_frame=first)
    reasoner.set_prompt_embeds(PROMPT, random_prompt_embeds(reasoner, seed=a.seed))
    reasoner.sync_grad_norm = a.sync_grad_norm
    cfg = TTOConfig(fixed_steps=a.steps, num_frames_shown=a.k)
    row: dict[str, Any] = {"teacher": teacher_name, "size": f"{width}x{height}", "frames": a.frames, "k": a.k,
                           "questions": len(QUERIES.all), "preview": a.preview, "steps": a.steps}

    # FLOPs (analytic; no device work)
    reasoner.remove_lora()
    cond = reasoner.prepare(PROMPT, first, a.seed, num_frames=a.frames)
    idx = uniform_frame_indices(cond.num_frames, a.k)
    fl = F.tto_flops(reasoner, teacher, cond.noise.shape, idx, QUERIES.all, cfg.lora_rank, cfg.lora_targets)
    row["teacher_tokens"] = max(fl["teacher_tokens"])
    row["step_tflop"] = fl["step_total"] / 1e12
    row["flop_ratio"] = (a.steps * fl["step_total"] + fl["generate_adapted"]) / fl["generate_frozen"]
    row["flops"] = {"step": {k: {"forward": v.forward, "backward": v.backward} for k, v in fl["step"].items()},
                    "step_total": fl["step_total"], "generate_frozen": fl["generate_frozen"],
                    "generate_adapted": fl["generate_adapted"], "teacher_grid": fl["teacher_grid"],
                    "preview_latent_frames": fl["preview_latent_frames"]}

    # frozen generation: no LoRA, 4 steps, full VAE decode
    gens = []
    for _ in range(max(1, a.gen_repeats)):
        C.reset_peak(device)
        t0 = C.now(device)
        video = reasoner.generate(cond)
        gens.append(C.now(device) - t0)
        del video
    row["gen_s"] = min(gens)
    row["gen_all_s"] = gens
    row["gen_peak_gib"] = C.peak_mib(device) / 1024
    del cond

    # the instance: S steps of the real loop + the final generation
    peaks: list[float] = []
    reserved: list[float] = []

    def on_step(entry: dict[str, Any]) -> None:
        peaks.append(C.peak_mib(device))
        if device.type == "cuda":
            reserved.append(torch.cuda.max_memory_reserved(device) / 2**20)

    gc.collect()
    t0 = C.now(device)
    res = teach(reasoner, teacher, task, cfg, seed=a.seed, queries=QUERIES, num_frames=a.frames, progress=False,
                on_step=on_step)
    row["instance_s"] = C.now(device) - t0
    secs = [e["seconds"] for e in res.history]
    row["first_step_s"] = secs[0]
    row["step_s"] = C.median(secs[1:]) if len(secs) > 1 else secs[0]
    row["step_all_s"] = secs
    row["final_gen_s"] = res.seconds["generate"]
    row["instance_steady_s"] = a.steps * row["step_s"] + res.seconds["generate"]
    row["ratio"] = row["instance_s"] / row["gen_s"]
    row["ratio_steady"] = row["instance_steady_s"] / row["gen_s"]
    row["step_peak_gib"] = max(peaks) / 1024
    row["step_reserved_gib"] = max(reserved) / 1024 if reserved else None
    row["fits"] = (row["step_reserved_gib"] or row["step_peak_gib"]) <= FITS_GIB and row["gen_peak_gib"] <= FITS_GIB \
        if device.type == "cuda" else None
    row["skipped_steps"] = sum(1 for e in res.history if e.get("skipped"))
    row["final_loss"] = res.final_loss
    if peak_tflops:
        row["step_mfu"] = F.mfu(fl["step_total"], row["step_s"], peak_tflops)
        row["gen_mfu"] = F.mfu(fl["generate_frozen"], row["gen_s"], peak_tflops)
    row["status"] = "ok" if not row["skipped_steps"] else f"{row['skipped_steps']} steps skipped"

    if device.type == "cuda" and not a.no_count_syncs:
        marks: list[int] = []
        with SyncCounter() as counter:
            teach(reasoner, teacher, task, TTOConfig(fixed_steps=4, num_frames_shown=a.k),
                  seed=a.seed, queries=QUERIES, num_frames=a.frames, progress=False,
                  on_step=lambda e: marks.append(counter.count))
        windows = [b - c for c, b in zip(marks, marks[1:])][:-1] or [b - c for c, b in zip(marks, marks[1:])]
        row["syncs_per_step"] = C.median(windows) if windows else None
        row["sync_origins_4_steps"] = dict(sorted(counter.origins.items(), key=lambda kv: -kv[1]))
    reasoner.remove_lora()
    return row


def main(argv: list[str] | None = None) -> int:
    a = arguments(argv)
    command = ("python benchmarks/full_size.py " + " ".join(shlex.quote(x) for x in (argv if argv is not None
                                                                                      else sys.argv[1:]))).strip()
    device = a.device
    info = C.machine()
    peak = a.peak_tflops or (F.device_peak_tflops(info.get("gpu", "")) if device.type == "cuda" else None)
    print(f"device {device} ({info.get('gpu') or 'CPU'}), peak {peak} TFLOP/s, switches {switches(a)}", flush=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    t_build = time.perf_counter()
    reasoner = build_reasoner(a)
    print(f"reasoner built in {time.perf_counter() - t_build:.1f}s", flush=True)
    rows: list[dict[str, Any]] = []
    for name in a.teachers:
        t_build = time.perf_counter()
        teacher = build_teacher(name, device, a.dtype, seed=a.seed, max_pixels=a.teacher_max_pixels)
        teacher.grad_checkpointing = not a.no_teacher_ckpt
        teacher.batch_questions = not a.no_batch_questions
        teacher.share_prefix = not a.no_share_prefix
        print(f"teacher {name} built in {time.perf_counter() - t_build:.1f}s", flush=True)
        for size in a.sizes:
            try:
                row = run_case(reasoner, teacher, name, size, a, peak)
            except torch.OutOfMemoryError as exc:
                row = {"teacher": name, "size": f"{size[0]}x{size[1]}", "frames": a.frames, "k": a.k,
                       "questions": len(QUERIES.all), "preview": a.preview,
                       "status": "out of memory", "error": str(exc).splitlines()[0]}
            except Exception as exc:  # noqa: BLE001 - an OOM inside teach() arrives as OutOfMemory (UserError)
                status = "out of memory" if "out of memory" in str(exc) else f"error: {type(exc).__name__}"
                row = {"teacher": name, "size": f"{size[0]}x{size[1]}", "frames": a.frames, "k": a.k,
                       "questions": len(QUERIES.all), "preview": a.preview, "status": status,
                       "error": str(exc).splitlines()[0] if str(exc) else repr(exc)}
                if not status.startswith("out of memory"):
                    traceback.print_exc()
            reasoner.remove_lora()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows.append(row)
            print(C.markdown_table([row], COLUMNS), flush=True)
        del teacher
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    if a.append:
        import json

        old = C.RESULTS / f"{a.out}.json"
        if old.is_file():
            new_keys = {(r["teacher"], r["size"], r.get("preview")) for r in rows}
            kept = [r for r in json.loads(old.read_text())["rows"]
                    if (r.get("teacher"), r.get("size"), r.get("preview")) not in new_keys]
            rows = kept + rows
    table = C.markdown_table(rows, COLUMNS)
    notes = [
        f"S = {a.steps} optimisation steps per instance; step s = median of steps 2..S of the real loop "
        "(`optimize.teach`, fixed budget); first step apart (warm-up); frozen gen = best of "
        f"{a.gen_repeats} frozen 4-step generations with the full VAE decode.",
        "instance = measured S steps + final generation of the adapted model (queries given); "
        "instance / frozen = that over the frozen generation. FLOP ratio = the same ratio in analytic FLOPs "
        "(what it would be if the step ran at the generation's FLOP rate).",
        "step peak = max memory allocated over the steps (reserved in the JSON); "
        f"fits = reserved peak <= {FITS_GIB} GiB." if device.type == "cuda" else
        "On CPU the peak is the process's resident-set high-water mark (it includes everything before).",
        "FLOPs: vlm_teacher/perf/flops.py (matrix products only; backward = input gradients through frozen "
        "weights + LoRA weight gradients; checkpoint recomputation not counted). "
        f"MFU against {peak} TFLOP/s bf16 dense." if peak else "MFU needs a GPU (peak FLOP/s).",
        "Random weights (vlm_teacher.perf.presets): the shapes, hence time and memory, are the real models'; "
        "random prompt embeddings replace the UMT5 text encoder (once per instance, outside the step).",
        f"Switches: {switches(a)}",
    ]
    meta = {"machine": info, "switches": switches(a), "peak_tflops": peak, "preset": a.preset,
            "reasoner": PRESETS[a.preset]["reasoner"], "queries": QUERIES.all}
    path = C.write_results(a.out, f"Test-time step vs frozen generation ({a.preset} size)", command, table,
                           rows, meta, notes)
    print(table)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
