"""The Batch REST reference the emulator is written from: ``../shared/reference`` next to the checkout.

It is not part of the repository (Microsoft's OpenAPI description, its request examples, recordings of
the real service). A test module that needs it calls :func:`require_reference` at import: in CI (``CI``
set) a missing reference fails the run; elsewhere the module is skipped with the reason.
``BATCHMAGIC_REFERENCE`` points at another copy.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

__all__ = ["REFERENCE", "require_reference"]

#: The checkout's parent's shared/reference (the repository is tests/support/../..).
REFERENCE = Path(
    os.environ.get("BATCHMAGIC_REFERENCE") or Path(__file__).resolve().parents[2].parent / "shared" / "reference"
)


def require_reference(name: str) -> Path:
    """``REFERENCE / name``, a directory that must exist: fail in CI, skip this module elsewhere."""
    path = REFERENCE / name
    if path.is_dir() and any(path.iterdir()):
        return path
    reason = (
        f"the Batch REST reference is not at {path}: put it in ../shared/reference next to the checkout "
        "or set BATCHMAGIC_REFERENCE"
    )
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)
