"""Shared fixtures: tiny random models built from config, saved to disk and loaded
back through the real adapters (no downloads are possible here)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import settings

# Property tests draw their examples from a fixed seed (the same examples on every run, so a CI
# failure reproduces and a pass is not luck); HYPOTHESIS_PROFILE=explore draws fresh ones.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory):
    from vlm_teacher.testing.tiny_wan import build_tiny_wan_pipeline

    return build_tiny_wan_pipeline(tmp_path_factory.mktemp("wan") / "tiny-wan", seed=0)


@pytest.fixture(scope="session", params=["qwen2_5_vl", "qwen3_vl"])
def tiny_qwen_dir(request, tmp_path_factory):
    from vlm_teacher.testing.tiny_qwen import build_tiny_qwen_vl

    return build_tiny_qwen_vl(tmp_path_factory.mktemp("qwen") / request.param, arch=request.param, seed=0)


@pytest.fixture(scope="session")
def tiny_qwen25_dir(tmp_path_factory):
    from vlm_teacher.testing.tiny_qwen import build_tiny_qwen_vl

    return build_tiny_qwen_vl(tmp_path_factory.mktemp("qwen25") / "qwen2_5_vl", arch="qwen2_5_vl", seed=0)


@pytest.fixture(scope="session")
def first_frame_png(tmp_path_factory):
    from vlm_teacher.video import write_image

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    return write_image(tmp_path_factory.mktemp("img") / "first.png", img)


@pytest.fixture(scope="module")
def suite():
    """The grid test split (a module may define its own ``suite`` / ``task``)."""
    from vlm_teacher.suites import load_suite

    return load_suite("grid:test")


@pytest.fixture(scope="module")
def task(suite):
    """The first grid test task (maze-test-00000)."""
    return suite.task(suite.ids()[0])
