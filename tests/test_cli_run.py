"""`vlm-teacher run` end to end, and its one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vlm_teacher.cli import main
from vlm_teacher.video import read_video


def _run_args(wan, qwen, image, out, *extra):
    return ["run", "--reasoner", str(wan), "--teacher", str(qwen), "--prompt", "Move the blue agent to the green square.",
            "--image", str(image), "--out", str(out), "--steps", "2", "--k", "3", "--quiet", *extra]


def test_run_end_to_end(tiny_wan_dir, tiny_qwen25_dir, first_frame_png, tmp_path):
    out = tmp_path / "out"
    assert main(_run_args(tiny_wan_dir, tiny_qwen25_dir, first_frame_png, out, "--tau", "-1")) == 0
    video = read_video(out / "video.mp4")
    expected_frames = json.loads((tiny_wan_dir / "vlm_teacher.json").read_text())["num_frames"]
    assert video.shape[0] == expected_frames and video.shape[-1] == 3
    assert video.shape[1:3] == (64, 64)
    queries = json.loads((out / "queries.json").read_text())
    assert queries["goal"] and 1 <= len(queries["process"]) <= 3
    hist = json.loads((out / "history.json").read_text())
    assert hist["steps"] == 2 and hist["stop_reason"] == "max_steps" and len(hist["history"]) == 2
    assert len(hist["history"][0]["p_yes"]) == 1 + len(queries["process"])
    assert (out / "adapter.safetensors").stat().st_size > 0
    assert (out / "video.exact.mkv").is_file()  # the lossless copy `grid verify` reads
    assert not list(out.glob(".*")), "temporary files left behind"


def test_run_with_given_queries_and_frames(tiny_wan_dir, tiny_qwen25_dir, first_frame_png, tmp_path):
    qfile = tmp_path / "q.json"
    qfile.write_text(json.dumps({"goal": "Is the goal reached?", "process": ["Is motion valid?"]}))
    out = tmp_path / "out"
    assert main(_run_args(tiny_wan_dir, tiny_qwen25_dir, first_frame_png, out,
                          "--queries", str(qfile), "--frames", "5")) == 0
    assert read_video(out / "video.mp4").shape[0] == 5
    assert json.loads((out / "queries.json").read_text())["goal"] == "Is the goal reached?"


def test_run_honours_the_reasoner_folders_tto_json_under_its_flags(tiny_wan_dir, tiny_qwen25_dir, first_frame_png,
                                                                    tmp_path, capsys):
    import shutil

    from vlm_teacher.optimize import MODEL_TTO_FILE, TTOConfig

    wan = tmp_path / "wan"
    shutil.copytree(tiny_wan_dir, wan)
    (wan / MODEL_TTO_FILE).write_text('{"lr": 0.002, "lora_rank": 8, "tau": 0.5}')
    qfile = tmp_path / "q.json"
    qfile.write_text(json.dumps({"goal": "Is the goal reached?", "process": ["Is motion valid?"]}))
    out = tmp_path / "out"
    assert main(_run_args(wan, tiny_qwen25_dir, first_frame_png, out, "--queries", str(qfile), "--rank", "4",
                          "--tau", "-1")) == 0
    config = json.loads((out / "history.json").read_text())["config"]
    # paper defaults < the folder's tto.json < flags
    assert (config["lr"], config["lora_rank"], config["tau"], config["lam"]) == (0.002, 4, -1.0, TTOConfig().lam)
    (wan / MODEL_TTO_FILE).write_text('{"lam": 2}')
    assert main(_run_args(wan, tiny_qwen25_dir, first_frame_png, tmp_path / "out2", "--queries", str(qfile))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bad optimisation setting") and MODEL_TTO_FILE in err and "\n" not in err


@pytest.mark.parametrize("case", ["missing_image", "unreadable_image", "empty_prompt", "not_wan", "not_qwen",
                                  "bad_frames", "bad_queries"])
def test_bad_input_one_line_error(case, tiny_wan_dir, tiny_qwen25_dir, first_frame_png, tmp_path, capsys):
    wan, qwen, image, extra = tiny_wan_dir, tiny_qwen25_dir, first_frame_png, []
    if case == "missing_image":
        image = tmp_path / "nope.png"
    elif case == "unreadable_image":
        image = tmp_path / "broken.png"
        image.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    elif case == "not_wan":
        wan = tiny_qwen25_dir
    elif case == "not_qwen":
        qwen = tiny_wan_dir
    elif case == "bad_frames":
        extra = ["--frames", "6"]
    elif case == "bad_queries":
        q = tmp_path / "q.json"
        q.write_text("{not json")
        extra = ["--queries", str(q)]
    args = _run_args(wan, qwen, image, tmp_path / "out", *extra)
    if case == "empty_prompt":
        args[args.index("--prompt") + 1] = "   "
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    keyword = {"missing_image": "not found", "unreadable_image": "cannot read image", "empty_prompt": "prompt",
               "not_wan": "Wan", "not_qwen": "Qwen", "bad_frames": "4k+1", "bad_queries": "--queries"}[case]
    assert keyword.lower() in err.lower()
    assert not (tmp_path / "out" / "video.mp4").exists()


def test_cli_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vlm_teacher", "run", "--reasoner", str(tmp_path), "--teacher",
                           str(tmp_path), "--prompt", "x", "--image", str(tmp_path / "none.png"), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "image not found" in proc.stderr


def test_grid_make_and_verify(tmp_path, capsys):
    assert main(["grid", "make", "--split", "test", "--n", "1", "--out", str(tmp_path)]) == 0
    task_dirs = sorted((tmp_path / "test").iterdir())
    assert len(task_dirs) == 2  # one maze, one push
    for d in task_dirs:
        capsys.readouterr()
        assert main(["grid", "verify", "--task", str(d), "--video", str(d / "ground_truth.mp4")]) == 0
        assert json.loads(capsys.readouterr().out)["passed"] is True
    # a frozen video (the first frame repeated) fails with exit code 1
    from vlm_teacher.video import read_image, write_video
    import numpy as np

    frozen = np.repeat(read_image(task_dirs[0] / "first_frame.png")[None], 9, axis=0)
    write_video(tmp_path / "frozen.mp4", frozen)
    assert main(["grid", "verify", "--task", str(task_dirs[0]), "--video", str(tmp_path / "frozen.mp4")]) == 1
