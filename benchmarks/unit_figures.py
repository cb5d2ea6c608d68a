"""Figures that used to be asserted inside unit tests (a wall-clock limit, a memory ratio),
measured here instead and printed; nothing is asserted.

    python benchmarks/unit_figures.py

- seconds to build a tiny random Qwen-VL folder (tests/test_teacher_tiny_models.py built it
  under a 10 s limit);
- peak RSS growth of a differentiable 33-frame preview with the VAE decode plain vs
  checkpointed per latent frame (tests/test_reasoner_wan.py asserted checkpointed < 0.8 x plain),
  each in its own process.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine  # noqa: E402  (puts src/ on the path)

MEMORY_PROBE = """
import sys, tempfile, torch
from vlm_teacher.runtime import reset_rss_peak, rss_peak_mb
from vlm_teacher.testing.tiny_wan import build_tiny_wan_pipeline
from vlm_teacher.reasoner.wan import WanReasoner
torch.set_num_threads(1)
folder = build_tiny_wan_pipeline(tempfile.mkdtemp() + "/m", vae_base_dim=32, height=128, width=128, num_frames=33)
r = WanReasoner.from_pretrained(folder)
r.vae_checkpointing = sys.argv[1] == "1"
latent = r.prepare("x", None, seed=0).noise.requires_grad_(True)
reset_rss_peak()  # the peak from building the model must not hide the preview's (ru_maxrss never resets)
base = rss_peak_mb()
r.preview(latent, list(range(33))).mean().backward()
print(int(rss_peak_mb() - base))
"""


def tiny_qwen_build_seconds(arch: str) -> float:
    from vlm_teacher.testing.tiny_qwen import build_tiny_qwen_vl

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_tiny_qwen_vl(Path(tmp) / arch, arch=arch, hidden_size=96, num_attention_heads=6, num_key_value_heads=2,
                           num_hidden_layers=3, vision_depth=3, vocab_size=800)
        return time.perf_counter() - t0


def preview_peak_mb(checkpointed: bool) -> int:
    src = str(Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {src!r})\n" + MEMORY_PROBE,
                          "1" if checkpointed else "0"], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    print(f"machine: {machine()}")
    for arch in ("qwen2_5_vl", "qwen3_vl"):
        print(f"tiny {arch} folder build: {tiny_qwen_build_seconds(arch):.2f} s")
    plain, ckpt = preview_peak_mb(False), preview_peak_mb(True)
    print(f"33-frame differentiable preview, peak RSS growth: plain {plain} MB, VAE checkpointed {ckpt} MB "
          f"(ratio {ckpt / max(plain, 1):.2f})")


if __name__ == "__main__":
    main()
