"""The process around the models: device and dtype, library logging, memory, the machine.

One home for what the CLI, the benchmark, the recipes and the benchmark scripts all need:

* ``device_and_dtype("auto", "auto")`` - CUDA and bfloat16 where a GPU is, else CPU and float32;
* ``quiet_libraries()`` - no loading bars or info logs from diffusers / transformers;
* ``MemoryMeter`` - wall time and peak memory of one call, the same definition everywhere:
  the CUDA peak allocation during the call, or on CPU the peak resident memory of the process
  during the call (Linux resets it through /proc/self/clear_refs; elsewhere it is the process'
  high-water mark and ``scope`` says ``"process"``);
* ``machine_info()`` - what figures were measured on.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from typing import Any

import torch

from .errors import UserError


def device_and_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """``auto`` device: cuda when available, else cpu; ``auto`` dtype: bfloat16 on CUDA, float32 elsewhere."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown --device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: this torch has no usable CUDA GPU "
                            f"(torch {torch.__version__}, built {'with' if torch.version.cuda else 'without'} "
                            "CUDA); use --device cpu, or install a CUDA build of torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA device(s) "
                            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    torch_dtype = getattr(torch, str(dtype), None) if not str(dtype).startswith("_") else None
    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
        raise UserError(f"unknown --dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return dev, torch_dtype


def quiet_libraries() -> None:
    """diffusers/transformers print loading bars and info logs; ours are the useful ones."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for lib in (dlog, tlog):
        lib.disable_progress_bar()
        lib.set_verbosity_error()


# ------------------------------------------------------------------ memory
def reset_rss_peak() -> bool:
    """Reset the process' peak RSS (Linux: write 5 to /proc/self/clear_refs); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rss_peak_mb() -> float:
    """Peak resident memory since the last ``reset_rss_peak`` (Linux VmHWM), else the process' lifetime peak."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


class MemoryMeter:
    """``with MemoryMeter(device) as m: ...`` then ``m.wall_s``, ``m.peak_mb``, ``m.scope``
    (``"call"``; ``"enclosing call"`` inside another meter, whose peak it then reads; or
    ``"process"`` where the CPU peak could not be reset)."""

    #: meters open right now; only the outermost resets the peak (teach() runs inside a method's
    #: meter, and its reset would drop what the method measured before it, e.g. the oracle's preview)
    _open = 0

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.scope = "call"

    def __enter__(self) -> "MemoryMeter":
        if MemoryMeter._open == 0:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
            elif not reset_rss_peak():
                self.scope = "process"
        else:
            self.scope = "enclosing call"  # the peak since the outermost meter opened
        MemoryMeter._open += 1
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        MemoryMeter._open -= 1
        self.peak_mb = self.read_peak_mb()
        self.wall_s = time.perf_counter() - self.t0

    def read_peak_mb(self) -> float:
        """The peak so far (the call's, from ``__enter__``)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return rss_peak_mb()


# ------------------------------------------------------------------ machine
def machine_info() -> dict[str, Any]:
    """Where the figures come from: OS, CPU, threads, library versions, GPU, load at the start."""
    info: dict[str, Any] = {
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }
    for name in ("transformers", "diffusers", "peft"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a missing or broken library is reported as None
            info[name] = None
    info["gpu"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    try:
        info["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def machine_line(device: str | torch.device) -> str:
    """``machine_info`` in one line, for model cards and training records."""
    m = machine_info()
    return (f"{platform.system()} {m['cpu']}, {m['torch_threads']} torch thread(s) of {m['cpus']} CPUs "
            f"(shared with other jobs), device {device}")
