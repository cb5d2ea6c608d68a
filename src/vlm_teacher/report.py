"""`vlm-teacher report DIR`: what a bench folder holds, in the paper's shape.

``DIR/report.html`` (plots as PNG files in ``DIR/report_files/``):

* main table - method x suite/split: mean score and mean wall seconds, then
  per column the full accounting (pass rate, mean score, mean steps, seconds,
  reasoner forward passes, teacher calls, peak memory, failures);
* ablation table - ``tto`` and its ``tto_*`` variants with the change in score;
* per-step curves from the saved histories - mean loss per step for each TTO
  variant, and the mean P("Yes") of each question (goal, process 1-3);
* teacher accuracy against gain, when rows of several teachers exist: accuracy
  is how often the teacher's P("Yes") to a fixed goal question about a final
  video agrees with the verifier (p > 0.5 iff passed; grid suites), gain is
  the teacher's ``tto`` score minus the ``frozen`` score;
* a video gallery: per task the videos of every method side by side.

Means leave out rows without the value (a failed instance, an unscored VBVR
video), as the store's summary does; ``n`` says how many rows a cell covers.
:func:`markdown_report` writes the same tables as markdown (benchmarks/results).
"""

from __future__ import annotations

import html
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import UserError

REPORT_NAME = "report.html"
FILES_DIR = "report_files"

_ORDER = ("frozen", "best_of_n", "oracle_pass_at_n", "solver", "videotpo", "tto")


# ------------------------------------------------------------------ loading and grouping
def load_rows(bench_dir: str | os.PathLike) -> list[dict[str, Any]]:
    from .bench import STORE_NAME
    from .store import ResultsStore

    path = Path(bench_dir) / STORE_NAME
    if not path.is_file():
        raise UserError(f"{bench_dir} has no {STORE_NAME}; give a folder written by `vlm-teacher bench`")
    with ResultsStore(path) as store:
        return store.rows()


def _method_rank(method: str) -> tuple:
    base = method.split(":")[0]
    if base.startswith("tto_"):
        return (len(_ORDER) + 1, method)
    return (_ORDER.index(base) if base in _ORDER else len(_ORDER), method)


def label_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``label`` (the method, plus the teacher or a hash where one method ran under
    several configurations) and ``group`` (the report column) to each row."""
    configs: dict[str, set[str]] = defaultdict(set)
    teachers_of: dict[tuple[str, str], str | None] = {}
    for r in rows:
        configs[r["method"]].add(r["config_hash"])
        teachers_of[(r["method"], r["config_hash"])] = _teacher_of(r)
    out = []
    for r in rows:
        label = r["method"]
        if len(configs[r["method"]]) > 1:
            teacher = teachers_of[(r["method"], r["config_hash"])]
            others = {teachers_of[(r["method"], h)] for h in configs[r["method"]]}
            label += f" [{teacher}]" if teacher and len(others) == len(configs[r["method"]]) else f" #{r['config_hash'][:6]}"
        extra = r.get("extra") or {}
        out.append({**r, "label": label, "group": extra.get("group") or r["suite"]})
    return out


def _teacher_of(row: dict[str, Any]) -> str | None:
    extra = row.get("extra") or {}
    return extra.get("teacher") or extra.get("eval_teacher")


def _mean(values: Iterable[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def cell_stats(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in rows if r["status"] == "done"]
    return {
        "n": len(rows),
        "failed": sum(r["status"] == "failed" for r in rows),
        "scored": sum(r.get("score") is not None for r in done),
        "score": _mean(r.get("score") for r in done),
        "pass_rate": _mean(r.get("passed") for r in done),
        "steps": _mean(r.get("steps") for r in done),
        "seconds": _mean(r.get("seconds") for r in done),
        "reasoner_calls": _mean(r.get("reasoner_calls") for r in done),
        "teacher_calls": _mean(r.get("teacher_calls") for r in done),
        "peak_mem_mb": max((r["peak_mem_mb"] for r in done if r.get("peak_mem_mb") is not None), default=None),
    }


def tables(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{"labels", "groups", "cells": {(label, group): stats}, "ablations": [...]}``."""
    rows = label_rows(rows)
    labels = sorted({r["label"] for r in rows}, key=lambda lab: (_method_rank(lab.split(" ")[0]), lab))
    groups = sorted({r["group"] for r in rows})
    by: dict[tuple[str, str], list] = defaultdict(list)
    for r in rows:
        by[(r["label"], r["group"])].append(r)
    cells = {k: cell_stats(v) for k, v in by.items()}
    teachers: dict[str, set] = defaultdict(set)
    for r in rows:
        teachers[r["label"]].add(_teacher_of(r))
    tto_labels = [lab for lab in labels if lab.split(" ")[0] == "tto"]
    ablations = []
    for lab in labels:
        base = lab.split(" ")[0]
        if base != "tto" and not base.startswith("tto_"):
            continue
        # the reference: plain tto with the same teacher (or the only tto there is)
        same = [t for t in tto_labels if teachers[t] == teachers[lab]]
        ref_label = lab if base == "tto" else (same[0] if len(same) == 1 else
                                                tto_labels[0] if len(tto_labels) == 1 else None)
        entry = {"label": lab, "description": _describe(base), "cells": {}}
        for g in groups:
            c = cells.get((lab, g))
            if c is None:
                continue
            delta = None if (ref_label is None or lab == ref_label) else \
                paired_delta(by[(lab, g)], by.get((ref_label, g), []))
            entry["cells"][g] = {**c, "delta": delta}
        ablations.append(entry)
    return {"labels": labels, "groups": groups, "cells": cells, "ablations": ablations, "rows": rows}


def paired_delta(rows: Sequence[dict[str, Any]], ref_rows: Sequence[dict[str, Any]]) -> float | None:
    """Mean score change against the reference on the instances (task, seed) both
    finished: an ablation run on a few tasks is compared with tto on those tasks,
    not with tto's mean over a larger set. None when they share no instance."""
    ref = {(r["task_id"], r["seed"]): r["score"] for r in ref_rows
           if r.get("status") == "done" and r.get("score") is not None}
    diffs = [r["score"] - ref[(r["task_id"], r["seed"])] for r in rows
             if r.get("status") == "done" and r.get("score") is not None and (r["task_id"], r["seed"]) in ref]
    return sum(diffs) / len(diffs) if diffs else None


def _describe(method: str) -> str:
    from .methods import parse_method

    try:
        return parse_method(method).description
    except UserError:
        return ""


# ------------------------------------------------------------------ formatting
def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


DETAIL_COLUMNS = ("n", "pass rate", "score", "steps", "seconds", "reasoner calls", "teacher calls", "peak MB", "failed")


def _detail_cells(c: dict[str, Any]) -> list[str]:
    return [str(c["n"]), _pct(c["pass_rate"]), _f(c["score"]), _f(c["steps"], 1), _f(c["seconds"], 1),
            _f(c["reasoner_calls"], 1), _f(c["teacher_calls"], 1), _f(c["peak_mem_mb"], 0), str(c["failed"])]


def _main_cell(c: dict[str, Any] | None) -> str:
    if c is None:
        return "-"
    return f"{_f(c['score'])} ({_f(c['seconds'], 1)} s)"


def markdown_tables(rows: Sequence[dict[str, Any]]) -> str:
    """The main, detail and ablation tables as markdown."""
    t = tables(rows)
    if not t["labels"]:
        return "_no results yet_\n"
    lines = ["### Main table (mean score, mean wall seconds per instance)", "",
             "| method | " + " | ".join(t["groups"]) + " |", "|---|" + "---:|" * len(t["groups"])]
    for lab in t["labels"]:
        lines.append(f"| {lab} | " + " | ".join(_main_cell(t["cells"].get((lab, g))) for g in t["groups"]) + " |")
    for g in t["groups"]:
        lines += ["", f"### {g}: cost accounting", "", "| method | " + " | ".join(DETAIL_COLUMNS) + " |",
                  "|---|" + "---:|" * len(DETAIL_COLUMNS)]
        for lab in t["labels"]:
            c = t["cells"].get((lab, g))
            if c is not None:
                lines.append(f"| {lab} | " + " | ".join(_detail_cells(c)) + " |")
    if t["ablations"]:
        lines += ["", "### Ablations (score, change vs tto on the same tasks, mean steps, seconds)", "",
                  "| variant | what changes | " + " | ".join(t["groups"]) + " |", "|---|---|" + "---:|" * len(t["groups"])]
        for a in t["ablations"]:
            cells = [_ablation_cell(a["cells"].get(g)) for g in t["groups"]]
            lines.append(f"| {a['label']} | {a['description']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ablation_cell(c: dict[str, Any] | None) -> str:
    if c is None:
        return "-"
    delta = "" if c["delta"] is None else f" ({c['delta']:+.3f})"
    return f"{_f(c['score'])}{delta}, {_f(c['steps'], 1)} steps, {_f(c['seconds'], 1)} s"


# ------------------------------------------------------------------ histories and plots
def _history(bench_dir: Path, row: dict[str, Any]) -> list[dict[str, Any]]:
    path = row.get("history_path")
    if not path:
        return []
    try:
        return list(json.loads((bench_dir / path).read_text()).get("history") or [])
    except (OSError, ValueError):
        return []


def step_curves(bench_dir: Path, rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per TTO variant label: mean loss per step and mean P(Yes) per question index
    (over the instances still running at that step)."""
    acc: dict[str, dict[str, Any]] = {}
    for r in rows:
        base = r["label"].split(" ")[0]
        if r["status"] != "done" or not (base == "tto" or base.startswith("tto_")):
            continue
        hist = _history(bench_dir, r)
        if not hist:
            continue
        a = acc.setdefault(r["label"], {"loss": defaultdict(list), "p_yes": defaultdict(lambda: defaultdict(list)),
                                        "instances": 0})
        a["instances"] += 1
        for h in hist:
            step = int(h.get("step", 0))
            if h.get("loss") is not None and math.isfinite(float(h["loss"])):
                a["loss"][step].append(float(h["loss"]))
            for qi, p in enumerate(h.get("p_yes") or []):
                a["p_yes"][qi][step].append(float(p))
    out = {}
    for lab, a in acc.items():
        steps = sorted(a["loss"])
        out[lab] = {"instances": a["instances"], "steps": steps,
                    "loss": [sum(a["loss"][s]) / len(a["loss"][s]) for s in steps],
                    "p_yes": {qi: ([s for s in sorted(d)], [sum(d[s]) / len(d[s]) for s in sorted(d)])
                              for qi, d in a["p_yes"].items()}}
    return out


def teacher_points(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """(teacher, accuracy, gain) for each teacher with ``tto`` rows and teacher evaluations."""
    agree: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        ev = (r.get("extra") or {}).get("teacher_eval")
        teacher = (r.get("extra") or {}).get("eval_teacher")
        if ev and teacher:
            agree[teacher].append(bool(ev.get("agree")))
    frozen = _mean(r.get("score") for r in rows if r["method"] == "frozen" and r["status"] == "done")
    points = []
    for teacher, flags in sorted(agree.items()):
        tto = _mean(r.get("score") for r in rows if r["method"] == "tto" and r["status"] == "done"
                    and (r.get("extra") or {}).get("teacher") == teacher)
        if tto is None or frozen is None:
            continue
        points.append({"teacher": teacher, "accuracy": sum(flags) / len(flags), "gain": tto - frozen,
                       "n_eval": len(flags)})
    return points


def _plots(files: Path, curves: dict[str, Any], points: list[dict[str, Any]]) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    files.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}
    if curves:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for lab, c in curves.items():
            ax.plot(c["steps"], c["loss"], marker="o", markersize=3, label=f"{lab} (n={c['instances']})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("optimisation step")
        ax.set_ylabel("mean loss (lambda-weighted -log P(Yes))")
        ax.set_title("Loss per step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        made["loss"] = _save(fig, files / "loss_per_step.png")
        for i, (lab, c) in enumerate(curves.items()):
            fig, ax = plt.subplots(figsize=(6.4, 4))
            for qi, (steps, means) in sorted(c["p_yes"].items()):
                ax.plot(steps, means, marker="o", markersize=3, label="goal" if qi == 0 else f"process {qi}")
            ax.set_ylim(0, 1)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("optimisation step")
            ax.set_ylabel('mean P("Yes")')
            ax.set_title(f'P("Yes") per question: {lab}')
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            made[f"pyes:{lab}"] = _save(fig, files / f"p_yes_{i:02d}.png")
    if len(points) >= 2:
        fig, ax = plt.subplots(figsize=(5, 4))
        xs, ys = [p["accuracy"] for p in points], [p["gain"] for p in points]
        ax.scatter(xs, ys)
        for p in points:
            ax.annotate(p["teacher"], (p["accuracy"], p["gain"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
        title = "Teacher accuracy vs gain"
        r2 = _r2(xs, ys)
        if r2 is not None and len(points) >= 3:
            title += f" (R² = {r2:.2f})"
        ax.set_title(title)
        ax.set_xlabel("teacher accuracy (agreement with the verifier)")
        ax.set_ylabel("gain: tto - frozen score")
        ax.grid(alpha=0.3)
        made["scatter"] = _save(fig, files / "teacher_accuracy_vs_gain.png")
    return made


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _r2(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    if sxx == 0 or syy == 0:
        return None
    return sxy * sxy / (sxx * syy)


# ------------------------------------------------------------------ HTML
_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 20px}th,td{border:1px solid #ccc;padding:4px 8px;font-size:13px}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
.gallery td{vertical-align:top;text-align:center}video{width:192px;image-rendering:pixelated}
.small{font-size:12px;color:#555}img{max-width:640px;margin:4px}
"""


def _table_html(header: Sequence[str], body: Iterable[Sequence[str]], numeric_from: int = 1) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for row in body:
        out.append("<tr>" + "".join(f"<td{' class=num' if i >= numeric_from else ''}>{html.escape(str(c))}</td>"
                                    for i, c in enumerate(row)) + "</tr>")
    return "\n".join(out) + "</table>"


def render_html(bench_dir: Path, out: Path, gallery: int = 12) -> str:
    rows = load_rows(bench_dir)
    t = tables(rows)
    rows = t["rows"]
    files = out.parent / FILES_DIR
    curves = step_curves(bench_dir, rows)
    points = teacher_points(rows)
    plots = _plots(files, curves, points)
    rel = lambda p: os.path.relpath(p, out.parent)  # noqa: E731
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>vlm-teacher report: "
             f"{html.escape(str(bench_dir))}</title><style>{_CSS}</style></head><body>",
             f"<h1>vlm-teacher report</h1><p class=small>{html.escape(str(bench_dir))}: {len(rows)} rows. "
             "Means leave out rows without the value; seconds, reasoner calls (transformer forward passes) and "
             "teacher calls are per instance; peak MB is the highest of the column.</p>"]
    parts.append(_commands_html(bench_dir))
    if not rows:
        parts.append("<p>No results yet.</p></body></html>")
        return "\n".join(parts)
    parts.append("<h2>Main table</h2><p class=small>mean score (mean wall seconds per instance)</p>")
    parts.append(_table_html(["method", *t["groups"]],
                             ([lab, *(_main_cell(t["cells"].get((lab, g))) for g in t["groups"])] for lab in t["labels"])))
    for g in t["groups"]:
        parts.append(f"<h3>{html.escape(g)}: cost accounting</h3>")
        parts.append(_table_html(["method", *DETAIL_COLUMNS],
                                 ([lab, *_detail_cells(t["cells"][(lab, g)])] for lab in t["labels"]
                                  if (lab, g) in t["cells"])))
    if t["ablations"]:
        parts.append("<h2>Ablations</h2>")
        header = ["variant", "what changes"]
        for g in t["groups"]:
            header += [f"{g} score", "vs tto", "steps", "seconds"]
        body = []
        for a in t["ablations"]:
            row = [a["label"], a["description"]]
            for g in t["groups"]:
                c = a["cells"].get(g)
                row += ["-"] * 4 if c is None else [_f(c["score"]), "-" if c["delta"] is None else f"{c['delta']:+.3f}",
                                                      _f(c["steps"], 1), _f(c["seconds"], 1)]
            body.append(row)
        parts.append(_table_html(header, body, numeric_from=2))
    if plots:
        parts.append("<h2>Per-step curves</h2>")
        for name, path in plots.items():
            if name != "scatter":
                parts.append(f"<img src='{html.escape(rel(path))}' alt='{html.escape(name)}'>")
    parts.append("<h2>Teacher accuracy vs gain</h2>")
    if "scatter" in plots:
        parts.append(f"<img src='{html.escape(rel(plots['scatter']))}' alt='teacher accuracy vs gain'>")
        parts.append(_table_html(["teacher", "accuracy", "gain", "videos judged"],
                                 ([p["teacher"], _f(p["accuracy"]), f"{p['gain']:+.3f}", p["n_eval"]] for p in points)))
    else:
        parts.append("<p class=small>Needs tto and frozen rows of at least two teachers on a grid suite "
                     f"(found {len(points)}).</p>")
    parts.append(_gallery_html(bench_dir, out, rows, t["labels"], gallery))
    parts.append("</body></html>")
    return "\n".join(parts)


def _commands_html(bench_dir: Path) -> str:
    cmds = bench_commands(bench_dir)
    if not cmds:
        return ""
    return "<p class=small>Produced by:</p><pre>" + html.escape("\n".join(cmds)) + "</pre>"


def _recorded_runs(bench_dir: Path) -> list[dict[str, Any]]:
    """The invocations ``bench.json`` records (none if it is missing or unreadable)."""
    from .bench import RECORD_NAME

    try:
        return json.loads((Path(bench_dir) / RECORD_NAME).read_text()).get("runs", [])
    except (OSError, ValueError):
        return []


def bench_machines(bench_dir: Path) -> list[str]:
    """One line per distinct machine the recorded bench runs used."""
    runs = _recorded_runs(bench_dir)
    lines = []
    for r in runs:
        m = r.get("machine") or {}
        if not m:
            continue
        text = (f"{m.get('platform')}, {m.get('cpus')} CPUs, {m.get('gpu') or 'no GPU'}; python {m.get('python')}, "
                f"torch {m.get('torch')} ({m.get('torch_threads')} threads)")
        lines.append(text)
    return list(dict.fromkeys(lines))


def bench_models(bench_dir: Path) -> list[str]:
    """The model identities (``bench.model_id``) the recorded runs used."""
    runs = _recorded_runs(bench_dir)
    found = [", ".join(f"{k} {v}" for k, v in sorted((r.get("models") or {}).items())) for r in runs]
    return list(dict.fromkeys(f for f in found if f))


def bench_commands(bench_dir: Path) -> list[str]:
    """The distinct command lines recorded in ``bench.json``, in order."""
    runs = _recorded_runs(bench_dir)
    cmds = [" ".join(_quote(a) for a in r["argv"]) for r in runs if r.get("argv")]
    return list(dict.fromkeys(cmds))


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(str(arg))


def _gallery_html(bench_dir: Path, out: Path, rows: Sequence[dict[str, Any]], labels: Sequence[str], limit: int) -> str:
    if limit <= 0:
        return ""
    vids: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in sorted(rows, key=lambda r: r["seed"]):
        if r["status"] == "done" and r.get("video_path") and r["label"] not in vids[r["task_id"]]:
            vids[r["task_id"]][r["label"]] = r
    tasks = sorted(vids)[:limit]
    if not tasks:
        return ""
    shown = [lab for lab in labels if any(lab in vids[t] for t in tasks)]
    parts = [f"<h2>Video gallery</h2><p class=small>first {len(tasks)} tasks, lowest seed; score under each video</p>",
             "<table class=gallery><tr><th>task</th>" + "".join(f"<th>{html.escape(lab)}</th>" for lab in shown) + "</tr>"]
    for task in tasks:
        cells = [f"<td>{html.escape(task)}</td>"]
        for lab in shown:
            r = vids[task].get(lab)
            if r is None:
                cells.append("<td>-</td>")
                continue
            src = os.path.relpath(bench_dir / r["video_path"], out.parent)
            cells.append(f"<td><video src='{html.escape(src)}' controls loop muted playsinline></video>"
                         f"<br><span class=small>score {_f(r.get('score'))}, {_f(r.get('seconds'), 1)} s</span></td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    return "\n".join(parts)


# ------------------------------------------------------------------ entry points
def write_report(bench_dir: str | os.PathLike, out: str | os.PathLike | None = None, gallery: int = 12) -> Path:
    from .files import write_text

    bench_dir = Path(bench_dir)
    out = Path(out) if out is not None else bench_dir / REPORT_NAME
    text = render_html(bench_dir, out, gallery)
    write_text(out, text)
    return out


def markdown_report(bench_dir: str | os.PathLike, title: str | None = None) -> str:
    """Markdown: title, the command lines that produced the folder, the tables."""
    bench_dir = Path(bench_dir)
    rows = load_rows(bench_dir)
    lines = [f"# {title or 'vlm-teacher bench: ' + bench_dir.name}", ""]
    cmds = bench_commands(bench_dir)
    if cmds:
        lines += ["Produced by:", "", "```bash", *cmds, "```", ""]
    machines = bench_machines(bench_dir)
    if machines:
        lines += ["Machine: " + "; ".join(machines), ""]
    models = bench_models(bench_dir)
    if models:
        lines += ["Models (folder name-content hash): " + "; ".join(models), ""]
    points = teacher_points(label_rows(rows))
    lines.append(markdown_tables(rows))
    if len(points) >= 2:
        lines += ["", "### Teacher accuracy vs gain", "", "| teacher | accuracy | gain |", "|---|---:|---:|"]
        lines += [f"| {p['teacher']} | {p['accuracy']:.3f} | {p['gain']:+.3f} |" for p in points]
    return "\n".join(lines).rstrip() + "\n"


def write_markdown(bench_dir: str | os.PathLike, path: str | os.PathLike, title: str | None = None) -> Path:
    from .files import write_text

    path = Path(path)
    write_text(path, markdown_report(bench_dir, title))
    return path
