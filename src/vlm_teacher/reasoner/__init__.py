from .base import X0_MODES, Conditioning, Reasoner, uniform_frame_indices

__all__ = ["X0_MODES", "Conditioning", "Reasoner", "uniform_frame_indices", "load_reasoner", "reasoner_class"]


def reasoner_class(path):
    """The adapter class for a diffusers model folder, from its model_index.json: ``_class_name``,
    and for Wan a second expert (``transformer_2``) or no ``expand_timesteps`` (Wan2.1). Folders
    that are none of these go to ``WanReasoner``, whose loader names what is wrong."""
    import json
    from pathlib import Path

    from .hunyuan15 import HUNYUAN_PIPELINE_CLASSES, HunyuanVideo15Reasoner
    from .wan import WanReasoner

    root = Path(path).expanduser()
    try:
        index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return WanReasoner
    if not isinstance(index, dict):
        return WanReasoner
    if index.get("_class_name") in HUNYUAN_PIPELINE_CLASSES:
        return HunyuanVideo15Reasoner
    second = index.get("transformer_2")
    if isinstance(second, list) and any(second):
        from .wan_a14b import WanA14BReasoner

        return WanA14BReasoner
    if index.get("_class_name") in ("WanPipeline", "WanImageToVideoPipeline") and not index.get("expand_timesteps"):
        from .wan21 import Wan21Reasoner  # Wan2.1: plain T2V, or concat I2V

        return Wan21Reasoner
    return WanReasoner


def load_reasoner(path, device="cpu", dtype=None):
    """Load a reasoner from a local diffusers folder: Wan2.2-TI2V-5B (``expand_timesteps``,
    ``WanReasoner``), Wan2.1 T2V and I2V (``Wan21Reasoner``), Wan2.2 A14B (``WanA14BReasoner``),
    HunyuanVideo-1.5 T2V and I2V (``HunyuanVideo15Reasoner``)."""
    return reasoner_class(path).from_pretrained(path, device=device, dtype=dtype)
