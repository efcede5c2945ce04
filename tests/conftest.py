"""Shared fixtures: a fresh workspace and a small text corpus made on the fly."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
# The ACME demo domain lives in examples/acme/, outside the package; its modules import each
# other by name (as when its scripts run), so the tests put that folder on the path too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "acme"))


@pytest.fixture
def workspace(tmp_path: Path):
    from forgeml.core.workspace import init_workspace

    return init_workspace(tmp_path / "ws")


@pytest.fixture
def text_folder(tmp_path: Path) -> Path:
    """A small folder of prose and code with one binary and one latin-1 file."""
    root = tmp_path / "docs"
    (root / "src").mkdir(parents=True)
    words = "the quick brown fox jumps over the lazy dog while the model learns".split()
    for i in range(40):
        body = " ".join(words[(i + j) % len(words)] for j in range(200))
        (root / f"note_{i:02d}.md").write_text(f"# Note {i}\n\n{body}\n")
    for i in range(10):
        (root / "src" / f"mod_{i}.py").write_text(
            f"def f{i}(x):\n    return x * {i} + {i + 1}\n\n\nprint(f{i}(3))\n"
        )
    (root / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (root / "latin.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    return root
