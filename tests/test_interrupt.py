"""Ctrl-C while a cell is packaged or uploaded (a 300 MB variable), in a real kernel on Azure (the emulator
and Azurite): one line that says where it stopped, no traceback, nothing left in Blob Storage."""

from __future__ import annotations

import threading
import uuid

import pytest

from tests.support.azurite import azurite_fixture
from tests.support.emulator import start_emulator
from tests.support.settings import use_azure
from tests.test_attach import ROOT, Kernel
from tests.test_full_disk import blobs_of

azurite = azurite_fixture()


@pytest.mark.parametrize("after", [0.3, 2.5])  # packaging, then (most likely) uploading
def test_ctrl_c_while_packaging_or_uploading_is_one_line_and_leaves_nothing(
    after, tmp_path, home, azurite, monkeypatch
):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    with start_emulator(tmp_path / "batch", allocation_delay=0.2) as emu:
        use_azure(monkeypatch, emu, azurite, prefix=f"ctrlc-{uuid.uuid4().hex[:4]}")
        kernel = Kernel(tmp_path)
        try:
            kernel.run("%load_ext batchmagic\n%config AzBatch.panel = 'text'")
            kernel.run("import os\nbig = os.urandom(300 * 1024 * 1024)")
            timer = threading.Timer(after, kernel.km.interrupt_kernel)
            timer.start()
            shown = kernel.run("%%azbatch --name ctrlc\nn = len(big)", timeout=300)
            timer.cancel()
            assert "Traceback" not in shown and "could not remove" not in shown, shown
            (said,) = [line for line in shown.splitlines() if line.startswith("RunCancelled: ")]
            assert "interrupted" in said, shown
            assert any(end in said for end in ("nothing was", "nothing was left behind", "uploaded files removed")), (
                said
            )
            assert [b for b in blobs_of("") if not b.startswith("objects/")] == []
            assert list(emu.client().list_jobs()) == []
        finally:
            kernel.stop()
