"""A lightweight surrogate decoder for the teacher's preview (the paper's choice).

The paper decodes the predicted latent for the teacher with "LightX2V's tiny Wan2.2
decoder", not the full VAE. The reason is visible in the numbers of the full VAE at
89 frames x 1280x704 (``benchmarks/README.md``): one decode is about 1.5 PFLOP, and
its activations with gradients are about 44 GiB for ONE latent frame, plus 3 GiB of
causal caches per latent frame kept by per-frame checkpointing; that cannot fit on
an 80 GB GPU beside the two models.

``TinyWanDecoder`` is a small causal convolutional decoder in the style of TAEHV
(tiny autoencoders for video latents): per latent frame a 2-D conv stack; time
enters only through "memory blocks" that concatenate each frame's features with the
previous frame's, and through 1x1 convolutions that turn one frame into 2 (time
upsampling, twice: 4x). Spatially three 2x upsamplings and a final pixel shuffle of
``patch`` (16x for Wan2.2). It outputs 4T - 3 frames in [0, 1] from T latent frames,
like the Wan VAE.

This module is written from the published design, from memory: its parameter names
follow the TAEHV layout (``decoder.<index>...`` of one ``nn.Sequential``) so that a
TAEHV-style ``.safetensors`` checkpoint (for example LightX2V's tiny Wan2.2 decoder,
converted to safetensors if needed) can be loaded, with the channel widths read from
the file; that compatibility is NOT verified here (no such file could be fetched). A
file that does not fit fails with a clear error naming the mismatched tensors.
Random weights serve the benchmarks (timing and memory do not depend on them);
for real use, load trained weights: ``vlm-teacher train surrogate`` distils this decoder on
a grid reasoner's VAE (``recipes/grid_surrogate.py``; the embedded reasoner's ships in
``embedded/grid-wan-surrogate``).

Only the frames the teacher sees are computed at full resolution: after the last
memory block everything is per frame, so ``decode(z, frame_indices)`` runs the final
upsampling, time split and output convolutions for the requested frames only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .base import device_index

DEFAULT_WIDTHS = (256, 128, 64, 64)


def _conv(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class Clamp(nn.Module):
    """Soft clamp of the latent to about [-3, 3]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """Residual block over (this frame, previous frame) features: the only temporal mixing."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in * 2, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(),
                                  _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class TGrow(nn.Module):
    """One frame -> ``stride`` frames by a 1x1 convolution (time upsampling)."""

    def __init__(self, n_f: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f, n_f * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        return self.conv(x).reshape(nt * self.stride, c, h, w)


class TinyWanDecoder(nn.Module):
    """Latent (B, z, T, h, w) of the Wan VAE's space (denormalised, what the VAE decoder
    takes) -> frames (B, 4T - 3, 3, 16h, 16w) in [0, 1] for ``patch`` 2 (Wan2.2)."""

    def __init__(self, latent_channels: int = 48, patch: int = 2, widths: Sequence[int] = DEFAULT_WIDTHS,
                 time_upscale: Sequence[int] = (2, 2)) -> None:
        super().__init__()
        if len(widths) != 4 or len(time_upscale) != 2:
            raise ValueError("widths needs 4 entries and time_upscale 2")
        n = list(widths)
        self.latent_channels, self.patch = int(latent_channels), int(patch)
        self.widths = tuple(int(v) for v in widths)
        self.time_upscale = tuple(int(s) for s in time_upscale)
        self.frames_to_trim = self.time_upscale[0] * self.time_upscale[1] - 1
        self.decoder = nn.Sequential(
            Clamp(), _conv(latent_channels, n[0]), nn.ReLU(),
            MemBlock(n[0], n[0]), MemBlock(n[0], n[0]), MemBlock(n[0], n[0]),
            nn.Upsample(scale_factor=2), TGrow(n[0], 1), _conv(n[0], n[1], bias=False),
            MemBlock(n[1], n[1]), MemBlock(n[1], n[1]), MemBlock(n[1], n[1]),
            nn.Upsample(scale_factor=2), TGrow(n[1], self.time_upscale[0]), _conv(n[1], n[2], bias=False),
            MemBlock(n[2], n[2]), MemBlock(n[2], n[2]), MemBlock(n[2], n[2]),
            nn.Upsample(scale_factor=2), TGrow(n[2], self.time_upscale[1]), _conv(n[2], n[3], bias=False),
            nn.ReLU(), _conv(n[3], 3 * patch * patch),
        )
        #: index of the first layer after the last MemBlock: from there on all is per frame
        self._per_frame_from = 18

    @property
    def temporal_scale(self) -> int:
        return self.time_upscale[0] * self.time_upscale[1]

    def num_frames(self, latent_frames: int) -> int:
        return self.temporal_scale * latent_frames - self.frames_to_trim

    def _run(self, layers: Sequence[nn.Module], x: torch.Tensor, batch: int) -> torch.Tensor:
        """Run layers over frames stacked as (B*T, C, H, W); memory blocks see frame t-1 (zeros at t=0)."""
        for layer in layers:
            if isinstance(layer, MemBlock):
                nt, c, h, w = x.shape
                seq = x.reshape(batch, nt // batch, c, h, w)
                past = F.pad(seq, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1].reshape(nt, c, h, w)
                x = layer(x, past)
            else:
                x = layer(x)
        return x

    def forward(self, z: torch.Tensor, frame_indices: Sequence[int] | None = None) -> torch.Tensor:
        return self.decode(z, frame_indices)

    def decode(self, z: torch.Tensor, frame_indices: Sequence[int] | None = None, clamp: bool = True) -> torch.Tensor:
        """(B, z, T, h, w) -> (B, F, 3, H, W) in [0, 1]; with ``frame_indices`` only those
        frames (F = len(frame_indices)), computed without decoding the others at full size.
        ``clamp=False`` leaves the output unclamped (for training: a clamped pixel has no gradient)."""
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"expected a (B, {self.latent_channels}, T, h, w) latent, got {tuple(z.shape)}")
        b, c, t, h, w = z.shape
        total = self.num_frames(t)
        indices = list(range(total)) if frame_indices is None else [int(i) for i in frame_indices]
        if not indices or min(indices) < 0 or max(indices) >= total:
            raise ValueError(f"frame indices must be in [0, {total - 1}], got {indices}")
        x = z.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        layers = list(self.decoder)
        x = self._run(layers[:self._per_frame_from], x, b)          # (B * T * s0, n2, 4h, 4w)
        s1 = self.time_upscale[1]
        per_sample = x.shape[0] // b
        # output frame f (before trimming: f + trim) comes from level-2 frame (f + trim) // s1,
        # sub-frame (f + trim) % s1 of the last time split
        wanted = [i + self.frames_to_trim for i in indices]
        sources = sorted({f // s1 for f in wanted})
        pos = {src: k for k, src in enumerate(sources)}
        x = x.reshape(b, per_sample, *x.shape[1:]).index_select(1, device_index(sources, x.device))
        x = x.reshape(b * len(sources), *x.shape[2:])
        up, grow = layers[self._per_frame_from], layers[self._per_frame_from + 1]
        x = grow(up(x))                                              # (B * S * s1, n2, 8h, 8w)
        x = x.reshape(b, len(sources) * s1, *x.shape[1:])
        pick = [pos[f // s1] * s1 + f % s1 for f in wanted]
        x = x.index_select(1, device_index(pick, x.device)).reshape(b * len(pick), *x.shape[2:])
        for layer in layers[self._per_frame_from + 2:]:
            x = layer(x)
        x = F.pixel_shuffle(x, self.patch) if self.patch > 1 else x
        x = x.clamp(0.0, 1.0) if clamp else x
        return x.reshape(b, len(pick), 3, *x.shape[-2:])

    # ------------------------------------------------------------------ files
    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], source: str = "state dict") -> "TinyWanDecoder":
        """Build with the widths the tensors imply, then load them (strict)."""
        dec = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
        try:
            widths = [int(dec[f"{i}.weight"].shape[0]) for i in (1, 8, 14, 20)]
            latent = int(dec["1.weight"].shape[1])
            out = int(dec["22.weight"].shape[0])
            grows = (int(dec["13.conv.weight"].shape[0]) // widths[1], int(dec["19.conv.weight"].shape[0]) // widths[2])
        except KeyError as exc:
            raise UserError(f"{source} is not a TAEHV-style decoder: tensor decoder.{exc.args[0]} is missing") from None
        patch = int(round((out / 3) ** 0.5))
        if 3 * patch * patch != out:
            raise UserError(f"{source}: the decoder's output has {out} channels, not 3 x patch^2")
        model = cls(latent, patch, widths, grows)
        missing, unexpected = model.load_state_dict({f"decoder.{k}": v for k, v in dec.items()}, strict=False)
        if missing or unexpected:
            raise UserError(f"{source} does not fit the tiny decoder: missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}")
        return model

    @classmethod
    def from_file(cls, path: str | Path) -> "TinyWanDecoder":
        """Load a ``.safetensors`` file (decoder tensors under ``decoder.``; encoder tensors are ignored)."""
        from safetensors.torch import load_file

        path = Path(path).expanduser()
        if path.suffix != ".safetensors":
            raise UserError(f"surrogate decoder {path}: only .safetensors files are loaded (never pickle)")
        if not path.is_file():
            raise UserError(f"surrogate decoder file not found: {path}")
        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
        return cls.from_state_dict(state, str(path))

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        from ..files import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(tmp),
                      metadata={"format": "vlm_teacher_tiny_wan_decoder"})
        return path
