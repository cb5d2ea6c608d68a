"""Running one benchmark instance: method -> video, history and queries on disk -> suite score -> store row."""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files import remove_temporaries, write_json
from ..identity import model_id
from ..methods import TTO, MethodContext, parse_methods
from ..reasoner import load_reasoner
from ..reasoner.base import uniform_frame_indices
from ..runtime import device_and_dtype, quiet_libraries
from ..teacher import load_teacher
from ..teacher.queries import fallback_queries
from ..video import to_float, write_video
from .plan import BenchConfig, Instance, model_ids_of

log = logging.getLogger("vlm_teacher")


class InstanceRunner:
    """Loads the suite and the models once; runs instances and returns store rows.

    ``run`` never raises for a failing instance: the error becomes a ``failed``
    row (with a one-line message and the traceback in ``extra``) and the
    benchmark goes on. Only KeyboardInterrupt / SystemExit propagate.
    """

    def __init__(self, cfg: BenchConfig, suite=None) -> None:
        self.cfg = cfg
        self._suite = suite  # the driver's, when it runs in the same process
        self._ctx = None
        self._methods: dict[str, Any] = {}
        self.model_ids: dict[str, str] = {}

    @property
    def suite(self):
        if self._suite is None:
            self._suite = self.cfg.load_suite()
        return self._suite

    def context(self):
        if self._ctx is None:
            if self.cfg.quiet_libraries:
                quiet_libraries()
            methods = parse_methods(self.cfg.methods)
            device, dtype = device_and_dtype(self.cfg.device, self.cfg.dtype)
            reasoner = load_reasoner(self.cfg.reasoner_path(), device=device, dtype=dtype)
            if self.cfg.preview_decoder is not None:
                reasoner.load_preview_decoder(self.cfg.preview_decoder)
            teacher = None
            if any(m.uses_teacher for m in methods) or (self.cfg.teacher_eval and self.suite.verifier() is not None):
                try:
                    teacher = load_teacher(self.cfg.teacher_path(), device=device, dtype=dtype)
                except UserError:
                    if any(m.uses_teacher for m in methods):
                        raise
            # names in the rows: folder name + content hash, so two versions of one folder stay apart
            self.model_ids = model_ids_of(self.cfg)
            if teacher is not None:
                self.model_ids["teacher"] = model_id(self.cfg.teacher_path())
            self._ctx = MethodContext(reasoner=reasoner, teacher=teacher, tto=self.cfg.tto_config(),
                                      num_frames=self.cfg.num_frames, verifier=self.suite.verifier())
            self._methods = {m.name: m for m in methods}
        return self._ctx

    def run(self, inst: Instance) -> dict[str, Any]:
        base = dict(inst.key._asdict())
        t0 = time.perf_counter()
        try:
            return self._run(inst)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - any failure of one instance is recorded, the run goes on
            message = " ".join(str(exc).split()) or exc.__class__.__name__
            if not isinstance(exc, UserError):
                message = f"{exc.__class__.__name__}: {message}"
            log.warning("%s %s seed %s failed: %s", inst.method, inst.task_id, inst.seed, message)
            return {**base, "status": "failed", "error": message[:2000], "seconds": time.perf_counter() - t0,
                    "extra": {"traceback": traceback.format_exc()[-4000:], "run_dir": inst.run_dir}}

    def _run(self, inst: Instance) -> dict[str, Any]:
        ctx = self.context()
        suite = self.suite
        method = self._methods[inst.method]
        task = suite.task(inst.task_id)
        run_dir = self.cfg.out / inst.run_dir
        remove_temporaries(run_dir)  # a killed earlier attempt's half-written files (the key is ours now)
        out = method.run(ctx, task, inst.seed)
        run_dir.mkdir(parents=True, exist_ok=True)
        # a lossless copy beside the browser mp4 where a pixel verifier may read the file again
        video_path = write_video(run_dir / "video.mp4", out.video, fps=ctx.fps, exact=suite.verifier() is not None)
        if out.queries is not None:
            write_json(run_dir / "queries.json", out.queries.to_dict())
        cost = out.cost.to_dict()
        write_json(run_dir / "history.json", {"method": inst.method, "task": inst.task_id, "seed": inst.seed,
                                       "steps": out.steps, "stop_reason": out.stop_reason, "cost": cost,
                                       "queries": out.queries.to_dict() if out.queries else None,
                                       "extra": out.extra, "history": out.history})
        scored = suite.score(task, out.video, ctx.fps, self.cfg.out, inst.run_name)
        extra: dict[str, Any] = {
            "group": suite.group(task),
            "reasoner": self.model_ids["reasoner"],
            "teacher": self.model_ids.get("teacher") if (method.uses_teacher and ctx.teacher is not None) else None,
            "eval_teacher": None,
            "preview_decoder": self.model_ids.get("preview_decoder") if isinstance(method, TTO) else None,
            "run_dir": inst.run_dir,
            "run_name": inst.run_name,
            "queries": out.queries.to_dict() if out.queries else None,
            "score_details": scored.details,
            "method_extra": {k: v for k, v in out.extra.items() if k not in ("config", "seconds")},
        }
        if ctx.teacher is not None and self.cfg.teacher_eval and scored.passed is not None:
            extra["teacher_eval"] = teacher_judgement(ctx.teacher, task, out.video, ctx.tto.num_frames_shown,
                                                      scored.passed)
            extra["eval_teacher"] = self.model_ids.get("teacher")
        rel = lambda p: str(Path(p).relative_to(self.cfg.out))  # noqa: E731
        return {
            **inst.key._asdict(), "status": "done", "score": scored.score,
            "passed": None if scored.passed is None else int(scored.passed),
            "steps": out.steps, "stop_reason": out.stop_reason, "seconds": cost["wall_s"],
            "reasoner_calls": cost["reasoner_calls"], "teacher_calls": cost["teacher_calls"],
            "peak_mem_mb": cost["peak_mem_mb"], "video_path": rel(video_path),
            "history_path": rel(run_dir / "history.json"), "extra": extra,
        }


def teacher_judgement(teacher, task, video, k: int, passed: bool) -> dict[str, Any]:
    """The teacher's P("Yes") to one fixed, task-phrased goal question about the final
    video, and whether it agrees with the verifier (p > 0.5 iff passed). It measures
    the teacher's accuracy for the report's scatter; it is not part of any method's cost."""
    question = fallback_queries(task.prompt).goal
    frames = to_float(video[uniform_frame_indices(len(video), k)])
    p = float(teacher.yes_prob_no_grad(frames, [question])[0])
    return {"question": question, "p_yes": p, "passed": bool(passed), "agree": (p > 0.5) == bool(passed)}
