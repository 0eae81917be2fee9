"""The tests' own policies: the reference is found next to the checkout, and its absence fails CI but only
skips (with the reason) elsewhere; one Azurite serves the whole run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.reference import REFERENCE

ROOT = Path(__file__).resolve().parents[1]
MODULE = """
from tests.support.reference import require_reference

PATH = require_reference("batch-rest-2025-06-01")


def test_it():
    assert PATH.is_dir()
"""


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_needs_reference.py").write_text(MODULE)
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "BATCHMAGIC_REFERENCE")}
    environ.update(env, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)]
    return subprocess.run(command, capture_output=True, text=True, env=environ, cwd=ROOT, timeout=120)


def test_the_reference_is_next_to_the_checkout() -> None:
    assert REFERENCE == ROOT.parent / "shared" / "reference" or os.environ.get("BATCHMAGIC_REFERENCE")


def test_a_missing_reference_skips_with_the_reason_and_fails_in_ci(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")
    skipped = _run(tmp_path, BATCHMAGIC_REFERENCE=missing)
    assert skipped.returncode in (0, 5) and "1 skipped" in skipped.stdout, skipped.stdout  # 5: nothing else ran
    assert f"the Batch REST reference is not at {missing}/batch-rest-2025-06-01" in skipped.stdout
    failed = _run(tmp_path, BATCHMAGIC_REFERENCE=missing, CI="1")
    assert failed.returncode != 0 and "the Batch REST reference is not at" in failed.stdout, failed.stdout


def test_one_azurite_for_the_whole_run(azurite: object, azurite_session: object) -> None:
    assert azurite is azurite_session
