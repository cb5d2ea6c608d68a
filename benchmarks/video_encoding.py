"""What the mp4 encoding does to the grid verifier's verdicts.

For each video (ground truths of a grid split, every corruption kind of them, and the
videos of bench folders, read as the verifier reads them: exact copies where written)
the verdict on the array is compared with the verdict on the same array written as an
mp4 and decoded again, H.264 yuv444p (the old format) and yuv420p (the browser-safe
one written now): how many verdicts flip pass/fail, change score, change reason. Bench
runs keep a lossless copy next to the mp4 (video.exact.mkv), so their stored verdicts
never depend on this; the table says what a verifier reading only the mp4 would see.

    python benchmarks/video_encoding.py                                  # grid:test
    python benchmarks/video_encoding.py --bench runs/grid --out-dir /tmp/enc
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

import _common as C

FORMATS = ("yuv444p", "yuv420p")


def decoded(video: np.ndarray, pixel_format: str, folder: Path) -> np.ndarray:
    import imageio.v3 as iio

    path = folder / "v.mp4"
    iio.imwrite(path, video, fps=8, codec="libx264", plugin="pyav", out_pixel_format=pixel_format)
    return iio.imread(path, plugin="pyav")


def sources(split: str, n: int | None, benches: list[Path]):
    """(kind, grid task, video array) triples."""
    from vlm_teacher.bench import open_store
    from vlm_teacher.suites.grid import grid_tasks
    from vlm_teacher.suites.grid.corrupt import CORRUPTIONS, corrupt
    from vlm_teacher.video import read_video

    tasks = {t.id: t for t in grid_tasks(split, n=n)}
    rng = np.random.default_rng(0)
    for t in tasks.values():
        gt = t.video()
        yield "ground truth", t, gt
        for kind in CORRUPTIONS[t.family]:
            try:
                yield f"corrupt: {kind}", t, np.asarray(corrupt(t, gt, kind, rng))
            except Exception:  # noqa: BLE001 - a corruption that does not fit this task is skipped
                continue
    for bench in benches:
        with open_store(bench) as store:
            rows = [r for r in store.rows(status="done") if r.get("video_path") and r["task_id"] in tasks]
        for r in rows:
            yield f"bench: {r['method']}", tasks[r["task_id"]], read_video(bench / r["video_path"])


def main(argv: list[str] | None = None) -> int:
    from vlm_teacher.suites.grid import verify

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="test", help="grid split (default %(default)s)")
    p.add_argument("--tasks", type=int, default=None, help="tasks per family (default: the split's count)")
    p.add_argument("--bench", type=Path, action="append", default=[],
                   help="a bench folder whose grid videos to add (repeatable)")
    p.add_argument("--out-dir", type=Path, default=None, help="write video_encoding.md/.json there (default: print only)")
    args = p.parse_args(argv)
    counts: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, task, video in sources(args.split, args.tasks, args.bench):
            want = verify(task, video)
            c = counts.setdefault(kind, {"videos": 0, "passed": 0, **{f"{f} {k}": 0 for f in FORMATS
                                                                       for k in ("flips", "score", "reason")}})
            c["videos"] += 1
            c["passed"] += want.passed
            for fmt in FORMATS:
                got = verify(task, decoded(video, fmt, Path(tmp)))
                c[f"{fmt} flips"] += got.passed != want.passed
                c[f"{fmt} score"] += abs(got.score - want.score) > 1e-9
                c[f"{fmt} reason"] += got.reason != want.reason
    rows = [{"kind": k, **v} for k, v in counts.items()]
    columns = [("kind", "videos"), ("videos", "n"), ("passed", "passed")]
    columns += [(f"{f} {k}", f"{f}: {k}") for f in FORMATS for k in ("flips", "score", "reason")]
    table = C.markdown_table(rows, columns)
    print(table)
    if args.out_dir is not None:
        command = "python benchmarks/video_encoding.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        md = C.write_results("video_encoding", "Grid verdicts after an mp4 round trip", command.strip(), table, rows,
                             {"machine": C.machine()},
                             notes=["flips: pass/fail changed; score: score changed; reason: the reason text changed "
                                    "(it names measured colours, so any pixel change can alter it)"],
                             out_dir=args.out_dir)
        print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
