"""Where and how tensors run: device, CPU threads, seeds, deterministic kernels, and arithmetic precision.

Shared by training and inference (evaluate, predict and the MLflow model read the precision a
model was trained with), so neither imports the other for it.

Precision ``bf16`` autocasts the text encoders' matmuls to bfloat16 (weights, optimiser state
and the loss stay fp32): on CPUs with bf16 dot-product units (``avx512_bf16`` or AMX) oneDNN
runs them about twice as fast. Where the CPU lacks them it runs fp32 and says so once.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import sys
from pathlib import Path

import numpy as np
import torch

from hlm12erc.config import resolve_jobs

PRECISIONS = ("fp32", "bf16")
_warned: set[str] = set()


def select_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def set_cpu_threads(threads: int) -> None:
    """Intra-op threads for CPU work (0 = all cores). The fusion heads are tiny: one thread avoids sync cost."""
    torch.set_num_threads(resolve_jobs(threads))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch, and ask torch for deterministic kernels."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    deterministic_kernels()


def deterministic_kernels() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` without its import of the inductor
    compiler (about 2 s per process, to set a compile flag; nothing here compiles)."""
    if "torch._inductor" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(True, warn_only=True)


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 matmuls natively on this CPU (avx512_bf16 or AMX)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def effective_precision(precision: str, device: torch.device) -> str:
    """The precision that will run: ``bf16`` falls back to ``fp32`` (said once) where the CPU lacks it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    lacking = {"cpu": lambda: not cpu_has_bf16(), "cuda": lambda: not torch.cuda.is_bf16_supported()}
    if precision == "bf16" and lacking.get(device.type, lambda: True)():
        if device.type not in _warned:
            _warned.add(device.type)
            print(f"precision: this {device.type} has no bf16 matmul units (CPU: avx512_bf16 or AMX); running fp32",
                  file=sys.stderr)
        return "fp32"
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """A text encoder's forward runs inside this (its backward follows the forward's dtypes)."""
    if effective_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def machine_kind() -> str:
    """What decides the float kernels, so the bytes of every computed output: the CPU model and torch's vector
    instruction set (and the GPU, when one is present). ``dvc.lock.machine`` records the lock's."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), model)
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{model}, {torch.backends.cpu.get_cpu_capability()}{gpu}"
