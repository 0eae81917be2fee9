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


def test_a_missing_framework_fails_in_ci_and_is_skipped_elsewhere(monkeypatch) -> None:
    """need_torch (and need_mpi): torch missing fails a CI run (CI set, or as root) in one line, as a
    missing dockerd does; a developer's run without it skips, saying what to install."""
    import pytest

    from tests.test_distributed import need_mpi, need_torch

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setenv("CI", "1")
    for need in (need_torch, need_mpi):
        with pytest.raises(pytest.fail.Exception, match="in the test extra"):
            need()
    monkeypatch.delenv("CI")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception, match="pip install -e"):
        need_torch()
