"""The RULER-Bench judge: an OpenAI-compatible chat-completions client (stdlib urllib).

RULER-Bench rates each video with a strong VLM (the paper: OpenAI ``o3``)
against the instance's checklist. The request follows BENCHMARK_FORMATS.md 2.3:
a system prompt, then one user message that interleaves text and base64 images
(input image, prompt, ground-truth image, implicit explanation, input video
frames, the video's frames at ~2 fps with the longest side <= 512, the
checklist questions). The reply must end in ``<answer>["Good", ...]</answer>``
with one label per question; anything else is retried, and after the last
retry the instance is returned as failed with the reason (never saved as a
judgement, so a later run retries it).

The API key is read from an environment variable whose *name* is configured
(default ``OPENAI_API_KEY``) at each request. It is never stored on the
object, written to a result, logged, or put in an error message (error texts
from the server are scrubbed of it).

The official system prompt is not available here; :data:`DEFAULT_SYSTEM_PROMPT`
is written from the protocol's description and can be replaced through
:class:`JudgeConfig`.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import math
import os
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import urlparse

import numpy as np

from ..errors import UserError
from ..files import write_json
from ..task import Task
from ..video import read_video
from ._local import safe_component
from .ruler import LABEL_VALUES, Judged, RulerSuite, entry_task, parse_checklist, ruler_submission_path

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = """You are an expert evaluator of generated videos. You are given the inputs of a \
video generation task (a prompt and, when present, an input image, a ground-truth image, an explanation of \
the intended outcome and an input video), the frames of the generated video to evaluate, and a numbered \
checklist of questions about that video.

Rate every question independently with exactly one label:
- "Good": the video fully meets the requirement.
- "Medium": the video partly meets it, or meets it with minor issues.
- "Poor": the video fails it or has major issues. If what the question asks about does not appear in the \
video at all, the answer is "Poor".

Reply in exactly this format and nothing else:
<think>A short summary of the task, a short summary of what happens in the video, then one short \
justification per question.</think><answer>["Good", "Medium", "Poor", ...]</answer>
The answer is a JSON list with one label per question, in the order of the questions."""

_FENCE = re.compile(r"```[A-Za-z0-9_+-]*")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_THINK = re.compile(r"<think>(.*?)</think>", re.S)


@dataclass
class JudgeConfig:
    """Where the judge is and how patient to be. ``sampling`` goes into the request
    body as is (empty = the server's default sampling, as the official protocol)."""

    base_url: str = "https://api.openai.com/v1"
    model: str = "o3"
    api_key_env: str | None = "OPENAI_API_KEY"  # None: send no key (a local server)
    timeout_s: float = 300.0
    retries: int = 3  # extra attempts after an invalid reply or a transient error
    retry_wait_s: float = 2.0  # doubled after each retry
    max_side: int = 512
    jpeg_quality: int = 95
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    sampling: dict[str, Any] = field(default_factory=dict)


@dataclass
class JudgeResult:
    """The outcome for one instance. ``ok`` means ``labels`` is a valid answer."""

    ok: bool
    labels: list[str] | None
    reasoning: str = ""
    error: str | None = None
    attempts: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class InvalidReply(ValueError):
    """The judge answered, but not with a usable label list."""


class _Transient(Exception):
    """A failure worth retrying (timeout, 429, 5xx, connection reset)."""


class _Fatal(Exception):
    """A failure of this instance that a retry will not fix (e.g. HTTP 400)."""


def parse_reply(text: str, n_questions: int) -> tuple[list[str], str]:
    """``(labels, reasoning)`` from a reply; InvalidReply says why it is unusable."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidReply("empty reply")
    t = _FENCE.sub("", text)
    think = _THINK.search(t)
    reasoning = think.group(1).strip() if think else ""
    rest = t[think.end():] if think else t
    m = _ANSWER.search(rest)
    if m is None:
        raise InvalidReply("no <answer>...</answer> in the reply")
    try:
        labels = json.loads(m.group(1).strip())
    except json.JSONDecodeError:
        raise InvalidReply("the <answer> is not a JSON list") from None
    if not isinstance(labels, list):
        raise InvalidReply(f"the <answer> is a JSON {type(labels).__name__}, not a list")
    if len(labels) != n_questions:
        raise InvalidReply(f"the <answer> has {len(labels)} labels for {n_questions} questions")
    bad = [lab for lab in labels if not isinstance(lab, str) or lab.strip() not in LABEL_VALUES]
    if bad:
        raise InvalidReply(f"the <answer> has labels other than Good/Medium/Poor: {bad[:3]!r}")
    return [lab.strip() for lab in labels], reasoning


def sample_frames(video: np.ndarray, fps: float) -> np.ndarray:
    """Every floor(fps/2)-th frame (about 2 frames per second), as the official judge."""
    step = max(1, int(math.floor(float(fps) / 2)))
    return np.asarray(video)[::step]


def encode_jpeg(frame: np.ndarray, max_side: int = 512, quality: int = 95) -> str:
    """(H, W, 3) uint8 -> base64 JPEG, longest side scaled down to <= ``max_side``."""
    from PIL import Image

    im = Image.fromarray(np.asarray(frame, dtype=np.uint8))
    w, h = im.size
    if max(w, h) > max_side:
        s = max_side / max(w, h)
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _image_part(b64: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b64}"}}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _file_b64(path: str | os.PathLike) -> str:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"judge input file {p} not found; is the dataset download complete?")
    return base64.b64encode(p.read_bytes()).decode("ascii")


def video_fps(path: str | os.PathLike) -> float:
    """The frame rate an mp4 declares (needed for the ~2 fps sampling)."""
    import imageio.v3 as iio

    try:
        fps = float(iio.immeta(path, plugin="pyav").get("fps") or 0)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the same user problem
        raise UserError(f"cannot read the frame rate of {path}: {exc.__class__.__name__}; is it a valid mp4?") from None
    if not fps > 0:
        raise UserError(f"{path} declares no frame rate; re-encode it with a fixed fps")
    return fps


class RulerJudge:
    """Rates videos of RULER instances with an OpenAI-compatible chat model."""

    def __init__(self, config: JudgeConfig | None = None) -> None:
        self.config = config or JudgeConfig()
        url = urlparse(self.config.base_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise UserError(f"judge base URL {self.config.base_url!r} must be http(s)://host[:port]/path, e.g. https://api.openai.com/v1")
        if self.config.retries < 0 or self.config.timeout_s <= 0:
            raise UserError("judge retries must be >= 0 and timeout > 0")
        self._api_key()  # fail early if the variable is unset

    def __repr__(self) -> str:
        return f"RulerJudge(model={self.config.model!r}, base_url={self.config.base_url!r})"

    # ----------------------------------------------------------- messages
    def build_messages(self, task: Task, video: np.ndarray, fps: float) -> list[dict[str, Any]]:
        """System prompt + the user message of BENCHMARK_FORMATS.md 2.3, parts in the official order."""
        md = task.metadata
        checklist = parse_checklist(md.get("checklist"), f"task {task.id} checklist")
        cfg = self.config
        parts: list[dict[str, Any]] = []
        if md.get("input_image_path"):
            # the file as is, tagged jpeg, not resized (as the official code does)
            parts += [_text_part("## Input Image:"), _image_part(_file_b64(md["input_image_path"]))]
        if task.prompt:
            parts += [_text_part("## Input Prompt:"), _text_part(task.prompt)]
        if md.get("gt_image_path"):
            parts += [_text_part("## Ground truth Image:"), _image_part(_file_b64(md["gt_image_path"]))]
        if md.get("implicit_explanation"):
            parts += [_text_part("## Implicit Explanation:"), _text_part(md["implicit_explanation"])]
        if md.get("input_video_path"):
            in_video = read_video(md["input_video_path"])
            frames = sample_frames(in_video, video_fps(md["input_video_path"]))
            parts.append(_text_part("## Input Video:"))
            parts += [_image_part(encode_jpeg(f, cfg.max_side, cfg.jpeg_quality)) for f in frames]
        frames = sample_frames(video, fps)
        if len(frames) == 0:
            raise UserError(f"the video of {task.id} has no frames")
        parts.append(_text_part("## Video to evaluate:"))
        parts += [_image_part(encode_jpeg(f, cfg.max_side, cfg.jpeg_quality)) for f in frames]
        parts.append(_text_part("## CheckList Questions:"))
        parts += [_text_part(f"# Question {k}: {q}") for k, (_, q) in enumerate(checklist, start=1)]
        return [{"role": "system", "content": cfg.system_prompt}, {"role": "user", "content": parts}]

    # -------------------------------------------------------------- judge
    def judge(self, task: Task, video: np.ndarray, fps: float) -> JudgeResult:
        """Rate ``video`` (uint8 T x H x W x 3 at ``fps``) against ``task``'s checklist.

        Never raises for a bad reply or a network failure (those give ``ok=False``
        with a one-line ``error``); raises UserError for setup problems that no
        retry can fix (missing key, key rejected, unknown model or URL).
        """
        n = len(parse_checklist(task.metadata.get("checklist"), f"task {task.id} checklist"))
        messages = self.build_messages(task, video, fps)
        body = {"model": self.config.model, "messages": messages, **self.config.sampling}
        t0 = time.monotonic()
        error = "no attempt made"
        wait = self.config.retry_wait_s
        attempts = 0
        for attempt in range(self.config.retries + 1):
            attempts = attempt + 1
            if attempt:
                time.sleep(wait)
                wait *= 2
            try:
                text = self._complete(body)
                labels, reasoning = parse_reply(text, n)
                return JudgeResult(True, labels, reasoning, None, attempts, time.monotonic() - t0)
            except InvalidReply as exc:
                error = f"invalid judge reply: {exc}"
            except _Transient as exc:
                error = str(exc)
            except _Fatal as exc:
                error = str(exc)
                break
            log.warning("judge attempt %d/%d for %s failed: %s", attempts, self.config.retries + 1, task.id, error)
        return JudgeResult(False, None, "", _one_line(f"{error} (after {attempts} attempt{'s' * (attempts > 1)})"),
                           attempts, time.monotonic() - t0)

    def judge_file(self, task: Task, video_path: str | os.PathLike) -> JudgeResult:
        """:meth:`judge` on an mp4, at the frame rate the file declares."""
        return self.judge(task, read_video(video_path), video_fps(video_path))

    # --------------------------------------------------------------- HTTP
    def _api_key(self) -> str | None:
        name = self.config.api_key_env
        if not name:
            return None
        key = os.environ.get(name, "")
        if not key.strip():
            raise UserError(f"environment variable {name} is not set; export your judge API key in it (or configure another variable name)")
        return key.strip()

    def _complete(self, body: dict[str, Any]) -> str:
        """One chat-completions call -> the reply text. Errors are scrubbed of the key."""
        key = self._api_key()
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")
        timeout = self.config.timeout_s
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = _scrub(_http_detail(exc), key)
            if exc.code in (401, 403):
                raise UserError(f"the judge at {self.config.base_url} rejected the API key from {self.config.api_key_env} "
                                f"(HTTP {exc.code}); check the key") from None
            if exc.code == 404:
                raise UserError(f"the judge at {self.config.base_url} answered HTTP 404 ({detail}); check the base URL "
                                f"and model name {self.config.model!r}") from None
            if exc.code == 429 or exc.code >= 500:
                raise _Transient(f"judge HTTP {exc.code}: {detail}") from None
            raise _Fatal(f"judge HTTP {exc.code}: {detail}") from None
        except (TimeoutError, socket.timeout):
            raise _Transient(f"judge request timed out after {timeout:g} s") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                raise _Transient(f"judge request timed out after {timeout:g} s") from None
            raise _Transient(_scrub(f"cannot reach the judge at {self.config.base_url}: {exc.reason}", key)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Transient(_scrub(f"connection to the judge failed: {exc.__class__.__name__}: {exc}", key)) from None
        try:
            data = json.loads(raw.decode("utf-8"))
            content = data["choices"][0]["message"]["content"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError):
            raise InvalidReply("the response is not a chat completion (no choices[0].message.content)") from None
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return _scrub(content, key) if isinstance(content, str) else ""


def _http_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read().decode("utf-8", "replace")
        msg = json.loads(body).get("error", {}).get("message") or body
    except Exception:  # noqa: BLE001 - best effort: the status line is enough
        msg = str(exc.reason)
    return _one_line(str(msg))[:300]


def _scrub(text: str, key: str | None) -> str:
    if key:
        text = text.replace(key, "***")
    return text


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# ------------------------------------------------------- whole submissions
def judgement_path(eval_root: str | os.PathLike, model_name: str, task: Task) -> Path:
    """``<eval>/<model>/<task_name>/<index>.json`` (the official judge's layout)."""
    md = task.metadata
    safe_component(model_name, "model name")
    return Path(eval_root) / model_name / safe_component(md["task_name"], "RULER task name") / f"{int(md['index'])}.json"


def save_judgement(eval_root: str | os.PathLike, model_name: str, task: Task, result: JudgeResult,
                   judge_model: str | None = None) -> Path:
    """The record + ``reasoning`` + ``eval_results``, written atomically (valid results only)."""
    if not result.ok or result.labels is None:
        raise ValueError("only a valid judgement is saved; a failed one is retried on the next run")
    record = dict(task.metadata.get("record") or {})
    record.update({"reasoning": result.reasoning, "eval_results": list(result.labels)})
    if judge_model:
        record["judge_model"] = judge_model
    path = judgement_path(eval_root, model_name, task)
    write_json(path, record)
    return path


def load_judgement(path: str | os.PathLike) -> Judged | None:
    """A saved judgement as :class:`Judged`; None if missing or unusable (so it is re-judged)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        return Judged.from_record(record)
    except (OSError, ValueError, UserError):
        return None


@dataclass
class JudgeRun:
    """What :func:`judge_submission` did."""

    judged: list[Judged] = field(default_factory=list)  # all valid judgements, old and new
    new: int = 0
    reused: int = 0
    missing_video: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # task id -> reason


def judge_submission(judge: RulerJudge, suite: RulerSuite, videos_root: str | os.PathLike, model_name: str,
                     eval_root: str | os.PathLike, ids: Iterable[str] | None = None,
                     progress: Callable[[str, JudgeResult | None], None] | None = None) -> JudgeRun:
    """Judge every submitted video that has no saved judgement yet (resumable).

    Missing videos are skipped, not scored 0 (as the official code); failed
    judgements are reported and left unsaved, so a re-run retries only them.
    """
    run = JudgeRun()
    wanted: Sequence[str] = list(ids) if ids is not None else suite.ids()
    for task_id in wanted:
        entry = suite.entry(task_id)
        task = entry_task(entry)
        video = ruler_submission_path(videos_root, model_name, task)
        if not video.is_file():
            run.missing_video.append(task_id)
            continue
        saved = judgement_path(eval_root, model_name, task)
        old = load_judgement(saved) if saved.is_file() else None
        if old is not None and len(old.labels) == len(entry.checklist):
            run.judged.append(old)
            run.reused += 1
            continue
        result = judge.judge_file(task, video)
        if result.ok:
            save_judgement(eval_root, model_name, task, result, judge.config.model)
            run.judged.append(Judged(entry.category, tuple(d for d, _ in entry.checklist), tuple(result.labels or ())))
            run.new += 1
        else:
            run.failed[task_id] = result.error or "failed"
        if progress is not None:
            progress(task_id, result)
    return run
