"""Writing one instance's results: the video, the queries, the per-step history,
the adapter. Every file is written atomically, so a killed run leaves either the
old file or the new one, never half of one."""

from __future__ import annotations

from pathlib import Path

from .files import write_json
from .optimize import TTOResult
from .video import to_uint8, write_video


def write_result(out_dir: str | Path, result: TTOResult, *, fps: int, reasoner=None) -> dict[str, Path]:
    """Write video.mp4 (+ its lossless copy video.exact.mkv), queries.json, history.json
    (+ adapter.safetensors when a reasoner with an attached LoRA is given). Returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "video": write_video(out / "video.mp4", to_uint8(result.video), fps=fps, exact=True),
        "queries": out / "queries.json",
        "history": out / "history.json",
    }
    write_json(paths["queries"], result.queries.to_dict())
    write_json(paths["history"], {**result.summary(), "history": result.history})
    if reasoner is not None:
        paths["adapter"] = reasoner.save_lora(out / "adapter.safetensors")
    return paths
