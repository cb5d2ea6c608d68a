"""Property-based fuzzing of every task loader: whatever bytes or JSON a task file holds,
loading either succeeds or raises UserError (one line, naming the problem). Any other
exception type is a bug (a traceback for the user)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlm_teacher.errors import UserError
from vlm_teacher.suites.grid import grid_tasks, load_task, save_tasks
from vlm_teacher.suites.ruler import load_ruler
from vlm_teacher.suites.vbvr import load_vbvr

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


def _png_b64() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _loads_or_user_error(fn) -> None:
    try:
        suite = fn()
        for task in suite:  # building the tasks decodes images: errors must be UserError too
            assert task.prompt.strip()
    except UserError as exc:
        assert str(exc) and "\n" not in str(exc).strip()


@pytest.fixture(scope="module")
def grid_task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    save_tasks(root, grid_tasks("test", n=1, families=("maze",)))
    return next((root / "test").iterdir())


@SETTINGS
@given(content=st.one_of(json_values.map(json.dumps), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_grid_metadata_fuzz(grid_task_dir, tmp_path_factory, content):
    import shutil

    d = tmp_path_factory.mktemp("fuzz") / grid_task_dir.name
    shutil.copytree(grid_task_dir, d)
    (d / "metadata.json").write_text(content, encoding="latin-1")
    _loads_or_user_error(lambda: [load_task(d)])


@SETTINGS
@given(mutation=st.dictionaries(
    st.sampled_from(["id", "prompt", "first_image", "first_frame_path", "final_frame_path", "prompt_path",
                     "ground_truth_video_path"]),
    json_values | st.sampled_from(["../../etc/passwd", "/abs/path.png", "In-Domain_50/G-1_x_data-generator/00000/first_frame.png",
                                   "data:image/png;base64,!!!", _png_b64()]),
    max_size=4))
def test_vbvr_json_fuzz(tmp_path_factory, mutation):
    root = tmp_path_factory.mktemp("vbvr")
    base = {"id": 0, "prompt": "Solve it.", "first_image": _png_b64(),
            "first_frame_path": "In-Domain_50/G-1_x_data-generator/00000/first_frame.png",
            "final_frame_path": "In-Domain_50/G-1_x_data-generator/00000/final_frame.png",
            "prompt_path": "In-Domain_50/G-1_x_data-generator/00000/prompt.txt",
            "ground_truth_video_path": "In-Domain_50/G-1_x_data-generator/00000/ground_truth.mp4"}
    base.update(mutation)
    (root / "VBVR-Bench.json").write_text(json.dumps([base]))
    _loads_or_user_error(lambda: load_vbvr(root))


@SETTINGS
@given(lines=st.lists(st.one_of(json_values.map(json.dumps), st.text(max_size=40)), min_size=1, max_size=3),
       valid_first=st.booleans())
def test_ruler_jsonl_fuzz(tmp_path_factory, lines, valid_first):
    root = tmp_path_factory.mktemp("ruler")
    good = json.dumps({"task_name": "physics", "index": 0, "category": "science", "prompt": "Drop a ball.",
                       "checklist": [{"Rule Coherence": "Does it fall?"}]})
    body = ([good] if valid_first else []) + [ln.replace("\n", " ") for ln in lines]
    (root / "data.jsonl").write_text("\n".join(body) + "\n")
    _loads_or_user_error(lambda: load_ruler(root))
