"""RULER-Bench: data.jsonl reader, submission layout, the scoring of 2.4, and the judge
client against a real HTTP server on loopback."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_teacher.errors import UserError
from vlm_teacher.store import ResultsStore
from vlm_teacher.suites.judge import (
    JudgeConfig,
    RulerJudge,
    judge_submission,
    parse_reply,
    sample_frames,
    save_judgement,
)
from vlm_teacher.suites.ruler import (
    GAME_TASKS,
    TASKS_BY_CATEGORY,
    Judged,
    instance_dimension_scores,
    load_ruler,
    ruler_submission_path,
    score_ruler,
    write_ruler_submission,
)

SECRET = "sk-test-THIS-MUST-NEVER-LEAK-123"
KEY_ENV = "MY_JUDGE_KEY"


def _png(path: Path, arr: np.ndarray) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")
    return path.read_bytes()


def _records() -> list[dict]:
    return [
        {"task_name": "chemistry", "index": 0, "category": "science", "prompt": "Drop sodium into water.",
         "implicit_explanation": "It fizzes violently.", "input_image_path": "", "gt_image_path": "",
         "checklist": [{"Rule Coherence": "Does the sodium react vigorously?"},
                       {"Visual Fidelity": "Is the video free of artifacts?"}]},
        {"task_name": "color", "index": 1, "category": "vision rule", "prompt": "Paint the cube red.",
         "input_image_path": "media/color_1.png",
         "checklist": json.dumps([{"Visual Consistency": "Is the cube the same cube?"},
                                  {"Rule Coherence": "Is the cube red at the end?"},
                                  {"Visual Fidelity": "Sharp frames?"}])},
        {"task_name": "chess", "index": 0, "category": "game", "prompt": "Play e4.",
         "checklist": [{"Rule Coherence": "Legal move?"}]},
        {"task_name": "food", "index": 2, "category": "humanity", "prompt": "Serve sushi.",
         "gt_image_path": "media/food_gt.png", "implicit_explanation": "",
         "checklist": [{"Instruction Following": "Is sushi served?"}]},
    ]


def _write_dataset(root: Path, records: list[dict] | None = None) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    images = {"media/color_1.png": np.full((20, 30, 3), 90, np.uint8), "media/food_gt.png": np.full((8, 8, 3), 7, np.uint8)}
    images["media/color_1.png"][5:10, 5:10] = (255, 0, 0)
    for rel, arr in images.items():
        _png(root / rel, arr)
    lines = [json.dumps(r) for r in (records if records is not None else _records())]
    (root / "data.jsonl").write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n")
    return images


# ------------------------------------------------------------------ reader
def test_load_both_checklist_encodings_and_game_filter(tmp_path):
    root = tmp_path / "ruler"
    images = _write_dataset(root)
    suite = load_ruler(root)
    assert suite.ids() == ["chemistry/0", "color/1", "food/2"]  # chess (game) dropped by default
    tasks = {t.id: t for t in suite}
    chem, color = tasks["chemistry/0"], tasks["color/1"]
    assert chem.first_frame is None and chem.metadata["mode"] == "t2v"
    assert chem.metadata["checklist"] == [["Rule Coherence", "Does the sodium react vigorously?"],
                                          ["Visual Fidelity", "Is the video free of artifacts?"]]
    assert color.metadata["checklist"][1] == ["Rule Coherence", "Is the cube red at the end?"]  # from the JSON string
    assert color.metadata["mode"] == "i2v"
    np.testing.assert_array_equal(color.first_frame, images["media/color_1.png"])
    assert color.metadata["category"] == "vision rule" and color.metadata["index"] == 1
    assert tasks["food/2"].metadata["gt_image_path"] == str((root / "media/food_gt.png").resolve())
    assert sum(len(t) for c, t in TASKS_BY_CATEGORY.items() if c != "game") == 30 and len(GAME_TASKS) == 10
    full = load_ruler(root, drop_game=False)
    assert "chess/0" in full.ids() and len(full) == 4
    assert load_ruler(root, categories=["science"]).ids() == ["chemistry/0"]
    assert load_ruler(root, tasks=["food"]).ids() == ["food/2"]
    with pytest.raises(UserError, match="not found"):
        load_ruler(root, tasks=["chess"])  # dropped with the game tasks


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r.update(input_image_path="../secret.png"), r"line 2, field input_image_path: .*contains '\.\.'"),
    (lambda r: r.update(gt_image_path="/etc/passwd"), r"line 2, field gt_image_path: .*absolute"),
    (lambda r: r.update(category="sports"), r"line 2, field category"),
    (lambda r: r.update(index="one"), r"line 2, field index"),
    (lambda r: r.update(task_name="a/b"), r"line 2, field task_name"),
    (lambda r: r.update(checklist=[{"Fun": "Is it fun?"}]), r"line 2, field checklist, item 0: dimension 'Fun'"),
    (lambda r: r.update(checklist=[{"Visual Fidelity": "a", "Rule Coherence": "b"}]), r"exactly one key"),
    (lambda r: r.update(checklist="not json"), r"line 2, field checklist"),
    (lambda r: r.update(checklist=[]), r"line 2, field checklist"),
])
def test_bad_records_name_line_and_field(tmp_path, mutate, match):
    records = _records()
    mutate(records[1])
    _write_dataset(tmp_path, records)
    with pytest.raises(UserError, match=match):
        load_ruler(tmp_path)


def test_more_bad_files(tmp_path):
    with pytest.raises(UserError, match="no data.jsonl"):
        load_ruler(tmp_path)
    (tmp_path / "data.jsonl").write_text('{"task_name": "x"\n')
    with pytest.raises(UserError, match="line 1: not valid JSON"):
        load_ruler(tmp_path)
    records = _records()
    _write_dataset(tmp_path, records + [records[0]])
    with pytest.raises(UserError, match="line 6: duplicate instance chemistry/0"):
        load_ruler(tmp_path)


def test_symlinked_media_outside_root_rejected(tmp_path):
    root = tmp_path / "ruler"
    _write_dataset(root)
    _png(tmp_path / "outside.png", np.zeros((4, 4, 3), np.uint8))
    (root / "media" / "link.png").symlink_to(tmp_path / "outside.png")
    records = _records()
    records[1]["input_image_path"] = "media/link.png"
    _write_dataset(root, records)
    with pytest.raises(UserError, match="line 2, field input_image_path: .*outside the dataset root"):
        load_ruler(root)


def test_submission_layout(tmp_path):
    root = tmp_path / "ruler"
    _write_dataset(root)
    suite = load_ruler(root)
    task = suite.task("color/1")
    video = np.full((3, 16, 16, 3), 128, np.uint8)
    path = write_ruler_submission(tmp_path / "videos", "wan-tto", task, video, fps=8)
    assert path == tmp_path / "videos" / "wan-tto" / "color" / "1.mp4" and path.is_file()
    with pytest.raises(UserError, match="model name"):
        ruler_submission_path(tmp_path, "a/b", task)


# ----------------------------------------------------------------- scoring
def test_scores_match_hand_computation():
    IF, VC, VF, RC = "Instruction Following", "Visual Consistency", "Visual Fidelity", "Rule Coherence"
    a = Judged("science", (IF, IF, VC, VF, RC), ("Good", "Poor", "Medium", "Good", "Good"))
    b = Judged("science", (IF, RC), ("Medium", "Poor"))
    c = Judged("vision rule", (IF, VC, VF, RC), ("Poor", "Good", "Medium", "Good"))
    assert instance_dimension_scores(a.dimensions, a.labels) == {IF: 1.0, VC: 1.0, VF: 2.0, RC: 2.0}
    assert instance_dimension_scores(b.dimensions, b.labels) == {IF: 1.0, VC: 0.0, VF: 0.0, RC: 0.0}
    s = score_ruler([a, b, c])
    assert s.table["science"] == pytest.approx({"IF": 50.0, "VC": 25.0, "VF": 50.0, "RC": 50.0, "Avg": 43.75})
    assert s.table["vision rule"] == pytest.approx({"VC": 100.0, "VF": 50.0, "RC": 100.0, "Avg": 250 / 3})
    assert s.overall == pytest.approx({"IF": 50.0, "VC": 62.5, "VF": 50.0, "RC": 75.0, "Avg": 59.375})
    assert s.counts == {"science": 2, "vision rule": 1}
    assert ("vision rule", "Avg", 83.33) in s.rows() and ("Overall", "Avg", 59.38) in s.rows()
    assert not any(cat == "vision rule" and dim == "IF" for cat, dim, _ in s.rows())
    md = s.to_markdown()
    assert "| vision rule | 1 | - | 100.00 | 50.00 | 100.00 | 83.33 |" in md
    assert "| science | 2 | 50.00 | 25.00 | 50.00 | 50.00 | 43.75 |" in md
    assert "| **Overall** | 3 | 50.00 | 62.50 | 50.00 | 75.00 | 59.38 |" in md
    with pytest.raises(UserError):
        score_ruler([])
    with pytest.raises(ValueError):
        Judged("science", (IF,), ("Great",))


def test_parse_reply():
    labels, why = parse_reply('```xml\n<think>fine</think>\n<answer>\n["Good", "Poor"]\n</answer>\n```', 2)
    assert labels == ["Good", "Poor"] and why == "fine"
    labels, _ = parse_reply('<think>the <answer> tag comes later</think><answer>["Medium"]</answer>', 1)
    assert labels == ["Medium"]
    for bad, reason in [("no tags", "no <answer>"), ("<answer>[Good]</answer>", "not a JSON list"),
                        ('<answer>["Good"]</answer>', "1 labels for 2"), ('<answer>["Good", "Great"]</answer>', "other than"),
                        ('<answer>{"a": 1}</answer>', "not a list")]:
        with pytest.raises(ValueError, match=reason):
            parse_reply(bad, 2)


def test_frame_sampling_is_about_two_fps():
    video = np.zeros((17, 4, 4, 3), np.uint8)
    video[:, 0, 0, 0] = np.arange(17)
    assert sample_frames(video, 16)[:, 0, 0, 0].tolist() == [0, 8, 16]
    assert sample_frames(video, 5)[:, 0, 0, 0].tolist() == list(range(0, 17, 2))
    assert len(sample_frames(video, 1)) == 17


# ------------------------------------------------------------------- judge
def _good(n: int, fenced: bool = True) -> str:
    body = f"<think>task; video; reasons</think><answer>{json.dumps(['Good'] * (n - 1) + ['Medium'])}</answer>"
    return f"```\n{body}\n```" if fenced else body


@pytest.fixture
def server():
    """A chat-completions server on loopback that follows a script of (status, reply, delay)."""
    state: dict = {"script": [], "requests": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["requests"].append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            status, reply, delay = state["script"].pop(0) if len(state["script"]) > 1 else state["script"][0]
            time.sleep(delay)
            if status == 200:
                payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]}
            else:  # servers like to echo the key back
                payload = {"error": {"message": f"Incorrect API key provided: {self.headers.get('Authorization')}"}}
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                pass

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    yield state
    srv.shutdown()
    srv.server_close()


def _judge(state, monkeypatch, **kw) -> RulerJudge:
    monkeypatch.setenv(KEY_ENV, SECRET)
    for var in ("NO_PROXY", "no_proxy"):  # loopback must not go through a proxy the environment names
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    cfg = dict(base_url=state["url"], model="judge-model", api_key_env=KEY_ENV, timeout_s=5, retries=2, retry_wait_s=0)
    cfg.update(kw)
    return RulerJudge(JudgeConfig(**cfg))


def _video(t: int = 9, h: int = 300, w: int = 600) -> np.ndarray:
    v = np.zeros((t, h, w, 3), np.uint8)
    for i in range(t):
        v[i, :, : (i + 1) * w // t] = 255
    return v


def _decode_jpeg(url: str) -> Image.Image:
    assert url.startswith("data:image/jpeg;base64,")
    im = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    im.load()
    return im


def test_judge_good_reply_and_message_layout(tmp_path, server, monkeypatch):
    root = tmp_path / "ruler"
    _write_dataset(root)
    task = load_ruler(root).task("color/1")  # I2V, 3 questions
    server["script"] = [(200, _good(3), 0)]
    res = _judge(server, monkeypatch).judge(task, _video(), fps=8)
    assert res.ok and res.labels == ["Good", "Good", "Medium"] and res.attempts == 1
    assert res.reasoning == "task; video; reasons" and res.error is None
    (req,) = server["requests"]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == f"Bearer {SECRET}"
    body = req["body"]
    assert body["model"] == "judge-model" and [m["role"] for m in body["messages"]] == ["system", "user"]
    parts = body["messages"][1]["content"]
    kinds = [p["text"] if p["type"] == "text" else "IMG" for p in parts]
    assert kinds == ["## Input Image:", "IMG", "## Input Prompt:", "Paint the cube red.",
                     "## Video to evaluate:", "IMG", "IMG", "IMG",  # 9 frames at 8 fps: every 4th
                     "## CheckList Questions:", "# Question 1: Is the cube the same cube?",
                     "# Question 2: Is the cube red at the end?", "# Question 3: Sharp frames?"]
    # the input image is the file itself, tagged jpeg, not resized
    url = parts[1]["image_url"]["url"]
    assert url == "data:image/jpeg;base64," + base64.b64encode((root / "media/color_1.png").read_bytes()).decode()
    frames = [_decode_jpeg(p["image_url"]["url"]) for p in parts[5:8]]
    assert all(f.format == "JPEG" and f.size == (512, 256) for f in frames)  # longest side scaled to 512
    # frame 0, 4, 8: the white bar grows (1/9, 5/9, 9/9 of the width)
    whites = [float((np.asarray(f.convert("L"))[128] > 128).mean()) for f in frames]
    assert whites == pytest.approx([1 / 9, 5 / 9, 1.0], abs=0.02)


def test_judge_message_with_ground_truth_and_explanation(tmp_path, server, monkeypatch):
    root = tmp_path / "ruler"
    _write_dataset(root)
    suite = load_ruler(root)
    server["script"] = [(200, _good(1), 0)]
    judge = _judge(server, monkeypatch)
    judge.judge(suite.task("food/2"), _video(4, 20, 20), fps=2)
    kinds = [p["text"] if p["type"] == "text" else "IMG" for p in server["requests"][-1]["body"]["messages"][1]["content"]]
    assert kinds == ["## Input Prompt:", "Serve sushi.", "## Ground truth Image:", "IMG",
                     "## Video to evaluate:", "IMG", "IMG", "IMG", "IMG", "## CheckList Questions:",
                     "# Question 1: Is sushi served?"]
    judge.judge(suite.task("chemistry/0"), _video(4, 20, 20), fps=2)
    kinds = [p["text"] if p["type"] == "text" else "IMG" for p in server["requests"][-1]["body"]["messages"][1]["content"]]
    assert kinds[:4] == ["## Input Prompt:", "Drop sodium into water.", "## Implicit Explanation:", "It fizzes violently."]


def test_judge_retries_garbage_then_succeeds(tmp_path, server, monkeypatch):
    root = tmp_path / "ruler"
    _write_dataset(root)
    task = load_ruler(root).task("chemistry/0")
    server["script"] = [(200, "I think it is fine.", 0), (200, '<answer>["Good"]</answer>', 0), (200, _good(2, False), 0)]
    res = _judge(server, monkeypatch, retries=2).judge(task, _video(3, 16, 16), fps=8)
    assert res.ok and res.attempts == 3 and res.labels == ["Good", "Medium"]
    assert len(server["requests"]) == 3


def test_judge_gives_up_with_reason(tmp_path, server, monkeypatch):
    root = tmp_path / "ruler"
    _write_dataset(root)
    task = load_ruler(root).task("chemistry/0")
    server["script"] = [(200, "<answer>nope</answer>", 0)]
    res = _judge(server, monkeypatch, retries=1).judge(task, _video(3, 16, 16), fps=8)
    assert not res.ok and res.labels is None and res.attempts == 2
    assert res.error == "invalid judge reply: the <answer> is not a JSON list (after 2 attempts)"
    with pytest.raises(ValueError):
        save_judgement(tmp_path / "eval", "m", task, res)


def test_judge_timeout_is_one_line_failure(tmp_path, server, monkeypatch):
    root = tmp_path / "ruler"
    _write_dataset(root)
    task = load_ruler(root).task("chemistry/0")
    server["script"] = [(200, _good(2), 1.5)]
    res = _judge(server, monkeypatch, timeout_s=0.3, retries=1).judge(task, _video(3, 16, 16), fps=8)
    assert len(server["requests"]) == 2  # both attempts reached the server and were given up on
    assert not res.ok and res.error == "judge request timed out after 0.3 s (after 2 attempts)"
    assert "\n" not in res.error


def test_api_key_never_leaks(tmp_path, server, monkeypatch):
    root = tmp_path / "ruler"
    _write_dataset(root)
    task = load_ruler(root).task("chemistry/0")
    # a rejected key is a setup error, and the message does not carry the key
    server["script"] = [(401, "", 0)]
    judge = _judge(server, monkeypatch)
    with pytest.raises(UserError) as info:
        judge.judge(task, _video(3, 16, 16), fps=8)
    assert KEY_ENV in str(info.value) and SECRET not in str(info.value)
    # a 400 whose body echoes the key: recorded failed, the key scrubbed
    server["script"] = [(400, "", 0)]
    res = judge.judge(task, _video(3, 16, 16), fps=8)
    assert not res.ok and "HTTP 400" in res.error and "***" in res.error and SECRET not in res.error
    # a reply that quotes the key back is scrubbed too, and nothing stored holds it
    server["script"] = [(200, f"<think>your key is {SECRET}</think><answer>[\"Good\", \"Poor\"]</answer>", 0)]
    good = judge.judge(task, _video(3, 16, 16), fps=8)
    assert good.ok and SECRET not in json.dumps(good.to_dict()) and SECRET not in repr(judge)
    saved = save_judgement(tmp_path / "eval", "m", task, good, judge.config.model)
    store_path = tmp_path / "r.sqlite"
    with ResultsStore(store_path) as store:
        for key_id, r in (("ok", good), ("bad", res)):
            store.put({"suite": "ruler", "task_id": key_id, "method": "m", "seed": 0,
                       "status": "done" if r.ok else "failed", "error": r.error, "extra": r.to_dict()})
    for f in [saved, store_path, *tmp_path.glob("r.sqlite*")]:
        assert SECRET.encode() not in f.read_bytes()
    # a missing key variable is named, not guessed
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(UserError, match=f"environment variable {KEY_ENV} is not set"):
        RulerJudge(JudgeConfig(base_url=server["url"], api_key_env=KEY_ENV))
    with pytest.raises(UserError, match="base URL"):
        RulerJudge(JudgeConfig(base_url="ftp://x", api_key_env=None))


def test_judge_submission_resumes_and_scores(tmp_path, server, monkeypatch):
    root = tmp_path / "ruler"
    _write_dataset(root)
    suite = load_ruler(root)
    videos, evals = tmp_path / "videos", tmp_path / "eval"
    for tid in ("chemistry/0", "color/1"):  # food/2 has no video: skipped, not 0
        write_ruler_submission(videos, "m", suite.task(tid), _video(3, 16, 16), fps=8)
    judge = _judge(server, monkeypatch, retries=0)
    server["script"] = [(200, _good(2), 0), (200, "garbage", 0)]  # chemistry ok, color fails
    run = judge_submission(judge, suite, videos, "m", evals)
    assert (run.new, run.reused, run.missing_video) == (1, 0, ["food/2"])
    assert list(run.failed) == ["color/1"] and "invalid judge reply" in run.failed["color/1"]
    saved = json.loads((evals / "m" / "chemistry" / "0.json").read_text())
    assert saved["eval_results"] == ["Good", "Medium"] and saved["reasoning"] == "task; video; reasons"
    assert saved["task_name"] == "chemistry" and saved["judge_model"] == "judge-model"
    assert not (evals / "m" / "color" / "1.json").exists()
    n_before = len(server["requests"])
    server["script"] = [(200, "<think>x</think><answer>[\"Good\", \"Good\", \"Poor\"]</answer>", 0)]
    run = judge_submission(judge, suite, videos, "m", evals)
    assert (run.new, run.reused, run.failed) == (1, 1, {})
    assert len(server["requests"]) == n_before + 1  # only the missing judgement was asked again
    scores = score_ruler(run.judged)
    # chemistry: RC Good, VF Medium -> RC 100, VF 50, IF/VC 0; Avg (0+0+1+2)/4*50
    assert scores.table["science"] == pytest.approx({"IF": 0, "VC": 0, "VF": 50, "RC": 100, "Avg": 37.5})
    # color (vision rule): VC Good, RC Good, VF Poor
    assert scores.table["vision rule"] == pytest.approx({"VC": 100, "VF": 0, "RC": 100, "Avg": 200 / 3})
