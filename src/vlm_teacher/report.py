"""`vlm-teacher report DIR`: what a bench folder holds, in the paper's shape.

``DIR/report.html`` (plots as PNG files in ``DIR/report_files/``):

* main table - method x suite/split: mean score and mean wall seconds, then
  per column the full accounting (pass rate, mean score, mean steps, seconds,
  reasoner forward passes, teacher calls, peak memory, failures);
* ablation table - ``tto`` and its ``tto_*`` variants with the change in score;
* per-step curves from the saved histories - per TTO variant the loss of each
  instance, their mean with a stopped instance's last loss carried on, and how many
  still run at each step; the mean P("Yes") per question type (``question_key``);
* teacher accuracy against gain, when rows of several teachers exist: accuracy
  is how often the teacher's P("Yes") to a fixed goal question about a final
  video agrees with the verifier (p > 0.5 iff passed; grid suites), gain is
  the teacher's ``tto`` score minus the ``frozen`` score;
* a video gallery: per task the video of every method (muted, looping, controls on
  hover) with a filmstrip of every frame, the frame of the first broken rule outlined,
  and the verifier's reason under it.

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

MAX_QUESTION_CURVES = 6  # P("Yes") lines per plot: the goal, then the most asked questions
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
def _history_record(bench_dir: Path, row: dict[str, Any]) -> dict[str, Any]:
    """The row's history.json (empty if it has none or it cannot be read)."""
    path = row.get("history_path")
    if not path:
        return {}
    try:
        record = json.loads((bench_dir / path).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _is_tto(row: dict[str, Any]) -> bool:
    base = row["label"].split(" ")[0]
    return base == "tto" or base.startswith("tto_")


def carried_means(series: Sequence[dict[int, float]]) -> tuple[list[int], list[float], list[int]]:
    """Steps, the mean over every series at each step, and how many series have a value at
    that step. A series that ended (an early stop) counts with its last value, so the mean
    moves only when some value moves."""
    steps = sorted({s for one in series for s in one})
    means, running = [], []
    for step in steps:
        carried = [one[max(k for k in one if k <= step)] for one in series if any(k <= step for k in one)]
        means.append(sum(carried) / len(carried))
        running.append(sum(step in one for one in series))
    return steps, means, running


def question_key(index: int, text: str) -> str:
    """The question type a P("Yes") belongs to: ``goal``, a grid process type (``moves``, ``box``,
    ``intact``) when the text is the grid's phrasing, else the text itself (only the same
    question is averaged)."""
    from .suites.grid.questions import PROCESS_TYPES, question_type

    if index == 0:
        return "goal"
    kinds = (question_type(family, text) for family in PROCESS_TYPES)
    return next((k for k in kinds if k is not None), text)


def step_curves(bench_dir: Path, rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per TTO variant label: each instance's loss per step (``per_task``), their mean with
    the stopped instances' last values carried (:func:`carried_means`), how many still run at
    each step, and the same mean of P("Yes") per question type (:func:`question_key`)."""
    acc: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["status"] != "done" or not _is_tto(r):
            continue
        record = _history_record(bench_dir, r)
        hist = list(record.get("history") or [])
        if not hist:
            continue
        queries = record.get("queries") or (r.get("extra") or {}).get("queries") or {}
        texts = [queries.get("goal") or "", *(queries.get("process") or [])]
        a = acc.setdefault(r["label"], {"per_task": [], "p_yes": defaultdict(list)})
        loss: dict[int, float] = {}
        p_yes: dict[str, dict[int, float]] = defaultdict(dict)
        for h in hist:
            step = int(h.get("step", 0))
            if h.get("loss") is not None and math.isfinite(float(h["loss"])):
                loss[step] = float(h["loss"])
            for qi, p in enumerate(h.get("p_yes") or []):
                p_yes[question_key(qi, texts[qi] if qi < len(texts) else f"question {qi}")][step] = float(p)
        if loss:
            a["per_task"].append((f"{r['task_id']} seed {r['seed']}", loss))
        for key, one in p_yes.items():
            a["p_yes"][key].append(one)
    out = {}
    for lab, a in acc.items():
        if not a["per_task"]:
            continue
        steps, means, running = carried_means([one for _, one in a["per_task"]])
        out[lab] = {"instances": len(a["per_task"]), "steps": steps, "loss": means, "running": running,
                    "per_task": a["per_task"],
                    "p_yes": {key: (*carried_means(series)[:2], len(series)) for key, series in a["p_yes"].items()}}
    return out


def _no_curves_reason(rows: Sequence[dict[str, Any]]) -> str:
    tto = [r for r in rows if _is_tto(r)]
    if not tto:
        return "no tto rows here; only tto and its tto_* variants optimise step by step"
    done = [r for r in tto if r["status"] == "done"]
    if not done:
        return f"none of the {len(tto)} tto rows has finished"
    return (f"none of the {len(done)} finished tto rows has a history.json with a finite loss "
            "(a fixed budget of 0 steps, or the files were moved)")


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
        fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(7.2, 5.2), sharex=True, height_ratios=(3, 1))
        for i, (lab, c) in enumerate(curves.items()):
            colour = f"C{i % 10}"
            for _, loss in c["per_task"]:
                steps = sorted(loss)
                ax.plot(steps, [loss[s] for s in steps], color=colour, alpha=0.25, linewidth=0.8)
            ax.plot(c["steps"], c["loss"], color=colour, marker="o", markersize=3, linewidth=2,
                    label=f"{lab}: mean of {c['instances']}")
            ax_n.step(c["steps"], c["running"], where="mid", color=colour, marker="o", markersize=3)
        ax.set_ylabel("loss (lambda-weighted -log P(Yes))")
        ax.set_title("Loss per step: thin lines one task each; the mean keeps a stopped task's last loss", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax_n.set_ylabel("tasks running")
        ax_n.set_ylim(bottom=0)
        ax_n.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax_n.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_n.set_xlabel("optimisation step")
        ax_n.grid(alpha=0.3)
        made["loss"] = _save(fig, files / "loss_per_step.png")
        for i, (lab, c) in enumerate(curves.items()):
            fig, ax = plt.subplots(figsize=(6.4, 4))
            ranked = sorted(c["p_yes"].items(), key=lambda kv: (kv[0] != "goal", -kv[1][2], kv[0]))
            for key, (steps, means, n) in ranked[:MAX_QUESTION_CURVES]:
                name = key if len(key) <= 40 else key[:37] + "..."
                ax.plot(steps, means, marker="o", markersize=3, label=f"{name} (n={n})")
            ax.set_ylim(0, 1)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("optimisation step")
            ax.set_ylabel('mean P("Yes")')
            left = len(ranked) - MAX_QUESTION_CURVES
            ax.set_title(f'P("Yes") per question type: {lab}' + (f" ({left} rarer questions not drawn)" if left > 0 else ""),
                         fontsize=9)
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
.gallery td{vertical-align:top}video{width:288px;image-rendering:pixelated;display:block}
.small{font-size:12px;color:#555}img{max-width:720px;margin:4px}img.strip{max-width:none;image-rendering:pixelated}
td.frames{max-width:820px;overflow-x:auto}.reason{font-size:13px;max-width:780px}
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
    parts.append("<h2>Per-step curves</h2>")
    if curves:
        for name, path in plots.items():
            if name != "scatter":
                parts.append(f"<img src='{html.escape(rel(path))}' alt='{html.escape(name)}'>")
    else:
        parts.append(f"<p class=small>No per-step curves: {html.escape(_no_curves_reason(rows))}.</p>")
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


def filmstrip(video, marked: int | None = None, height: int = 80, max_frames: int = 32):
    """Every frame of ``video`` ((T, H, W, 3) uint8) in a row, ``height`` px high, its index
    under it; frame ``marked`` outlined in red. Longer videos show ``max_frames`` frames
    spread evenly (``marked`` always among them). Returns an (h, w, 3) uint8 image."""
    import numpy as np
    from PIL import Image, ImageDraw

    from .reasoner.base import uniform_frame_indices

    t, h, w, _ = video.shape
    shown = sorted(set(uniform_frame_indices(t, max_frames)) | ({marked} if marked is not None and 0 <= marked < t else set()))
    fw = max(1, round(w * height / h))
    gap, label = 6, 14
    strip = Image.new("RGB", (len(shown) * (fw + gap) + gap, height + 2 * gap + label), "white")
    draw = ImageDraw.Draw(strip)
    for i, f in enumerate(shown):
        x = gap + i * (fw + gap)
        if f == marked:
            draw.rectangle([x - 4, gap - 4, x + fw + 3, gap + height + 3], outline=(214, 39, 40), width=3)
        resample = Image.Resampling.NEAREST if height >= h else Image.Resampling.BOX
        strip.paste(Image.fromarray(video[f]).resize((fw, height), resample), (x, gap))
        draw.text((x, gap + height + 4), str(f), fill=(214, 39, 40) if f == marked else (90, 90, 90))
    return np.asarray(strip)


def _strip_html(bench_dir: Path, out: Path, row: dict[str, Any]) -> str:
    """The row's filmstrip (written under FILES_DIR/strips) with the verifier's reason under it."""
    from .files import safe_name
    from .video import read_video, write_image

    details = (row.get("extra") or {}).get("score_details") or {}
    failure = details.get("first_failure") or {}
    marked = failure.get("frame") if isinstance(failure.get("frame"), int) else None
    try:
        video = read_video(bench_dir / row["video_path"])
    except UserError as exc:
        return f"<span class=small>no filmstrip: {html.escape(str(exc))}</span>"
    path = out.parent / FILES_DIR / "strips" / (safe_name(str(row["video_path"]).replace("/", "_")) + ".png")
    write_image(path, filmstrip(video, marked))
    note = details.get("reason") or ""
    if note and failure.get("rule"):
        note = f"{failure['rule']}: {note}"
    return (f"<img class=strip src='{html.escape(os.path.relpath(path, out.parent))}' alt='every frame'>"
            + (f"<div class=reason>{html.escape(note)}</div>" if note else ""))


def _gallery_html(bench_dir: Path, out: Path, rows: Sequence[dict[str, Any]], labels: Sequence[str], limit: int) -> str:
    if limit <= 0:
        return ""
    vids: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in sorted(rows, key=lambda r: r["seed"]):
        if r["status"] == "done" and r.get("video_path") and r["label"] not in vids[r["task_id"]]:
            vids[r["task_id"]][r["label"]] = r
    tasks = sorted(vids)[:limit]
    if not tasks:
        return "<h2>Video gallery</h2><p class=small>No videos: no finished row points to a video file.</p>"
    parts = [f"<h2>Video gallery</h2><p class=small>first {len(tasks)} tasks, lowest seed. Videos loop (controls on "
             "hover); the filmstrip shows every frame, the frame of the first broken rule outlined in red, and the "
             "verifier's reason under it.</p>",
             "<table class=gallery><tr><th>task</th><th>method</th><th>video</th><th>frames and verdict</th></tr>"]
    for task in tasks:
        shown = [lab for lab in labels if lab in vids[task]]
        for i, lab in enumerate(shown):
            r = vids[task][lab]
            src = os.path.relpath(bench_dir / r["video_path"], out.parent)
            head = f"<td rowspan={len(shown)}>{html.escape(task)}</td>" if i == 0 else ""
            parts.append(
                f"<tr>{head}<td>{html.escape(lab)}<br><span class=small>score {_f(r.get('score'))}, "
                f"{_f(r.get('seconds'), 1)} s</span></td>"
                f"<td><video src='{html.escape(src)}' autoplay muted loop playsinline preload=auto "
                "onmouseenter='this.controls=true' onmouseleave='this.controls=false'></video></td>"
                f"<td class=frames>{_strip_html(bench_dir, out, r)}</td></tr>")
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
