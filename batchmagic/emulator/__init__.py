"""An Azure Batch service emulator for tests and demos: ``python -m batchmagic.emulator``.

It serves the Batch REST API (api-version 2025-06-01) to the unmodified azure-batch SDK over plain
HTTP with SharedKey authentication, and runs tasks on this machine (``process``) or in Docker.

Examples
--------
In [1]: from batchmagic.emulator import Emulator

In [2]: emu = Emulator(account="devbatch", key=key, allocation_delay=0.2).start()

In [3]: emu.url
Out[3]: 'http://127.0.0.1:40123'

Importing this package is cheap: the server is loaded on first use of ``Emulator``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Emulator"]

if TYPE_CHECKING:
    from batchmagic.emulator.server import Emulator


def __getattr__(name: str) -> Any:
    if name == "Emulator":
        from batchmagic.emulator.server import Emulator

        return Emulator
    raise AttributeError(f"module 'batchmagic.emulator' has no attribute {name!r}")
