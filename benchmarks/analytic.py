"""What the full-size step costs by construction: FLOPs and the preview's memory, no GPU needed.

For Wan2.2-TI2V-5B with Qwen3-VL-4B or Qwen2.5-VL-7B at 89 frames (1280x704 and
832x480), K = 24 frames shown and Q = 4 questions, it computes with
``vlm_teacher.perf.flops`` (formulas checked against torch's FlopCounterMode in
tests/test_perf.py):

- the FLOPs of one test-time step by component (forward + backward) and of one frozen
  4-step generation with the full VAE decode, and the resulting lower bound of the
  instance cost (16 steps + the final generation) over the frozen generation, IF the
  step ran at the same FLOP rate as the generation;
- the memory the preview decode keeps for backward, measured by running the decoders
  on the ``meta`` device under ``saved_tensors_hooks`` (shapes only): the full VAE
  without checkpointing, with per-latent-frame checkpointing (what stays is the causal
  cache of every frame, plus one frame recomputed in backward), and the tiny surrogate.

Models are built on the ``meta`` device (no memory). Runs in about a minute on a CPU.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from typing import Any

import torch

import _common as C

from vlm_teacher.perf import flops as F
from vlm_teacher.perf.presets import QWEN_PRESETS, WAN_PRESETS, build_teacher, build_wan_reasoner, count_parameters
from vlm_teacher.reasoner.base import uniform_frame_indices
from vlm_teacher.reasoner.surrogate import TinyWanDecoder
from vlm_teacher.task import Queries

QUERIES = Queries(goal="Does the blue agent end on the green square?",
                  process=("Does the agent move one cell per step along free cells?",
                           "Does the agent never pass through a black wall?",
                           "Do the walls and the green square stay unchanged in every frame?"))
FLOP_COLUMNS = [
    ("teacher", "teacher"), ("size", "size"), ("tokens", "teacher tokens/question"),
    ("transformer", "Wan fwd+bwd TFLOP"), ("surrogate", "surrogate preview TFLOP"), ("vae", "VAE preview TFLOP"),
    ("vision", "teacher vision TFLOP"), ("language", "teacher LM TFLOP (shared prefix)"),
    ("language_rows", "teacher LM TFLOP (row per question)"), ("step_surrogate", "step TFLOP (surrogate)"),
    ("step_vae", "step TFLOP (VAE)"), ("wan_call", "Wan forward TFLOP"), ("full_decode", "full VAE decode TFLOP"),
    ("gen", "frozen gen TFLOP"), ("ratio_surrogate", "FLOP ratio (surrogate)"),
    ("ratio_vae", "FLOP ratio (VAE)"), ("ratio_floor", "FLOP ratio (Wan fwd+bwd only)"),
]
MEM_COLUMNS = [("size", "size"), ("vae_nockpt", "VAE preview, no ckpt GiB"),
               ("vae_cache_per_frame", "VAE cache per latent frame GiB"), ("vae_one_frame", "VAE one frame GiB"),
               ("vae_ckpt", "VAE per-frame ckpt GiB"), ("surrogate", "surrogate preview GiB"),
               ("wan_ckpt", "Wan checkpoint boundaries GiB")]


def saved_gib(fn) -> float:
    """GiB of tensors autograd keeps for backward while ``fn()`` runs (meta tensors: no memory used)."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2**30


def vae_memory(reasoner, latent_frames: int, h: int, w: int) -> dict[str, float]:
    vae = reasoner.vae
    dtype = next(vae.parameters()).dtype
    z = torch.zeros(1, reasoner.z_dim, latent_frames, h, w, device="meta", dtype=dtype, requires_grad=True)
    out: dict[str, float] = {"vae_nockpt": saved_gib(lambda: vae.decode(z, return_dict=False))}
    x = vae.post_quant_conv(z.detach())
    cache: list[Any] = [None] * vae._cached_conv_counts["decoder"]
    per_frame, one = [], 0.0
    for i in range(min(latent_frames, 3)):
        xi = x[:, :, i:i + 1].detach().requires_grad_(True)
        one = max(one, saved_gib(lambda: vae.decoder(xi, feat_cache=cache, feat_idx=[0], first_chunk=(i == 0))))
        per_frame.append(sum(c.numel() * c.element_size() for c in cache if torch.is_tensor(c)) / 2**30)
        cache = [c.detach() if torch.is_tensor(c) else c for c in cache]
    out["vae_cache_per_frame"] = max(per_frame)
    out["vae_one_frame"] = one
    out["vae_ckpt"] = latent_frames * max(per_frame) + one
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=89)
    p.add_argument("--k", type=int, default=24)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--sizes", default="1280x704,832x480")
    p.add_argument("--teachers", default="qwen3-vl-4b,qwen2.5-vl-7b")
    p.add_argument("--out", default="full_size_analytic")
    a = p.parse_args(argv)
    command = ("python benchmarks/analytic.py " + " ".join(shlex.quote(x) for x in (argv if argv is not None
                                                                                     else sys.argv[1:]))).strip()
    bf16 = torch.bfloat16
    reasoner = build_wan_reasoner("wan2.2-ti2v-5b", "meta", bf16)
    surrogate = TinyWanDecoder()
    rank, targets = 16, ("to_q", "to_k", "to_v", "to_out.0")
    flop_rows, mem_rows = [], []
    sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")]
    for name in a.teachers.split(","):
        teacher = build_teacher(name, "meta", bf16)
        for width, height in sizes:
            shape = reasoner.latent_shape(a.frames, height, width)
            idx = uniform_frame_indices(a.frames, a.k)
            rows = {}
            for preview in ("surrogate", "vae"):
                reasoner.preview_decoder = surrogate if preview == "surrogate" else None
                rows[preview] = F.tto_flops(reasoner, teacher, shape, idx, QUERIES.all, rank, targets)
            teacher.share_prefix = False
            unshared = F.tto_flops(reasoner, teacher, shape, idx, QUERIES.all, rank, targets)
            teacher.share_prefix = True
            reasoner.preview_decoder = None
            s, v = rows["surrogate"], rows["vae"]
            tf = 1e12
            wan = s["step"]["transformer"].forward_backward
            flop_rows.append({
                "teacher": name, "size": f"{width}x{height}", "tokens": max(s["teacher_tokens"]),
                "transformer": wan / tf, "surrogate": s["step"]["preview_decode"].forward_backward / tf,
                "vae": v["step"]["preview_decode"].forward_backward / tf,
                "vision": s["step"]["teacher_vision"].forward_backward / tf,
                "language": s["step"]["teacher_language"].forward_backward / tf,
                "language_rows": unshared["step"]["teacher_language"].forward_backward / tf,
                "step_surrogate": s["step_total"] / tf, "step_vae": v["step_total"] / tf,
                "gen": s["generate_frozen"] / tf,
                "wan_call": F.wan_transformer(WAN_PRESETS["wan2.2-ti2v-5b"].transformer, shape, 512).forward / tf,
                "full_decode": F.vae_decode(WAN_PRESETS["wan2.2-ti2v-5b"].vae, *shape[2:]).forward / tf,
                "ratio_surrogate": (a.steps * s["step_total"] + s["generate_adapted"]) / s["generate_frozen"],
                "ratio_vae": (a.steps * v["step_total"] + v["generate_adapted"]) / v["generate_frozen"],
                "ratio_floor": (a.steps * wan + s["generate_adapted"]) / s["generate_frozen"],
            })
            print(C.markdown_table(flop_rows[-1:], FLOP_COLUMNS), flush=True)
        del teacher
    for width, height in sizes:
        _, _, t_lat, h_lat, w_lat = reasoner.latent_shape(a.frames, height, width)
        idx = uniform_frame_indices(a.frames, a.k)
        needed = math.ceil(max(idx) / 4) + 1
        row: dict[str, Any] = {"size": f"{width}x{height}", **vae_memory(reasoner, needed, h_lat, w_lat)}
        with torch.device("meta"):
            dec = TinyWanDecoder().to(bf16)
        z = torch.zeros(1, 48, needed, h_lat, w_lat, device="meta", dtype=bf16, requires_grad=True)
        row["surrogate"] = saved_gib(lambda: dec.decode(z, idx))
        reasoner.grad_checkpointing = True
        x = torch.zeros(1, 48, t_lat, h_lat, w_lat, device="meta", dtype=bf16, requires_grad=True)
        tokens = t_lat * (h_lat // 2) * (w_lat // 2)
        row["wan_ckpt"] = saved_gib(lambda: reasoner.transformer(
            hidden_states=x, timestep=torch.zeros(1, tokens, device="meta"),
            encoder_hidden_states=torch.zeros(1, 512, 4096, device="meta", dtype=bf16), return_dict=False))
        mem_rows.append(row)
        print(C.markdown_table(mem_rows[-1:], MEM_COLUMNS), flush=True)

    params = {n: count_parameters(n) for n in ("wan2.2-ti2v-5b", *a.teachers.split(","))}
    vae_params = sum(p.numel() for p in reasoner.vae.parameters())
    table = "\n\n".join([
        "## FLOPs (forward + backward of one step; forward of the generation)",
        C.markdown_table(flop_rows, FLOP_COLUMNS),
        "## Memory kept for backward by the preview decode (bf16), and the Wan transformer's checkpoint "
        "boundaries",
        C.markdown_table(mem_rows, MEM_COLUMNS),
        "Weights in bf16: " + ", ".join(f"{n} {v / 1e9:.2f}B params = {v * 2 / 2**30:.1f} GiB"
                                        for n, v in params.items())
        + f", Wan2.2 VAE {vae_params / 1e6:.0f}M params = {vae_params * 2 / 2**30:.1f} GiB.",
    ])
    notes = [
        "The teacher shares the video prefix across questions (QwenVLTeacher.share_prefix, the default); "
        "the 'row per question' column is the LM cost without it.",
        f"{a.frames} frames, K = {a.k} frames shown (uniform, so the last latent frame is always needed), "
        f"Q = 4 questions (1 goal + 3 process), LoRA rank {rank} on attn q/k/v/out, {a.steps} steps.",
        "FLOPs: vlm_teacher/perf/flops.py (matrix products; backward = input gradients through frozen weights + LoRA "
        "weight gradients; checkpoint recomputation not counted; causal attention counted as half the square).",
        "FLOP ratio = (steps x step + final generation of the adapted model) / frozen generation: what the "
        "instance costs relative to one frozen generation if every FLOP ran at the same rate. "
        "'Wan fwd+bwd only' drops the preview and the teacher: no implementation of this method can go below it.",
        "Memory: tensors saved for backward, measured on the meta device (no compute). The VAE with per-frame "
        "checkpointing keeps every latent frame's causal cache and recomputes one frame at a time in backward "
        "(cache x frames + one frame). Not included: weights, the teacher's activations, allocator overheads "
        "(the GPU run of full_size.py measures the real peak).",
        "Random-weight architectures from vlm_teacher/perf/presets.py (recalled configs, see its docstring).",
    ]
    meta = {"machine": C.machine(), "flop_rows": flop_rows, "memory_rows": mem_rows, "params": params}
    path = C.write_results(a.out, "Full-size step by construction: FLOPs and preview memory (analytic)", command,
                           table, flop_rows + mem_rows, meta, notes)
    print(table)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
