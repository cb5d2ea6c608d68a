"""The grid suite's generation, splits, rendering, metadata and disk layout."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm_teacher.errors import UserError
from vlm_teacher.suites.grid import (
    CELL,
    FAMILIES,
    PALETTE,
    SPLITS,
    GridState,
    GridTask,
    grid_tasks,
    load_split,
    load_task,
    make_task,
    num_frames_for,
    render_state,
    save_tasks,
    solve,
    verify,
)
from vlm_teacher.suites.grid.solve import bfs
from vlm_teacher.task import Task
from vlm_teacher.video import read_video, write_image

families = st.sampled_from(FAMILIES)
splits = st.sampled_from(SPLITS)
# computed with the code at 024e88a (before issue 14): grid_tasks("test", n=25) and grid_tasks("ood", n=25)
TEST_25_DIGEST = "8bc3925b96b2ff59"
OOD8_25_DIGEST = "58134214be5d3f78"
indices = st.integers(min_value=0, max_value=5000)


def _shortest_length(task: GridTask) -> int | None:
    """Breadth-first search written here from the rules (not the suite's solver): the agent moves
    one cell up/down/left/right inside the grid and off walls; walking into the box pushes it one
    cell on, which needs that cell open. The goal: the agent (maze) or the box (push) on the
    target of the goal colour."""
    from collections import deque

    st0 = task.state
    goal = dict(st0.targets)[task.goal_colour]
    open_cell = lambda p: 0 <= p[0] < st0.n and 0 <= p[1] < st0.n and p not in st0.walls  # noqa: E731
    start = (st0.agent, st0.box)
    seen, queue = {start}, deque([(start, 0)])
    while queue:
        (agent, box), depth = queue.popleft()
        if (box if task.family == "push" else agent) == goal:
            return depth
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            a = (agent[0] + dr, agent[1] + dc)
            if not open_cell(a):
                continue
            b = box
            if box is not None and a == box:
                b = (box[0] + dr, box[1] + dc)
                if not open_cell(b):
                    continue
            if (a, b) not in seen:
                seen.add((a, b))
                queue.append(((a, b), depth + 1))
    return None


def _reached(task: GridTask) -> bool:
    final = task.states()[-1]
    goal = task.state.target_pos(task.goal_colour)
    return (final.box if task.family == "push" else final.agent) == goal


# -- generation -------------------------------------------------------------

def test_generation_is_deterministic_and_prefix_stable():
    a = grid_tasks("test", n=4)
    b = grid_tasks("test", n=4)
    assert a == b
    assert [t.id for t in a] == [f"{f}-test-{i:05d}" for f in FAMILIES for i in range(4)]
    longer = grid_tasks("test", n=7, families=("maze",))
    assert longer[:4] == a[:4]  # task i does not depend on how many were asked for
    other_seed = grid_tasks("test", n=4, seed=1)
    assert {t.id for t in other_seed}.isdisjoint({t.id for t in a})
    assert [t.state for t in other_seed] != [t.state for t in a]


def test_ids_are_unique_across_splits_and_default_counts():
    test, ood, ood8 = grid_tasks("test"), grid_tasks("ood"), grid_tasks("ood8")
    train = grid_tasks("train", n=60)
    assert len(test) == 100 and len(ood) == len(ood8) == 50  # 50 / 25 / 25 per family by default
    ids = [t.id for t in train + test + ood + ood8]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"(maze|push)-(train|test|ood|ood8)-\d{5}", i) for i in ids)
    # disjoint seeds: no test layout is also a training layout
    assert {t.state for t in test}.isdisjoint({t.state for t in train})


@settings(max_examples=40, deadline=None)
@given(family=families, split=splits, index=indices)
def test_every_task_respects_its_split(family, split, index):
    t = make_task(family, split, index)
    assert t.family == family and t.split == split and t.index == index
    assert _reached(t)
    # the stored solution is a shortest one (an independent search says how short)
    assert len(t.solution) == _shortest_length(t)
    assert t.num_frames == num_frames_for(len(t.solution)) and (t.num_frames - 1) % 4 == 0
    assert t.num_frames >= len(t.solution) + 1
    if split == "ood8":
        assert t.size == 8 and 9 <= len(t.solution) <= 16 and t.num_frames in (13, 17)
    elif split == "ood":
        assert t.size == 6 and 7 <= len(t.solution) <= 8 and t.num_frames == 9
        assert len(t.state.walls) >= (15 if family == "maze" else 8)  # in-domain: at most 14 / 7
    else:
        assert t.size == 6 and 2 <= len(t.solution) <= 8 and t.num_frames == 9
        assert t.goal_colour != "magenta"  # the colour kept back for the ood split
    if family == "maze":
        assert t.state.box is None and 2 <= len(t.state.targets) <= 3
        assert f"the {t.goal_colour} square" in t.prompt
    else:
        assert t.state.box is not None and len(t.state.targets) == 1
        assert f"the {t.goal_colour} pad" in t.prompt
    assert t.goal_colour in t.state.colours


def test_the_first_25_test_and_ood8_tasks_per_family_are_the_ones_earlier_figures_used():
    # fingerprints of grid_tasks("test", n=25) and of the former grid_tasks("ood", n=25) (now ood8)
    # before issue 14 grew the test split and replaced the ood split
    def digest(tasks, split_as=None):
        rows = [{**t.to_metadata(), **({"split": split_as, "id": t.id.replace("ood8", split_as)} if split_as else {})}
                for t in tasks]
        for r in rows:
            r.pop("ood_shift")
        return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]

    assert digest(grid_tasks("test", n=25)) == TEST_25_DIGEST
    assert digest(grid_tasks("ood8", n=25), split_as="ood") == OOD8_25_DIGEST


def test_ood_names_a_colour_never_named_in_domain():
    in_domain = {t.goal_colour for s in ("train", "test") for t in grid_tasks(s, n=100 if s == "train" else None)}
    ood = [t.goal_colour for t in grid_tasks("ood")]
    assert "magenta" not in in_domain and "magenta" in ood
    # magenta is still seen in-domain, as a distractor target
    assert any("magenta" in t.state.colours for t in grid_tasks("train", n=30, families=("maze",)))


def test_num_frames_rule():
    assert [num_frames_for(k) for k in (0, 2, 8, 9, 12, 13, 16, 17)] == [9, 9, 9, 13, 13, 17, 17, 21]


def test_unknown_split_or_family_is_a_user_error():
    with pytest.raises(UserError, match="split 'dev'"):
        grid_tasks("dev")
    with pytest.raises(UserError, match="'sokoban'"):
        grid_tasks("test", families=("maze", "sokoban"))


# -- the instruction matters -------------------------------------------------

def test_instruction_changes_the_solution():
    checked = 0
    for t in grid_tasks("test", families=("maze",)):
        for colour in t.state.colours:
            if colour == t.goal_colour:
                continue
            other = t.with_goal(colour)
            assert np.array_equal(other.first_frame(), t.first_frame())
            assert other.prompt != t.prompt and colour in other.prompt
            assert other.solution != t.solution
            assert other.states()[-1].agent != t.states()[-1].agent
            # the right video for one instruction is wrong for the other
            assert not verify(other, t.video()).passed
            assert verify(other, other.video()).passed
            checked += 1
    assert checked >= 25


# -- rendering ----------------------------------------------------------------

def test_render_shapes_and_colours():
    t = make_task("push", "ood8", 3)
    img = render_state(t.state)
    assert img.shape == (8 * CELL, 8 * CELL, 3) and img.dtype == np.uint8
    r, c = t.state.agent
    assert tuple(img[r * CELL + CELL // 2, c * CELL + CELL // 2]) == PALETTE["agent"]
    assert tuple(img[r * CELL + 1, c * CELL + 1]) == PALETTE["floor"]  # the ring shows the background
    br, bc = t.state.box
    assert tuple(img[br * CELL + CELL // 2, bc * CELL + CELL // 2]) == PALETTE["box"]
    video = t.video()
    assert video.shape == (t.num_frames, 128, 128, 3)
    # the box ends on the pad and the pad stays visible around it
    pr, pc = t.state.target_pos(t.goal_colour)
    last = video[-1]
    assert tuple(last[pr * CELL + CELL // 2, pc * CELL + CELL // 2]) == PALETTE["box"]
    assert tuple(last[pr * CELL + 1, pc * CELL + 1]) == PALETTE[t.goal_colour]
    # frames after the solution hold the final state
    assert all(np.array_equal(f, video[len(t.solution)]) for f in video[len(t.solution):])


def test_a_target_under_the_agent_stays_visible():
    t = make_task("maze", "test", 0)
    last = t.video()[-1]
    r, c = t.state.target_pos(t.goal_colour)
    assert tuple(last[r * CELL + 1, c * CELL + 1]) == PALETTE[t.goal_colour]
    assert tuple(last[r * CELL + 8, c * CELL + 8]) == PALETTE["agent"]


# -- metadata -----------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(family=families, split=splits, index=indices)
def test_metadata_round_trip(family, split, index):
    t = make_task(family, split, index)
    task = t.to_task()
    assert isinstance(task, Task) and task.id == t.id and task.prompt == t.prompt
    assert np.array_equal(task.first_frame, t.video()[0])
    meta = json.loads(json.dumps(task.metadata))  # JSON-serialisable as it is
    assert meta["num_frames"] == t.num_frames
    assert GridTask.from_metadata(meta) == t


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("solution"), "missing 'solution'"),
    (lambda m: m.update(goal_colour="cyan"), "not a target"),
    (lambda m: m.update(family="tetris"), "unknown grid family"),
    (lambda m: m["state"].update(agent=[99, 0]), "outside"),
    (lambda m: m["state"].update(agent="top-left"), "agent"),
    (lambda m: m.update(solution=m["solution"][:-1]), "does not reach"),
    (lambda m: m.update(solution=["up"] * 20), "illegal"),
    (lambda m: m.update(solution=["north"]), "list of moves"),
    (lambda m: m.update(num_frames=2), "num_frames"),
    (lambda m: m.update(index="seven"), "bad grid task metadata"),
    (lambda m: m["state"].update(box=None), "needs"),
])
def test_bad_metadata_is_a_user_error(edit, message):
    meta = make_task("push", "test", 1).to_metadata()
    edit(meta)
    with pytest.raises(UserError, match=message):
        GridTask.from_metadata(meta)


def test_state_rules():
    s = GridState(n=3, walls=frozenset({(0, 2)}), agent=(0, 0), targets=(("red", (2, 2)),), box=(0, 1))
    assert s.step("up") is None  # off the grid
    assert s.step("right") is None  # the box would go into the wall
    down = s.step("down")
    assert down is not None and down.agent == (1, 0) and down.box == (0, 1)
    pushed = down.step("right").step("up")  # walk under the box, push it up
    assert pushed is None  # up from (1,1) pushes the box off the grid
    # the box sits on the top edge between the corner and a wall: it can never move
    assert bfs(s, lambda x: x.box == (2, 1)) is None
    free = GridState(n=3, walls=frozenset(), agent=(0, 0), targets=(("red", (2, 1)),), box=(1, 1))
    assert bfs(free, lambda x: x.box == (2, 1)) == ["right", "down"]


# -- disk layout --------------------------------------------------------------

@pytest.fixture()
def saved(tmp_path):
    tasks = grid_tasks("test", n=2) + grid_tasks("ood", n=1, families=("push",))
    save_tasks(tmp_path, tasks)
    return tmp_path, tasks


def test_save_and_load_round_trip(saved):
    root, tasks = saved
    d = root / "test" / "maze-test-00000"
    assert sorted(p.name for p in d.iterdir()) == sorted(
        ["first_frame.png", "prompt.txt", "ground_truth.mp4", "final_frame.png", "metadata.json"])
    assert not [p for p in root.rglob(".*")]  # no temporary files left behind
    assert load_split(root, "test") == sorted([t for t in tasks if t.split == "test"], key=lambda t: t.id)
    assert load_split(root, "ood") == [tasks[-1]]
    t = load_task(d)
    video = read_video(d / "ground_truth.mp4")
    assert video.shape == (t.num_frames, 96, 96, 3)
    assert verify(json.loads((d / "metadata.json").read_text()), video).score == 1.0


def test_malformed_files_are_user_errors(saved):
    root, _ = saved
    d = root / "test" / "maze-test-00001"
    (d / "prompt.txt").write_text("Go somewhere.\n")
    with pytest.raises(UserError, match=r"prompt\.txt does not match"):
        load_task(d)

    d = root / "test" / "push-test-00000"
    (d / "metadata.json").write_text("{not json")
    with pytest.raises(UserError, match=r"metadata\.json is not valid JSON"):
        load_task(d)

    d = root / "test" / "push-test-00001"
    meta = json.loads((d / "metadata.json").read_text())
    meta["state"]["walls"] = meta["state"]["walls"][1:]
    (d / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"first_frame\.png does not show the initial state"):
        load_task(d)
    write_image(d / "first_frame.png", np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(UserError, match=r"first_frame\.png is 64x64 px"):
        load_task(d)

    d = root / "test" / "maze-test-00000"
    meta = json.loads((d / "metadata.json").read_text())
    del meta["goal_colour"]
    (d / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"metadata\.json: .*missing 'goal_colour'"):
        load_task(d)

    d = root / "ood" / "push-ood-00000"
    (d / "ground_truth.mp4").unlink()
    with pytest.raises(UserError, match=r"ground_truth\.mp4 is missing"):
        load_task(d)
    (d / "first_frame.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="missing|cannot read image"):
        load_task(d)

    with pytest.raises(UserError, match="no grid split folder"):
        load_split(root, "train")
    shutil.rmtree(root / "ood" / "push-ood-00000")
    with pytest.raises(UserError, match="holds no task folders"):
        load_split(root, "ood")
    with pytest.raises(UserError, match="not found"):
        load_task(root / "nowhere")
