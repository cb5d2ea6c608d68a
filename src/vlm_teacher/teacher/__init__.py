from .base import Teacher

__all__ = ["Teacher", "load_teacher"]


def load_teacher(path, device="cpu", dtype=None):
    """Load a teacher from a transformers Qwen2.5-VL / Qwen3-VL folder."""
    from .qwen import QwenVLTeacher

    return QwenVLTeacher.from_pretrained(path, device=device, dtype=dtype)
