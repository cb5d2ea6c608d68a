"""The pixel verifier of the grid suite: ground truth passes (also through mp4 and
blur), every corruption and every hand-made rule break fails with the right reason."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFilter

from vlm_teacher.errors import UserError
from vlm_teacher.suites.grid import (
    CELL,
    CORRUPTIONS,
    FAMILIES,
    PALETTE,
    SPLITS,
    GridState,
    GridTask,
    corrupt,
    make_task,
    render_states,
    verify,
)
from vlm_teacher.video import read_video, write_video

families = st.sampled_from(FAMILIES)
splits = st.sampled_from(SPLITS)
indices = st.integers(min_value=0, max_value=5000)

# the rule each corruption must break first, and a word the reason must contain
EXPECTED = {
    "through_wall": ("wall", "into the wall"),
    "jump": ("jump", "jumped"),
    "wrong_target": ("goal", "not on the"),
    "vanish": ("agent_count", "0 agents"),
    "frozen": ("goal", "not on the"),
    "box_teleport": ("box_unpushed", "without being pushed"),
}


def mp4_round_trip(video: np.ndarray, tmp_path) -> np.ndarray:
    path = write_video(tmp_path / "v.mp4", video)
    out = read_video(path)
    path.unlink()
    return out


def blur(video: np.ndarray, radius: float) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(f).filter(ImageFilter.GaussianBlur(radius))) for f in video])


# -- ground truth passes --------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(family=families, split=splits, index=indices)
def test_ground_truth_scores_one(family, split, index):
    t = make_task(family, split, index)
    v = verify(t, t.video())
    assert v.passed and v.score == 1.0, v.reason
    assert v.details["first_failure"] is None and v.details["legal_transitions"] == t.num_frames - 1
    assert v.details["agent_path"][0] == list(t.state.agent)


@settings(max_examples=12, deadline=None)
@given(family=families, split=splits, index=indices)
def test_ground_truth_survives_mp4_and_mild_blur(family, split, index, tmp_path_factory):
    t = make_task(family, split, index)
    video = mp4_round_trip(t.video(), tmp_path_factory.mktemp("mp4"))
    assert video.shape == t.video().shape
    assert verify(t, video).score == 1.0
    assert verify(t, blur(video, 1.0)).score == 1.0


def test_resolution_and_aspect_are_normalised():
    t = make_task("maze", "test", 5)
    video = t.video()
    assert verify(t, np.repeat(np.repeat(video, 3, axis=1), 3, axis=2)).passed  # 288 px, 3x upscaled
    # letterboxed onto a wider canvas: the centre crop recovers the grid
    wide = np.zeros((video.shape[0], 96, 160, 3), np.uint8)
    wide[:, :, 32:128] = video
    assert verify(t, wide).passed
    assert verify(t.to_task(), video).passed and verify(t.to_metadata(), video).passed


def test_extra_hold_frames_pass_and_a_cut_video_fails():
    t = make_task("push", "test", 2)
    video = t.video()
    assert verify(t, np.concatenate([video, video[-1:].repeat(4, axis=0)])).passed
    cut = verify(t, video[: len(t.solution)])
    assert not cut.passed and cut.details["first_failure"]["rule"] == "goal"
    single = verify(t, video[:1])
    assert not single.passed and single.score == 0.5


# -- corruptions fail -----------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(family=families, split=splits, index=indices, which=st.integers(0, 5), seed=st.integers(0, 2**16))
def test_each_corruption_fails_with_its_reason(family, split, index, which, seed):
    t = make_task(family, split, index)
    kind = CORRUPTIONS[family][which % len(CORRUPTIONS[family])]
    bad = corrupt(t, t.video(), kind, np.random.default_rng(seed))
    assert bad.shape == t.video().shape and bad.dtype == np.uint8
    v = verify(t, bad)
    rule, word = EXPECTED[kind]
    assert not v.passed and v.score < 1.0
    assert v.details["first_failure"]["rule"] == rule, (kind, v.reason)
    assert word in v.reason, (kind, v.reason)


@pytest.mark.parametrize("family", FAMILIES)
def test_corruptions_still_fail_after_mp4(family, tmp_path):
    t = make_task(family, "test", 11)
    rng = np.random.default_rng(0)
    for kind in CORRUPTIONS[family]:
        v = verify(t, mp4_round_trip(corrupt(t, t.video(), kind, rng), tmp_path))
        assert not v.passed and v.details["first_failure"]["rule"] == EXPECTED[kind][0], (kind, v.reason)


def test_corruption_scores_give_partial_credit():
    t = make_task("maze", "test", 3)
    frozen = verify(t, corrupt(t, t.video(), "frozen", 0))
    assert frozen.score == pytest.approx(0.5)  # right start, legal (no) moves, goal missed
    jump = verify(t, corrupt(t, t.video(), "jump", 0))
    assert jump.details["goal_reached"] and 0.5 < jump.score < 1.0


def test_corrupt_rejects_unknown_kinds():
    t = make_task("maze", "test", 0)
    with pytest.raises(UserError, match="box_teleport"):
        corrupt(t, t.video(), "box_teleport", 0)


# -- hand-made rule breaks --------------------------------------------------------

def _paint(video: np.ndarray, frame: int, cell: tuple[int, int], rgb, inner: bool = False) -> None:
    r, c = cell
    m = 5 if inner else 0
    video[frame, r * CELL + m:(r + 1) * CELL - m, c * CELL + m:(c + 1) * CELL - m] = rgb


def test_initial_frame_must_match():
    t = make_task("maze", "test", 4)
    video = t.video()
    video[0] = video[1]  # starts one step ahead
    v = verify(t, video)
    assert not v.passed and not v.details["initial_ok"]
    assert v.details["first_failure"] == {"frame": 0, "rule": "initial"} and "initial state" in v.reason


def test_walls_and_targets_must_not_change():
    t = make_task("maze", "test", 6)
    free = next((r, c) for r in range(t.size) for c in range(t.size)
                if t.state.background()[r][c] == "floor" and all(s.agent != (r, c) for s in t.states()))
    video = t.video()
    _paint(video, 3, free, PALETTE["wall"])
    v = verify(t, video)
    assert v.details["first_failure"] == {"frame": 3, "rule": "static_changed"}
    assert "changed from floor to wall" in v.reason
    video = t.video()
    tr, tc = t.state.target_pos(t.goal_colour)
    _paint(video, 2, (tr, tc), PALETTE["floor"])
    v = verify(t, video)
    assert not v.passed and f"changed from {t.goal_colour} to floor" in v.reason


def test_unknown_colours_and_extra_agents_fail():
    t = make_task("push", "test", 8)
    video = t.video()
    _paint(video, 2, t.state.agent, (0, 0, 0))
    v = verify(t, video)
    assert v.details["first_failure"]["rule"] == "unknown_colour" and "unknown colour" in v.reason
    video = t.video()
    spare = next((r, c) for r in range(t.size) for c in range(t.size)
                 if t.state.background()[r][c] == "floor" and all(s.agent != (r, c) and s.box != (r, c) for s in t.states()))
    _paint(video, 1, spare, PALETTE["agent"], inner=True)
    v = verify(t, video)
    assert v.details["first_failure"] == {"frame": 1, "rule": "agent_count"} and "2 agents" in v.reason


def test_box_must_not_be_pushed_into_a_wall():
    # agent (1,0) pushes the box (1,1) right, into the wall at (1,2)
    s0 = GridState(n=3, walls=frozenset({(1, 2)}), agent=(1, 0), targets=(("green", (0, 1)),), box=(1, 1))
    t = GridTask(id="push-hand-0", family="push", split="test", index=0, state=s0, goal_colour="green",
                 prompt="", num_frames=9, solution=("down", "right", "up"))
    wrong = [s0, GridState(n=3, walls=s0.walls, agent=(1, 1), targets=s0.targets, box=(1, 2))]
    v = verify(t, render_states(wrong))
    assert v.details["first_failure"] == {"frame": 1, "rule": "box_wall"}, v.reason
    # the real solution goes around and pushes the box up onto the pad
    assert verify(t, t.video()).passed


def test_bad_video_input_is_a_user_error():
    t = make_task("maze", "test", 0)
    with pytest.raises(UserError, match="uint8"):
        verify(t, t.video().astype(np.float32) / 255)
    with pytest.raises(UserError, match="T >= 1"):
        verify(t, np.zeros((0, 96, 96, 3), np.uint8))
    with pytest.raises(UserError, match="video not found"):
        verify(t, "/nonexistent/video.mp4")
