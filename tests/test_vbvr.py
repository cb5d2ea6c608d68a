"""VBVR-Bench reader and submission writer on small fixtures written in its formats."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_teacher.errors import UserError
from vlm_teacher.suites.vbvr import (
    domain_of,
    load_vbvr,
    read_vbvr_results,
    vbvr_submission_path,
    write_vbvr_submission,
)
from vlm_teacher.video import read_video

SAMPLES = [  # (split folder, task, idx)
    ("In-Domain_50", "G-1_object_trajectory_data-generator", "00000"),
    ("In-Domain_50", "G-1_object_trajectory_data-generator", "00003"),
    ("Out-of-Domain_50", "G-47_example_task_data-generator", "00002"),
]


def _image(seed: int, size=(12, 16)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _write_folders(root: Path) -> dict[str, np.ndarray]:
    """The GT release's folders: first/final frame, prompt, (fake) GT video."""
    frames = {}
    for k, (split, task, idx) in enumerate(SAMPLES):
        d = root / split / task / idx
        d.mkdir(parents=True)
        arr = _image(k)
        (d / "first_frame.png").write_bytes(_png_bytes(arr))
        (d / "final_frame.png").write_bytes(_png_bytes(_image(100 + k)))
        (d / "prompt.txt").write_text(f"  Solve sample {k}.\n")
        (d / "ground_truth.mp4").write_bytes(b"")
        frames[f"{split}/{task}/{idx}"] = arr
    return frames


def _json_entries(root: Path, data_url_for: int | None = 1) -> list[dict]:
    entries = []
    for k, (split, task, idx) in enumerate(SAMPLES):
        rel = f"{split}/{task}/{idx}"
        b64 = base64.b64encode((root / rel / "first_frame.png").read_bytes()).decode()
        if k == data_url_for:
            b64 = "data:image/png;base64," + b64
        entries.append({
            "id": 10 + k, "prompt": f"Solve sample {k}.", "first_image": b64,
            "first_frame_path": f"{rel}/first_frame.png", "final_frame_path": f"{rel}/final_frame.png",
            "prompt_path": f"{rel}/prompt.txt", "ground_truth_video_path": f"{rel}/ground_truth.mp4",
        })
    return entries


def _write_json(root: Path, entries: list[dict]) -> None:
    (root / "VBVR-Bench.json").write_text(json.dumps(entries))


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "vbvr"
    frames = _write_folders(root)
    return root, frames


def test_load_from_json_with_data_url(dataset):
    root, frames = dataset
    _write_json(root, _json_entries(root, data_url_for=1))
    # the JSON is the source of truth: change an image on disk, the base64 one must win
    (root / SAMPLES[0][0] / SAMPLES[0][1] / SAMPLES[0][2] / "first_frame.png").write_bytes(_png_bytes(_image(999)))
    suite = load_vbvr(root)
    assert len(suite) == 3
    assert suite.ids() == [f"{s}/{t}/{i}" for s, t, i in SAMPLES]
    tasks = list(suite)
    for task in tasks:
        np.testing.assert_array_equal(task.first_frame, frames[task.id])
    t = tasks[2]
    assert t.prompt == "Solve sample 2."
    md = t.metadata
    assert (md["split"], md["split_folder"], md["task"], md["idx"]) == (
        "Out_of_Domain", "Out-of-Domain_50", "G-47_example_task_data-generator", "00002")
    assert md["domain"] == "Out_of_Domain" and md["json_id"] == 12 and md["category"] is None
    assert Path(md["gt_final_frame"]) == (root / t.id / "final_frame.png").resolve()
    assert Path(md["gt_video"]).name == "ground_truth.mp4"
    assert tasks[0].metadata["split"] == "In_Domain" and tasks[0].metadata["domain"] == "In_Domain"
    assert suite.task(t.id).prompt == t.prompt
    with pytest.raises(UserError, match="not in"):
        suite.task("In-Domain_50/nope/00000")


def test_load_from_folders(dataset):
    root, frames = dataset
    suite = load_vbvr(root, categories={"G-47_example_task_data-generator": "Spatiality"})
    tasks = {t.id: t for t in suite}
    assert sorted(tasks) == sorted(frames)
    for tid, task in tasks.items():
        np.testing.assert_array_equal(task.first_frame, frames[tid])
        assert re.fullmatch(r"Solve sample \d\.", task.prompt)  # prompt.txt stripped
    ood = tasks["Out-of-Domain_50/G-47_example_task_data-generator/00002"]
    assert ood.metadata["category"] == "Spatiality" and ood.metadata["json_id"] is None
    assert len(load_vbvr(root, splits=["In_Domain"])) == 2
    assert len(load_vbvr(root, tasks=["G-47_example_task_data-generator"])) == 1
    with pytest.raises(UserError, match="not found"):
        load_vbvr(root, tasks=["G-999_nothing"])
    with pytest.raises(UserError, match="unknown VBVR categories"):
        load_vbvr(root, categories={"x": "Magic"})


def test_domain_from_task_number():
    assert domain_of("G-24_anything_data-generator") == "Out_of_Domain"
    assert domain_of("O-47_sliding_puzzle_data-generator") == "In_Domain"  # the spec's example, In-Domain_50
    assert domain_of("O-85_x") == "Out_of_Domain"
    assert domain_of("G-25_seperate_object_spinning_data-generator") == "In_Domain"
    assert domain_of("O-3_x") == "In_Domain"
    assert domain_of("custom_task") is None


def test_missing_root_and_empty_root(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        load_vbvr(tmp_path / "missing")
    with pytest.raises(UserError, match="no VBVR-Bench data"):
        load_vbvr(tmp_path)


@pytest.mark.parametrize("field,value,match", [
    ("first_frame_path", "../outside/first_frame.png", "contains '..'"),
    ("final_frame_path", "/etc/passwd", "is absolute"),
    ("ground_truth_video_path", "In-Domain_50/../../x.mp4", "contains '..'"),
])
def test_path_escape_rejected(dataset, field, value, match):
    root, _ = dataset
    entries = _json_entries(root)
    entries[1][field] = value
    _write_json(root, entries)
    with pytest.raises(UserError, match=rf"entry 1, field {field}: .*{match}"):
        load_vbvr(root)


def test_symlink_outside_rejected(dataset, tmp_path):
    root, _ = dataset
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "final_frame.png").write_bytes(_png_bytes(_image(5)))
    split, task, idx = SAMPLES[2]
    link = root / split / task / "link"
    os.symlink(outside, link)
    entries = _json_entries(root)
    entries[2]["final_frame_path"] = f"{split}/{task}/link/final_frame.png"
    _write_json(root, entries)
    with pytest.raises(UserError, match="entry 2, field final_frame_path: .*outside the dataset root"):
        load_vbvr(root)
    # and in the folder layout: a first frame that is a symlink to outside
    (root / "VBVR-Bench.json").unlink()
    target = root / split / task / idx / "first_frame.png"
    target.unlink()
    os.symlink(outside / "final_frame.png", target)
    with pytest.raises(UserError, match="outside the dataset root"):
        load_vbvr(root)


def test_malformed_inputs_name_entry_and_field(dataset):
    root, _ = dataset
    entries = _json_entries(root)
    entries[2]["first_image"] = "not base64 at all!!"
    _write_json(root, entries)
    suite = load_vbvr(root)  # images decode lazily ...
    with pytest.raises(UserError, match="entry 2, field first_image: not valid base64"):
        list(suite)  # ... and fail with the entry named
    entries[2]["first_image"] = base64.b64encode(b"plain text, no image").decode()
    _write_json(root, entries)
    with pytest.raises(UserError, match="entry 2, field first_image: .*not a readable image"):
        list(load_vbvr(root))
    entries[2]["first_image"] = "data:image/png;base64," + base64.b64encode(_png_bytes(_image(1))[:40]).decode()
    _write_json(root, entries)
    with pytest.raises(UserError, match="entry 2, field first_image"):
        list(load_vbvr(root))
    entries = _json_entries(root)
    entries[0]["prompt"] = ""
    del entries[0]["prompt"]
    entries[0]["prompt_path"] = None
    _write_json(root, entries)
    with pytest.raises(UserError, match="entry 0, field prompt"):
        load_vbvr(root)
    entries = _json_entries(root)
    entries.append(dict(entries[0]))
    _write_json(root, entries)
    with pytest.raises(UserError, match="entry 3: duplicate sample"):
        load_vbvr(root)
    entries = _json_entries(root)
    entries[1]["first_frame_path"] = "In-Domain_50/G-1_object_trajectory_data-generator/3/first_frame.png"
    _write_json(root, entries)
    with pytest.raises(UserError, match="entry 1: sample folder '3' must be five digits"):
        load_vbvr(root)
    (root / "VBVR-Bench.json").write_text("[{")
    with pytest.raises(UserError, match="not valid JSON"):
        load_vbvr(root)
    (root / "VBVR-Bench.json").write_text('{"a": 1}')
    with pytest.raises(UserError, match="JSON array"):
        load_vbvr(root)
    (root / "VBVR-Bench.json").write_text('[1]')
    with pytest.raises(UserError, match="entry 0: expected an object"):
        load_vbvr(root)


def test_submission_layout(dataset, tmp_path):
    root, _ = dataset
    _write_json(root, _json_entries(root))
    tasks = list(load_vbvr(root))
    out = tmp_path / "submissions"
    video = np.zeros((5, 16, 16, 3), dtype=np.uint8)
    video[:, 4:12, 4:12] = 200
    paths = [write_vbvr_submission(out, "my-model", t, video, fps=16) for t in tasks]
    rel = sorted(str(p.relative_to(out)) for p in paths)
    assert rel == sorted([
        "my-model/In-Domain_50/G-1_object_trajectory_data-generator/00000.mp4",
        "my-model/In-Domain_50/G-1_object_trajectory_data-generator/00003.mp4",
        "my-model/Out-of-Domain_50/G-47_example_task_data-generator/00002.mp4",
    ])
    assert all(re.fullmatch(r"\d{5}\.mp4", p.name) for p in paths)
    back = read_video(paths[0])
    assert back.shape == video.shape
    assert abs(int(back[0, 8, 8, 0]) - 200) <= 3
    assert not list(out.rglob(".*"))  # no temporary files left behind
    with pytest.raises(UserError, match="model name"):
        vbvr_submission_path(out, "../evil", tasks[0])
    with pytest.raises(UserError, match="load it with load_vbvr"):
        from vlm_teacher.task import Task
        vbvr_submission_path(out, "m", Task(id="x", prompt="p"))


def test_read_official_results(tmp_path):
    path = tmp_path / "m_vbvr_results.json"
    path.write_text(json.dumps({"model_name": "m", "summary": {}, "samples": [
        {"video_path": "x", "video_file": "00002.mp4", "task_name": "G-47_example_task_data-generator",
         "split": "Out_of_Domain", "category": "Spatiality", "folder": "Out-of-Domain_50", "score": 0.85,
         "dimensions": {"task_specific": 0.85}, "error": None}]}))
    assert read_vbvr_results(path) == {"Out-of-Domain_50/G-47_example_task_data-generator/00002": 0.85}
    path.write_text(json.dumps({"samples": [{"folder": "x"}]}))
    with pytest.raises(UserError, match="sample 0 lacks"):
        read_vbvr_results(path)
