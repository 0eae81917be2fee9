"""batchmagic: run a notebook cell on a bigger machine and bring its results back.

Importing this package has no side effects; ``%load_ext batchmagic`` registers the magics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batchmagic._version import __version__

__all__ = ["__version__", "submit", "Run", "RemoteError", "BatchMagicError", "load_ipython_extension"]

if TYPE_CHECKING:
    from batchmagic.api import submit
    from batchmagic.errors import BatchMagicError, RemoteError
    from batchmagic.run.run import Run


def __getattr__(name: str) -> Any:
    # Lazy so that `import batchmagic` stays fast and the runner never imports IPython.
    if name == "submit":
        from batchmagic.api import submit

        return submit
    if name == "Run":
        from batchmagic.run.run import Run

        return Run
    if name in ("RemoteError", "BatchMagicError"):
        from batchmagic import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'batchmagic' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """Register the ``%%azbatch`` magics (``%load_ext batchmagic``).

    While ``batchmagic emulator`` runs, and the environment names no Azure account of its own, its
    settings (``BATCHMAGIC_HOME/emulator.env``) are loaded first: cells then run on the Azure path
    against the local Batch emulator and Azurite.
    """
    from batchmagic.config import adopt_emulator_settings
    from batchmagic.notebook.magics import AzBatch

    adopted = adopt_emulator_settings()
    if adopted:
        endpoint = adopted.get("AZURE_BATCH_ENDPOINT", "")
        print(f"batchmagic: Azure path on the local Batch emulator {endpoint} and Azurite (`batchmagic emulator`)")
    ipython.register_magics(AzBatch(shell=ipython))


def unload_ipython_extension(ipython: Any) -> None:
    """Nothing to undo beyond IPython's own bookkeeping."""
