from .base import X0_MODES, Conditioning, Reasoner, uniform_frame_indices

__all__ = ["X0_MODES", "Conditioning", "Reasoner", "uniform_frame_indices", "load_reasoner", "reasoner_class"]


def reasoner_class(path):
    """The adapter class for a diffusers model folder, from its model_index.json ``_class_name``
    (and, for Wan, a second expert or a concat-style transformer). Folders that are neither
    go to ``WanReasoner``, whose loader names what is wrong."""
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
    if index.get("_class_name") == "WanImageToVideoPipeline" and not index.get("expand_timesteps"):
        from .wan_i2v import WanI2VReasoner, transformer_in_channels

        try:
            z_dim = int(json.loads((root / "vae" / "config.json").read_text(encoding="utf-8"))["z_dim"])
        except (OSError, ValueError, KeyError, TypeError):
            return WanReasoner
        if transformer_in_channels(root) not in (None, z_dim):
            return WanI2VReasoner
    return WanReasoner


def load_reasoner(path, device="cpu", dtype=None):
    """Load a reasoner from a local diffusers folder: Wan2.2-TI2V / Wan2.1-T2V (``WanReasoner``),
    Wan2.1-I2V (``WanI2VReasoner``), Wan2.2 A14B (``WanA14BReasoner``), HunyuanVideo-1.5 T2V/I2V
    (``HunyuanVideo15Reasoner``)."""
    return reasoner_class(path).from_pretrained(path, device=device, dtype=dtype)
