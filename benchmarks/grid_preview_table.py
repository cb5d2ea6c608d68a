"""The verdicts a grid bench store holds, preview beside final video: per suite and method, pass
rate and mean score of the final video and of the first-step preview (``preview_passed`` /
``preview_score``, recorded by frozen, tto and tto_oracle), and how often the two verdicts agree.

Only tasks every listed method has a row for are counted (so partial runs stay side by side);
the table says how many.

    python benchmarks/grid_preview_table.py /tmp/i14/grid --methods frozen,tto_oracle,tto
    python benchmarks/grid_preview_table.py /tmp/i14/grid --reasoner grid-wan-new-1a2b3c4d   # one model's rows
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _common as C


def table(rows: list[dict], methods: list[str], reasoner: str | None = None) -> list[dict]:
    """``reasoner``: only rows made with this reasoner id (a store can hold several models' rows)."""
    by: dict[tuple[str, str], dict[str, dict]] = {}
    for r in rows:
        if reasoner is not None and (r.get("extra") or {}).get("reasoner") != reasoner:
            continue
        if r.get("status") == "done" and r["method"] in methods and r.get("seed") == 0:
            by.setdefault((r["suite"], r["method"]), {})[r["task_id"]] = r
    out = []
    for suite in sorted({s for s, _ in by}):
        common = set.intersection(*[set(by.get((suite, m), {})) for m in methods])
        for m in methods:
            got = [by[(suite, m)][t] for t in sorted(common)]
            if not got:
                continue
            extra = [(r.get("extra") or {}).get("method_extra", {}) for r in got]
            prev = [(r, e) for r, e in zip(got, extra) if e.get("preview_passed") is not None]
            out.append({
                "suite": suite, "method": m, "tasks": len(got),
                "final_pass": sum(int(r["passed"]) for r in got) / len(got),
                "final_score": sum(r["score"] for r in got) / len(got),
                "preview_pass": sum(bool(e["preview_passed"]) for _, e in prev) / len(prev) if prev else None,
                "preview_score": sum(e["preview_score"] for _, e in prev) / len(prev) if prev else None,
                "agree": (sum(bool(e["preview_passed"]) == bool(r["passed"]) for r, e in prev) / len(prev)
                          if prev else None),
                "steps": sum(r["steps"] for r in got) / len(got),
                "seconds": sum(r["seconds"] for r in got) / len(got),
            })
    return out


def main(argv: list[str] | None = None) -> int:
    from vlm_teacher.report import load_rows

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store", type=Path, help="a folder written by `vlm-teacher bench`")
    p.add_argument("--methods", default="frozen,tto_oracle,tto")
    p.add_argument("--reasoner", default=None, help="only rows of this reasoner id (as the store records it)")
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows = table(load_rows(args.store), methods, args.reasoner)
    pct = lambda v: "-" if v is None else f"{v:.0%}"  # noqa: E731
    num = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    print("| suite | method | tasks | final pass | final score | preview pass | preview score | "
          "preview/final agree | steps | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['suite']} | {r['method']} | {r['tasks']} | {pct(r['final_pass'])} | {num(r['final_score'])} | "
              f"{pct(r['preview_pass'])} | {num(r['preview_score'])} | {pct(r['agree'])} | {r['steps']:.1f} | "
              f"{r['seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
