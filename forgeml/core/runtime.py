"""Process setup shared by every stage: offline/telemetry switches, seeding, device and dtype.

forgeml never opens an outbound connection: `enforce_offline()` runs on import of the
package and sets the hub-offline and telemetry-off variables of every library we touch.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
from collections.abc import Iterator

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
    # under `uv run`, Ray would give its workers a uv environment resolved from an index
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "WANDB_MODE": "disabled",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "true"),
}


def enforce_offline() -> None:
    """Force hub-offline mode and disable telemetry for this process and its children."""
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> str:
    """'auto' means cuda when available, else cpu."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX-512 BF16 or AMX).

    Without it PyTorch emulates bf16 matmuls, measured here at ~60x slower than fp32 on an
    AVX2-only CPU, so bf16 autocast would be a slowdown rather than a speed-up.
    """
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device: str) -> str:
    """'auto' → 'bf16' where bf16 is fast (CUDA with bf16, CPUs with AVX-512 BF16/AMX), else 'fp32'."""
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


@contextlib.contextmanager
def autocast(device: str, dtype: str) -> Iterator[None]:
    """bf16 autocast on CPU and GPU when dtype resolves to 'bf16'; plain fp32 otherwise."""
    import torch

    if resolve_dtype(dtype, device) == "bf16":
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16):
            yield
    else:
        yield
