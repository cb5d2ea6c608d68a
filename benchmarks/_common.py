"""Helpers shared by the benchmark scripts: machine description, timing, memory, tables."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
sys.path.insert(0, str(ROOT.parent / "src"))  # run from a checkout without installing


def machine() -> dict[str, Any]:
    """What the figures were measured on (written next to every table): ``runtime.machine_info``
    and the commit."""
    from vlm_teacher.runtime import machine_info

    info = machine_info()
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True, timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["dirty_tree"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """A timestamp after all queued device work has finished."""
    sync(device)
    return time.perf_counter()


def rss_peak_mib() -> float:
    """Process-wide high-water mark of resident memory (Linux: KiB; macOS: bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float:
    """Peak device memory since the last ``reset_peak`` (CUDA), else the process RSS peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return rss_peak_mib()


def median(values: Sequence[float]) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else 0.5 * (v[mid - 1] + v[mid])


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """``columns``: (key, header) pairs."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def write_results(name: str, title: str, command: str, table: str, rows: list[dict[str, Any]],
                  meta: dict[str, Any], notes: Sequence[str] = (), out_dir: Path | None = None) -> Path:
    """Write ``<name>.md`` (the table, the command, the machine) and ``<name>.json``."""
    out = out_dir or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    info = meta.get("machine", {})
    where = info.get("gpu") or f"CPU ({info.get('torch_threads')} threads)"
    lines = [f"# {title}", "", f"Command: `{command}`", "",
             f"Machine: {where}; torch {info.get('torch')}, transformers {info.get('transformers')}, "
             f"diffusers {info.get('diffusers')}; commit {info.get('commit')}"
             f"{' (uncommitted changes)' if info.get('dirty_tree') else ''}; "
             f"{time.strftime('%Y-%m-%d %H:%M', time.localtime())}", "", table, ""]
    lines += [f"- {n}" for n in notes]
    md = out / f"{name}.md"
    md.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    (out / f"{name}.json").write_text(json.dumps({"command": command, "rows": rows, **meta}, indent=2,
                                                 default=str) + "\n", encoding="utf-8")
    return md
