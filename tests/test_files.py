"""Output files: atomic writes with the umask's mode, what a kill leaves behind removed when the
instance runs again, and `make bench-cpu` writing no tracked file."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vlm_teacher.files import TMP_MARK, atomic_path, remove_temporaries, write_json, write_text

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077, 0o002])
def test_written_files_respect_the_umask(umask, tmp_path):
    from vlm_teacher.video import write_image, write_video

    old = os.umask(umask)
    try:
        paths = [tmp_path / "a.txt", tmp_path / "b.json", tmp_path / "c.png", tmp_path / "d.mp4"]
        write_text(paths[0], "x")
        write_json(paths[1], {"a": 1})
        write_image(paths[2], np.zeros((8, 8, 3), np.uint8))
        write_video(paths[3], np.zeros((3, 16, 16, 3), np.uint8))
    finally:
        os.umask(old)
    for p in paths:
        assert (p.stat().st_mode & 0o777) == 0o666 & ~umask, p


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "video.mp4") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


_KILLED_WRITER = """
import os, signal, sys
from vlm_teacher.files import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half a video")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_mid_write(dest: Path) -> list[Path]:
    """Write ``dest`` in a process that is killed (SIGKILL) before the rename; returns what it left."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(dest)], capture_output=True, timeout=120)
    assert proc.returncode == -9
    left = [p for p in dest.parent.iterdir() if p.name != dest.name]
    assert left and not dest.exists()
    return left


def test_remove_temporaries_removes_what_a_kill_left_and_nothing_else(tmp_path):
    left = _killed_mid_write(tmp_path / "video.mp4")
    (tmp_path / "history.json").write_text("{}")
    (tmp_path / ".hidden").write_text("not ours")
    assert remove_temporaries(tmp_path) == left
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "history.json"]
    assert all(TMP_MARK in p.name for p in left)


def test_a_killed_instances_temporary_video_is_removed_on_resume(tmp_path, tiny_wan_dir):
    """The instance's run folder holds a half-written video of a killed attempt; the resumed bench
    runs the instance again and leaves only the finished files there."""
    from vlm_teacher.bench import BenchConfig, plan, run_bench

    cfg = BenchConfig(suite="grid:test", methods=["frozen"], out=tmp_path / "b", limit=1, reasoner=tiny_wan_dir,
                      teacher_eval=False)
    (inst,) = plan(cfg)
    run_dir = cfg.out / inst.run_dir
    _killed_mid_write(run_dir / "video.mp4")
    summary = run_bench(cfg, progress=False)
    assert (summary.ran, summary.failed) == (1, 0)
    assert sorted(p.name for p in run_dir.iterdir()) == ["history.json", "video.exact.mkv", "video.mp4"]


def test_make_bench_cpu_writes_no_tracked_file():
    """`make bench-cpu` (what CI runs) passes its output path; none of it is under benchmarks/results."""
    proc = subprocess.run(["make", "-n", "bench-cpu"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    (line,) = [ln for ln in proc.stdout.splitlines() if "benchmarks/cpu_step.py" in ln]
    argv = shlex.split(line)
    out = Path(argv[argv.index("--out") + 1])
    assert not (ROOT / out).resolve().is_relative_to(ROOT / "benchmarks" / "results")
    tracked = subprocess.run(["git", "ls-files", str(out) + ".md", str(out) + ".json"], cwd=ROOT,
                             capture_output=True, text=True).stdout
    assert tracked == ""
    ci = (ROOT / ".ci" / "run").read_text()
    (ci_line,) = [ln for ln in ci.splitlines() if ln.startswith("make bench-cpu")]
    assert "BENCH_CPU_OUT=" in ci_line and "mktemp" in ci_line  # CI: a scratch folder


def test_run_into_a_folder_a_killed_run_left_removes_its_temporaries(tmp_path, tiny_wan_dir, tiny_qwen25_dir):
    from vlm_teacher.cli import main

    out = tmp_path / "out"
    left = _killed_mid_write(out / "video.mp4")
    assert main(["run", "--reasoner", str(tiny_wan_dir), "--teacher", str(tiny_qwen25_dir), "--prompt",
                 "Move the agent.", "--out", str(out), "--quiet", "--fixed-steps", "1", "--k", "2"]) == 0
    assert not any(p.exists() for p in left) and (out / "video.mp4").is_file()
    assert not list(out.glob(f".*{TMP_MARK}*"))
