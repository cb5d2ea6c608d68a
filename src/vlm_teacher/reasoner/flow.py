"""TI2V flow matching, functional: the maths the Wan adapter and the reasoner recipe share.

Conventions (diffusers' Wan pipelines; docs/method.md, "Reasoner"):

- latents live in the *normalised* space ``(z - latents_mean) / latents_std``;
- flow matching: ``x_t = (1 - sigma) x0 + sigma * noise``, the transformer predicts
  ``v = noise - x0``, so ``x0_hat = x_t - sigma * v``; the Wan timestep is
  ``sigma * num_train_timesteps`` (1000 at pure noise);
- first-frame conditioning is Wan2.2 TI2V's ``expand_timesteps`` path: latent frame 0 is
  the encoded first frame, its tokens get timestep 0 (per-token timesteps of shape
  (B, tokens)), and whatever the model predicts there is discarded.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import UserError


def shifted_sigmas(steps: int, shift: float) -> list[float]:
    """The few-step sampler's noise levels, from 1 down to 0 (``steps + 1`` values).

    Uniform levels 1, 1 - 1/steps, ... (the 1000/750/500/250 timesteps of 4-step
    distilled Wan models) bent by the scheduler's flow shift exactly as
    FlowMatchEuler and UniPC(use_flow_sigmas) bend theirs:
    ``shift * s / (1 + (shift - 1) * s)``. The first level is exactly 1, so the
    first sampler step is the paper's one-call ``z0 = eps - v(eps, t=1)``."""
    if steps < 1:
        raise UserError(f"steps must be >= 1, got {steps}")
    base = [1.0 - i / steps for i in range(steps)]
    return [shift * s / (1.0 + (shift - 1.0) * s) for s in base] + [0.0]


def normalise(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Raw VAE latent -> the normalised space the transformer works in."""
    return (z - mean) / std


def denormalise(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalised latent -> what the VAE decoder takes."""
    return z * std + mean


def pin_first_frame(x: torch.Tensor, first: torch.Tensor | None) -> torch.Tensor:
    """Latent frame 0 := ``first`` (the encoded first frame, (B or 1, C, 1, h, w)); None: text-to-video."""
    if first is None:
        return x
    return torch.cat([first.to(x.dtype).expand(x.shape[0], -1, -1, -1, -1), x[:, :, 1:]], dim=2)


def token_counts(latent_shape: Sequence[int], patch_size: Sequence[int]) -> tuple[int, int]:
    """(tokens per latent frame, all tokens) of a (B, C, F, h, w) latent under the transformer's patch size."""
    p_t, p_h, p_w = (int(p) for p in patch_size)
    per_frame = (latent_shape[3] // p_h) * (latent_shape[4] // p_w)
    return per_frame, (latent_shape[2] // p_t) * per_frame


def timesteps(sigma: float | torch.Tensor, num_train_timesteps: int, tokens: tuple[int, int] | None, *,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """Wan timesteps of noise level(s) ``sigma`` (a float, or (B,)): shape (B,) for text-to-video
    (``tokens`` None), else (B, all tokens) with the first frame's tokens at 0 (TI2V)."""
    if isinstance(sigma, torch.Tensor):
        t = (sigma.float() * float(num_train_timesteps)).to(device)
    else:
        t = torch.full((1,), sigma * num_train_timesteps, device=device, dtype=torch.float32)
    if tokens is None:
        return t
    per_frame, total = tokens
    ts = t[:, None].expand(-1, total).clone()
    ts[:, :per_frame] = 0.0  # the first frame is clean
    return ts


def noisy(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - sigma) x0 + sigma * noise; ``sigma`` (B,)."""
    s = sigma.view(-1, *([1] * (x0.ndim - 1)))
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """What the transformer learns to predict: v = noise - x0."""
    return noise - x0


def x0_from_velocity(x_t: torch.Tensor, v: torch.Tensor, sigma: float) -> torch.Tensor:
    """The clean latent a velocity prediction implies: x0_hat = x_t - sigma * v."""
    return x_t - sigma * v


def euler_step(x0: torch.Tensor, x_t: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """Deterministic flow-matching Euler step x_t -> x_{sigma_next}.

    With v = (x_t - x0_hat) / sigma, x_next = x_t + (sigma_next - sigma) v
    = x0_hat + (sigma_next / sigma) (x_t - x0_hat); at sigma_next = 0 it is x0_hat."""
    return x0 + (sigma_next / sigma) * (x_t - x0)
