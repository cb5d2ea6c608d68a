"""The reasoner's VAE alone: ground-truth grid videos encoded and decoded, judged by the verifier.

The transformer can at best produce the encoder's latents, so the pass rate of these round
trips bounds every method's pass rate from above (issue 14's target: at least 95%).

    python benchmarks/grid_vae_roundtrip.py                     # embedded reasoner, grid:test and grid:ood
    python benchmarks/grid_vae_roundtrip.py --reasoner runs/r/model --splits test --out-dir /tmp/vae
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

import _common as C


def main(argv: list[str] | None = None) -> int:
    from vlm_teacher.embedded import reasoner_path
    from vlm_teacher.reasoner import load_reasoner
    from vlm_teacher.recipes.grid_reasoner import vae_round_trip
    from vlm_teacher.suites.grid import grid_tasks

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reasoner", default=None, help="Wan pipeline folder (default: the embedded grid-wan)")
    p.add_argument("--splits", default="test,ood", help="grid splits, comma-separated (default %(default)s)")
    p.add_argument("--tasks", type=int, default=None, help="tasks per family (default: each split's count)")
    p.add_argument("--out-dir", type=Path, default=None, help="where the .md/.json go (default benchmarks/results)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    folder = args.reasoner or str(reasoner_path())
    reasoner = load_reasoner(folder)
    rows = []
    for split in [s.strip() for s in args.splits.split(",") if s.strip()]:
        judged = [(t.family, *vae_round_trip(reasoner, t)) for t in grid_tasks(split, n=args.tasks)]
        by = {f: [ok for fam, _, ok in judged if fam == f] for f in ("maze", "push")}
        mse = float(np.mean([m for _, m, _ in judged]))
        rows.append({"split": split, "tasks": len(judged), "pass": float(np.mean([ok for *_, ok in judged])),
                     "maze_pass": float(np.mean(by["maze"])), "push_pass": float(np.mean(by["push"])),
                     "psnr_db": float(10 * np.log10(1 / max(mse, 1e-12)))})
        print(rows[-1], flush=True)
    table = C.markdown_table(rows, [("split", "split"), ("tasks", "tasks"), ("pass", "verifier pass"),
                                    ("maze_pass", "maze pass"), ("push_pass", "push pass"), ("psnr_db", "PSNR dB")])
    command = "python benchmarks/grid_vae_roundtrip.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    md = C.write_results("grid_vae_roundtrip", "VAE round trip of ground-truth grid videos", command.strip(), table,
                         rows, {"machine": C.machine(), "reasoner": folder}, out_dir=args.out_dir)
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
