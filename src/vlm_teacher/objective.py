"""The paper's objective (docs/method.md, "Objective"), shared by the loop and every ranking by the teacher."""

from __future__ import annotations

import torch


def weighted_loss(logp_yes: torch.Tensor, lam: float) -> torch.Tensor:
    """L = lam * L_goal + (1 - lam)/M * sum_m L_proc_m, with L_q = -log P(Yes | q).
    ``logp_yes`` is ordered goal first (``Queries.all``)."""
    nll = -logp_yes
    if nll.numel() == 1:
        return nll[0]
    return lam * nll[0] + (1.0 - lam) * nll[1:].mean()
