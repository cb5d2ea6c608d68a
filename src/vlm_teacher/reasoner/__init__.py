from .base import X0_MODES, Conditioning, Reasoner, uniform_frame_indices

__all__ = ["X0_MODES", "Conditioning", "Reasoner", "uniform_frame_indices", "load_reasoner"]


def load_reasoner(path, device="cpu", dtype=None):
    """Load a reasoner from a model folder (today: a diffusers Wan pipeline folder)."""
    from .wan import WanReasoner

    return WanReasoner.from_pretrained(path, device=device, dtype=dtype)
