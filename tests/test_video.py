"""Video files: mp4s every browser decodes (H.264 High, yuv420p), and a lossless copy
beside them where a verifier reads the file again, so its verdict never depends on
the encoding."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from vlm_teacher.suites.grid import grid_tasks, verify
from vlm_teacher.testing.browser import mp4_codec
from vlm_teacher.video import exact_copy_path, read_video, write_video

#: H.264 profiles Firefox, Safari and hardware decoders play (4:4:4 and 10-bit ones are not among them)
BROWSER_PROFILES = {"Baseline", "Constrained Baseline", "Main", "High"}


def _stream(path):
    import av

    with av.open(str(path)) as container:
        ctx = container.streams.video[0].codec_context
        return ctx.name, ctx.pix_fmt, ctx.profile, ctx.width, ctx.height


@pytest.fixture(scope="module")
def task():
    return grid_tasks("test")[0]


def test_mp4_is_h264_yuv420p_in_a_browser_profile(tmp_path, task):
    path = write_video(tmp_path / "v.mp4", task.video())
    name, pix_fmt, profile, *_ = _stream(path)
    assert (name, pix_fmt) == ("h264", "yuv420p")
    assert profile in BROWSER_PROFILES
    assert mp4_codec(path).startswith(("avc1.64", "avc1.4d", "avc1.42"))  # High / Main / Baseline
    assert not exact_copy_path(path).exists()


def test_odd_sizes_are_padded_for_the_mp4_and_kept_in_the_exact_copy(tmp_path):
    video = np.random.default_rng(0).integers(0, 256, (3, 33, 17, 3), dtype=np.uint8)
    path = write_video(tmp_path / "odd.mp4", video, exact=True)
    assert _stream(path)[3:] == (18, 34)
    assert np.array_equal(read_video(path), video)


def test_exact_copy_gives_back_the_written_pixels(tmp_path):
    """yuv420p halves the chroma resolution: the mp4 alone is not the array; with
    ``exact=True`` read_video returns the array bit for bit."""
    rng = np.random.default_rng(1)
    video = rng.integers(0, 256, (5, 32, 48, 3), dtype=np.uint8)
    path = write_video(tmp_path / "v.mp4", video, exact=True)
    assert exact_copy_path(path).is_file() and exact_copy_path(path).name == "v.exact.mkv"
    assert not np.array_equal(iio.imread(path, plugin="pyav"), video)  # the mp4 is lossy
    assert np.array_equal(read_video(path), video)


def test_a_stale_exact_copy_is_never_used(tmp_path):
    a = np.full((3, 16, 16, 3), 40, np.uint8)
    b = np.full((3, 16, 16, 3), 200, np.uint8)
    path = write_video(tmp_path / "v.mp4", a, exact=True)
    copy = exact_copy_path(path).read_bytes()
    write_video(path, b)  # rewritten without a copy: the old copy goes
    assert not exact_copy_path(path).exists()
    exact_copy_path(path).write_bytes(copy)  # the old copy put back by hand: it belongs to another mp4
    assert abs(int(read_video(path).mean()) - 200) <= 2


def test_verdict_from_the_file_is_the_verdict_on_the_array(tmp_path, task):
    """A reasoner-like video (an off-palette smudge, the verifier reports the colour it measured):
    read back from a bench-style mp4 + exact copy, the verdict is identical; from the mp4's
    pixels alone the measured colour differs."""
    video = task.video().copy()
    rng = np.random.default_rng(2)
    video[2, 16:48, 16:48] = rng.integers(60, 200, (32, 32, 3), dtype=np.uint8)
    want = verify(task, video)
    assert not want.passed and "rgb(" in want.reason
    path = write_video(tmp_path / "video.mp4", video, exact=True)
    assert verify(task, read_video(path)).to_dict() == want.to_dict()
    assert verify(task, iio.imread(path, plugin="pyav")).reason != want.reason
