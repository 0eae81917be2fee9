"""The runner: ``python -m batchmagic.runner --spec SPEC`` runs one task of a bundle anywhere.

It is the single entry point on every backend (a local subprocess, a Batch container task). It
reads the task spec (URLs of the bundle, the log and the result), rebuilds the cell's namespace,
runs the cell with stdout/stderr teed into the log, and always ends by writing a result and
exiting with a code:

- 0: the cell succeeded; the result holds its outputs.
- 1: the cell raised; the result holds the exception, type, message and remote traceback.
- 2: the runner could not set the cell up (bad bundle, a value that won't unpickle...).
- 3: the GPU preflight failed: the GPUs the machine should have are not visible; the cell did not run.
- 143: SIGTERM ended it (a cancel or a wall-clock limit); the log is flushed first.

It imports neither IPython nor widgets, so the training image stays small.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchmagic.runner.main import (
        EXIT_CELL_ERROR,
        EXIT_OK,
        EXIT_PREFLIGHT,
        EXIT_SETUP_ERROR,
        EXIT_TERMINATED,
    )

# ``main`` is ``batchmagic.runner.main.main``: the package's attribute ``main`` is that module once imported.
__all__ = ["EXIT_OK", "EXIT_CELL_ERROR", "EXIT_SETUP_ERROR", "EXIT_PREFLIGHT", "EXIT_TERMINATED"]


def __getattr__(name: str) -> Any:
    # Lazy: ``python -m batchmagic.runner`` first asks the node's warm worker (batchmagic.runner.node, the
    # standard library only) and imports the runner only when it runs the task itself.
    if name in __all__:
        import importlib

        return getattr(importlib.import_module("batchmagic.runner.main"), name)
    raise AttributeError(f"module 'batchmagic.runner' has no attribute {name!r}")
