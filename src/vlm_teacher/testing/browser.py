"""Open an HTML page in headless Chromium (Debian's ``chromium`` package) and read back
what rendered: tables, images, and whether each video plays.

Chromium is driven over its DevTools protocol on a pipe (``--remote-debugging-pipe``:
JSON messages separated by NUL bytes on file descriptors 3 and 4), so no driver or
Python package is needed: open the page, wait in real time until its videos play (or
a few seconds pass), and evaluate a small script that reports what is on the page.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
#: set to "required" (CI does) to make a missing browser an error instead of a skip
REQUIRE_ENV = "VLM_TEACHER_BROWSER_TESTS"

# evaluated in the page once it has loaded; resolves to what rendered
_CHECK = """(async (codecs, waitMs) => {
  const videos = [...document.querySelectorAll('video')];
  const t0 = performance.now();
  while (performance.now() - t0 < waitMs && !videos.every(v => v.error || v.currentTime > 0.2)) {
    await new Promise(r => setTimeout(r, 100));
  }
  const mime = src => 'video/mp4; codecs="' + codecs[src] + '"';
  return {
    videos: videos.map(v => {
      const src = v.getAttribute('src');
      const before = v.controls;
      v.dispatchEvent(new MouseEvent('mouseenter'));
      const hover = v.controls;
      v.dispatchEvent(new MouseEvent('mouseleave'));
      return {src: src, readyState: v.readyState, currentTime: v.currentTime, paused: v.paused,
              error: v.error ? v.error.code : null, width: v.videoWidth, height: v.videoHeight,
              controls: before, controlsOnHover: hover, controlsAfterHover: v.controls,
              canPlay: codecs[src] ? v.canPlayType(mime(src)) : null};
    }),
    images: [...document.images].map(i => ({src: i.getAttribute('src'), complete: i.complete,
                                            width: i.naturalWidth, height: i.naturalHeight})),
    tables: [...document.querySelectorAll('table')].map(t => ({rows: t.rows.length, text: t.innerText})),
    text: document.body.innerText,
  };
})"""


def find_browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def mp4_codec(path: str | os.PathLike) -> str:
    """The RFC 6381 codec string of an H.264 mp4 (``avc1.PPCCLL`` from its avcC record)."""
    import av

    with av.open(str(path)) as container:
        extra = bytes(container.streams.video[0].codec_context.extradata or b"")
    if len(extra) < 4 or extra[0] != 1:
        raise ValueError(f"{path} has no avcC record; is it H.264 in mp4?")
    return "avc1." + extra[1:4].hex()


class _Pipe:
    """The DevTools protocol over Chromium's debugging pipe."""

    def __init__(self, browser: str, profile: str) -> None:
        to_browser_r, self._w = os.pipe()
        self._r, from_browser_w = os.pipe()
        self.proc = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--window-size=1600,12000", f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
            pass_fds=(3, 4), preexec_fn=lambda: (os.dup2(to_browser_r, 3), os.dup2(from_browser_w, 4)))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._id = 0

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 60.0) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer to {method} within {timeout:.0f} s")
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                raise RuntimeError(f"the browser closed the pipe: {self.proc.stderr.read().decode()[-2000:]}")
            self._buf += chunk

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
            self.proc.wait(timeout=10)
        except (RuntimeError, TimeoutError, OSError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the launcher script and the browser it started
            self.proc.wait()
        for fd in (self._w, self._r):
            os.close(fd)
        self.proc.stderr.close()


def check_page(page: str | os.PathLike, *, wait_ms: int = 8000, timeout: float = 90.0) -> dict[str, Any]:
    """Load ``page`` in headless Chromium; returns ``{"videos", "images", "tables", "text"}``.

    Each video: readyState, currentTime once every video has played a little (or after
    ``wait_ms``), error code, the controls before / during / after a hover, and
    ``canPlay``: Chromium's canPlayType of the file's own codec string ("probably" for
    the profiles every browser decodes)."""
    import html
    import re

    browser = find_browser()
    if browser is None:
        raise FileNotFoundError("no chromium found: apt-get install chromium")
    page = Path(page).resolve()
    codecs = {}
    for src in set(re.findall(r"<video[^>]*\ssrc='([^']+)'", page.read_text(encoding="utf-8"))):
        try:
            codecs[html.unescape(src)] = mp4_codec(page.parent / html.unescape(src))
        except (OSError, ValueError):
            pass
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        pipe = _Pipe(browser, profile)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
            session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            pipe.call("Page.enable", session=session)
            pipe.call("Page.navigate", {"url": page.as_uri()}, session=session)
            expression = (f"new Promise(r => document.readyState === 'complete' ? r() : "
                          f"addEventListener('load', () => r())).then(() => {_CHECK}({json.dumps(codecs)}, {wait_ms}))")
            result = pipe.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                    "returnByValue": True}, session=session, timeout=timeout)
        finally:
            pipe.close()
    if "exceptionDetails" in result:
        raise RuntimeError(f"the check script failed: {result['exceptionDetails']}")
    return result["result"]["value"]


def require_browser() -> str:
    """The browser for a test: skips the test when none is installed, unless
    ``$VLM_TEACHER_BROWSER_TESTS`` is ``required`` (CI), where that is a failure."""
    import pytest

    browser = find_browser()
    if browser is None:
        why = "headless Chromium is not installed (apt-get install chromium; .ci/run installs it)"
        if os.environ.get(REQUIRE_ENV) == "required":
            pytest.fail(f"{why}, and {REQUIRE_ENV}=required")
        pytest.skip(why)
    return browser


def assert_report_renders(page: str | os.PathLike, videos: int) -> dict[str, Any]:
    """Load a report: every table has rows, every image decoded, ``videos`` videos that play
    muted without a click, show controls only on hover, in a codec every browser decodes."""
    require_browser()
    found = check_page(page)
    assert found["tables"] and all(t["rows"] > 1 for t in found["tables"]), found["tables"]
    broken = [i["src"] for i in found["images"] if not (i["complete"] and i["width"] > 0)]
    assert found["images"] and not broken, broken
    assert len(found["videos"]) == videos
    for v in found["videos"]:
        assert v["error"] is None and v["readyState"] >= 2 and v["width"] > 0, v
        assert v["currentTime"] > 0 and not v["paused"], v  # autoplay: moving without a click
        assert (v["controls"], v["controlsOnHover"], v["controlsAfterHover"]) == (False, True, False), v
        assert v["canPlay"] == "probably", v
    return found
