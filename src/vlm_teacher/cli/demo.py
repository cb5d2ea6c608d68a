"""`vlm-teacher demo`: the method at a glance on the embedded default.

On a fixed held-out set of grid tasks (the first tasks of ``grid:test``, families
interleaved) it runs, with the shipped models:

1. ``frozen``   - the reasoner as it is, one video per task;
2. ``tto``      - teacher test-time optimisation (paper defaults);
3. ``best_of_n`` - N seeds, the teacher picks one; N is set from the wall time measured
   in 1-2 (mean TTO seconds / mean frozen seconds per task) so both get about the same
   time. N is written to ``demo.json`` and reused when the demo is resumed;
4. ``tto_oracle`` - the same loop with the grid oracle's reward (the ground truth): the
   loop's upper bound, beside what the teacher makes of it.

Then it prints a table (pass rate and mean score by the pixel verifier, mean steps,
seconds per task) and writes the report (videos side by side, per-step curves).
Everything goes through ``vlm-teacher bench``'s store, so an interrupted demo resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..files import check_output_folder, write_json

DEMO_SUITE = "grid:test"
MIN_N, MAX_N = 2, 16


def _bench(args, methods: list[str]):
    from ..bench import BenchConfig, run_bench

    cfg = BenchConfig(suite=DEMO_SUITE, methods=methods, out=args.out, seeds=[0], limit=args.tasks,
                      reasoner=args.reasoner, teacher=args.teacher,
                      tto={} if args.steps is None else {"max_steps": args.steps})
    summary = run_bench(cfg, progress=not args.quiet, argv=None)
    print(summary.line())
    return summary


def _mean_seconds(rows: list[dict], method: str) -> float:
    secs = [r["seconds"] for r in rows if r["method"] == method and r["status"] == "done" and r.get("seconds")]
    if not secs:
        raise UserError(f"the demo's {method} runs all failed; see {method} rows with `vlm-teacher report`")
    return sum(secs) / len(secs)


def tto_time_ratio(rows: list[dict]) -> float:
    """TTO's mean wall time per task in frozen samples' wall time."""
    return _mean_seconds(rows, "tto") / _mean_seconds(rows, "frozen")


def matched_n(rows: list[dict]) -> int:
    """Best-of-N candidates that cost about as much wall time as TTO did."""
    return max(MIN_N, min(MAX_N, round(tto_time_ratio(rows))))


def matching_note(rows: list[dict], n: int) -> str:
    """How well best-of-N's wall time matches TTO's (N is clipped to [MIN_N, MAX_N])."""
    ratio = tto_time_ratio(rows)
    if ratio > MAX_N + 0.5 and n == MAX_N:
        return (f"best_of_n:{n}: N capped at {MAX_N}; TTO took {ratio:.0f}x a frozen sample's wall time, so "
                f"best-of-N had less time than TTO.")
    if ratio < MIN_N - 0.5 and n == MIN_N:
        return f"best_of_n:{n}: at least {MIN_N} candidates; TTO took only {ratio:.1f}x a frozen sample's wall time."
    return f"best_of_n:{n}: N matched to TTO's wall time ({ratio:.1f}x a frozen sample's)."


def summary_table(rows: list[dict]) -> str:
    """Plain-text table: one line per method."""
    order = []
    for r in rows:
        if r["method"] not in order:
            order.append(r["method"])
    lines = [f"{'method':<16}{'tasks':>6}{'pass rate':>11}{'mean score':>12}{'mean steps':>12}{'s / task':>10}"]
    for m in order:
        done = [r for r in rows if r["method"] == m and r["status"] == "done"]
        if not done:
            lines.append(f"{m:<16}{0:>6}{'failed':>11}")
            continue
        mean = lambda key: sum(float(r[key] or 0) for r in done) / len(done)  # noqa: E731
        steps = f"{mean('steps'):.1f}" if any(r.get("steps") is not None for r in done) else "-"
        lines.append(f"{m:<16}{len(done):>6}{100 * mean('passed'):>10.0f}%{mean('score'):>12.3f}{steps:>12}"
                     f"{mean('seconds'):>10.1f}")
    return "\n".join(lines)


def cmd_demo(args) -> int:
    from ..report import load_rows, write_report

    out = check_output_folder(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = out / "demo.json"
    state = json.loads(record.read_text()) if record.is_file() else {}
    if state and state.get("tasks") != args.tasks:
        raise UserError(f"{out} holds a demo of {state.get('tasks')} tasks; use another --out or --tasks {state.get('tasks')}")

    models = "embedded" if args.reasoner is None and args.teacher is None else "given"
    print(f"demo: {args.tasks} held-out grid tasks ({DEMO_SUITE}), {models} reasoner and teacher, seed 0")
    _bench(args, ["frozen", "tto"])
    n = state.get("best_of_n") or matched_n(load_rows(out))
    write_json(record, {"tasks": args.tasks, "best_of_n": n})
    shown = ("frozen", f"best_of_n:{n}", "tto", "tto_oracle")
    _bench(args, list(shown))

    order = {m: i for i, m in enumerate(shown)}
    rows = sorted((r for r in load_rows(out) if r["method"] in order), key=lambda r: order[r["method"]])
    report = write_report(out)
    print()
    print(summary_table(rows))
    print(f"\n{matching_note(rows, n)} Scores are the pixel verifier's, never the teacher's. tto_oracle is the "
          "same loop with the ground truth as its reward: what the loop can deliver, not a method.")
    print(f"videos: {out / 'runs'}\nreport: {report}")
    return 0


def add_demo_command(sub) -> None:
    p = sub.add_parser("demo", help="frozen vs best-of-N vs teacher TTO (and the oracle TTO) on held-out grid tasks, embedded models")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default %(default)s)")
    p.add_argument("--tasks", type=int, default=8, help="held-out tasks, families interleaved (default %(default)s)")
    p.add_argument("--reasoner", type=Path, default=None, help="another Wan pipeline folder (default: embedded)")
    p.add_argument("--teacher", type=Path, default=None, help="another Qwen-VL folder (default: embedded)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--steps", type=int, default=None, help="TTO step budget N (default: the reasoner's tto.json, else the paper's 40)")
    p.set_defaults(func=cmd_demo)
