"""Process setup shared by every stage: offline/telemetry switches, seeding, device and dtype.

forgeml never opens an outbound connection: `enforce_offline()` runs on import of the
package and sets the hub-offline and telemetry-off variables of every library we touch.
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def autocast(device: str, dtype: str) -> Iterator[None]:
    """bf16 autocast on CPU and GPU when dtype == 'bf16'; plain fp32 otherwise."""
    import torch

    if dtype == "bf16":
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16):
            yield
    else:
        yield
