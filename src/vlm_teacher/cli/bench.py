"""`vlm-teacher bench` and `vlm-teacher report`: run a suite x methods x seeds, resumably,
and turn the results folder into the paper-shaped tables, plots and a video gallery."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UserError
from .options import add_device_args, add_preview_decoder_arg, add_tto_args, tto_changes

#: the exit status of a bench whose run had failed instances (2 is a usage error, as for every command)
EXIT_FAILED = 1


def parse_seeds(text: str) -> list[int]:
    """``0`` | ``0,1,2`` | ``0-4`` (inclusive) | mixes like ``0-2,7``."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        try:
            if dash and lo:
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                seeds += list(range(a, b + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise UserError(f"bad --seeds {text!r}: use integers like 0 or 0,1,2 or 0-4") from None
    if not seeds:
        raise UserError("--seeds is empty; e.g. --seeds 0")
    return list(dict.fromkeys(seeds))


def _methods(text: str) -> list[str]:
    from ..methods import all_methods

    names: list[str] = []
    for n in text.split(","):
        n = n.strip()
        if n == "all":
            names += all_methods()
        elif n:
            names.append(n)
    return list(dict.fromkeys(names))


def cmd_bench(args) -> int:
    from ..bench import BenchConfig, import_vbvr_results, run_bench

    tto = tto_changes(args)
    judge = {}
    if args.judge_url:
        judge["base_url"] = args.judge_url
    if args.judge_model:
        judge["model"] = args.judge_model
    if args.judge_key_env is not None:
        judge["api_key_env"] = args.judge_key_env or None
    cfg = BenchConfig(suite=args.suite, methods=_methods(args.methods), out=args.out, seeds=parse_seeds(args.seeds),
                      limit=args.limit, reasoner=args.reasoner, teacher=args.teacher,
                      preview_decoder=args.preview_decoder, device=args.device,
                      dtype=args.dtype, tto=tto, num_frames=args.frames, judge=judge, retry_failed=args.retry_failed,
                      teacher_eval=not args.no_teacher_eval, quiet_libraries=not args.verbose)
    summary = run_bench(cfg, executor=args.executor, workers=args.workers, ray_address=args.ray_address,
                        progress=not args.quiet, argv=["vlm-teacher", *sys.argv[1:]],
                        instance_timeout=args.instance_timeout)
    print(summary.line())
    if args.vbvr_results is not None:
        print(f"imported {import_vbvr_results(args.out, args.vbvr_results)} VBVR scores from {args.vbvr_results}")
    print(f"results: {Path(args.out) / 'results.sqlite'}; report: vlm-teacher report {args.out}")
    if summary.failed:
        print(summary.failure_report(), file=sys.stderr)
        if not args.allow_failures:
            print(f"error: {summary.failed} instance(s) failed (exit {EXIT_FAILED}; --allow-failures exits 0; "
                  "--retry-failed runs them again)", file=sys.stderr)
            return EXIT_FAILED
    return 0


def cmd_report(args) -> int:
    from ..report import write_markdown, write_report

    html = write_report(args.dir, out=args.out, gallery=args.gallery)
    print(f"wrote {html}")
    if args.markdown is not None:
        print(f"wrote {write_markdown(args.dir, args.markdown)}")
    return 0


def add_bench_commands(sub) -> None:
    from ..methods import METHOD_PATTERNS
    from ..suites import SUITE_SPECS

    p = sub.add_parser("bench", help="run a suite x methods x seeds into a resumable results folder")
    p.add_argument("--suite", required=True, help=f"{' | '.join(SUITE_SPECS)}")
    p.add_argument("--methods", required=True,
                   help=f"comma-separated: {', '.join(METHOD_PATTERNS)}, or 'all' (the paper's methods and ablations)")
    p.add_argument("--seeds", default="0", help="e.g. 0 | 0,1,2 | 0-4 (default %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="only the first N tasks of the suite")
    p.add_argument("--out", required=True, type=Path, help="results folder (created; re-run to resume)")
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    p.add_argument("--workers", type=int, default=None, help="Ray actors (default: one per GPU, else 1)")
    p.add_argument("--ray-address", default=None, help="connect to a running Ray cluster (default: start one)")
    p.add_argument("--instance-timeout", type=float, default=None, metavar="SECONDS",
                   help="Ray: an instance with no result this long after dispatch (model loading included) is "
                        "stopped and recorded as failed (default: no limit)")
    p.add_argument("--reasoner", type=Path, default=None, help="Wan pipeline folder (default: the embedded model)")
    p.add_argument("--teacher", type=Path, default=None, help="Qwen-VL folder (default: the embedded model)")
    add_preview_decoder_arg(p)
    add_device_args(p)
    p.add_argument("--frames", type=int, default=None, help="video length 4k+1 (default: the task's, else the model's)")
    add_tto_args(p)
    j = p.add_argument_group("RULER judge (an OpenAI-compatible chat endpoint)")
    j.add_argument("--judge-url", default=None, help="base URL, e.g. https://api.openai.com/v1 (default)")
    j.add_argument("--judge-model", default=None, help="model name (default o3)")
    j.add_argument("--judge-key-env", default=None,
                   help="environment variable holding the API key (default OPENAI_API_KEY; '' for none)")
    p.add_argument("--vbvr-results", type=Path, default=None,
                   help="after the run, import scores from the official VBVR kit's <run>_vbvr_results.json (file or folder)")
    p.add_argument("--retry-failed", action="store_true", help="run failed instances again")
    p.add_argument("--allow-failures", action="store_true",
                   help=f"exit 0 when instances failed (default: exit {EXIT_FAILED}, after the results are written)")
    p.add_argument("--no-teacher-eval", action="store_true",
                   help="grid: skip the teacher's judgement of each final video (used for teacher accuracy)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="HTML report (tables, curves, video gallery) of a bench folder")
    p.add_argument("dir", type=Path, help="a folder written by `vlm-teacher bench`")
    p.add_argument("--out", type=Path, default=None, help="HTML file (default DIR/report.html)")
    p.add_argument("--markdown", type=Path, default=None, help="also write the tables as markdown here")
    p.add_argument("--gallery", type=int, default=12, help="tasks in the video gallery (default %(default)s)")
    p.set_defaults(func=cmd_report)
