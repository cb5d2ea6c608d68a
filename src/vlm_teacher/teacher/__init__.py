from .base import Teacher

__all__ = ["Teacher", "load_teacher"]

#: config.json model_type -> the adapter module and class that load it
TEACHERS = {"qwen2_5_vl": ("qwen", "QwenVLTeacher"), "qwen3_vl": ("qwen", "QwenVLTeacher"),
            "qwen3_vl_moe": ("qwen", "QwenVLTeacher"),
            "internvl": ("internvl", "InternVLTeacher")}


def load_teacher(path, device="cpu", dtype=None):
    """Load a teacher from a transformers folder (Qwen2.5-VL, Qwen3-VL, InternVL -hf), by the
    model_type of its config.json; the Qwen adapter explains a folder that is none of them."""
    import importlib
    import json
    from pathlib import Path

    config = Path(path) / "config.json"
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    module, name = TEACHERS.get(model_type, TEACHERS["qwen2_5_vl"])
    adapter = getattr(importlib.import_module(f".{module}", __name__), name)
    return adapter.from_pretrained(path, device=device, dtype=dtype)
