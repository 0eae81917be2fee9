"""A minimal IPython shell for a cell that uses IPython syntax (``%time``, ``%%time``, ``!cmd``).

The client marks such a cell (``Manifest.ipython``); the runner transforms it with IPython's own input
transformers, as the kernel does, and binds ``get_ipython`` to a shell whose namespace is the cell's,
with no history file and no display machinery of its own: what the cell prints and displays goes
through the runner's capture as for any cell. Plain cells never import IPython.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NoIPythonError", "ipython_cell"]


class NoIPythonError(RuntimeError):
    """The cell uses IPython syntax, and IPython is not installed where it runs."""


def ipython_cell(source: str, namespace: dict[str, Any]) -> str:
    """The cell as Python, with a shell behind ``get_ipython()`` whose user namespace is ``namespace``.

    Raises
    ------
    NoIPythonError
        IPython cannot be imported here (a prebuilt image without it).
    """
    try:
        from IPython.core.inputtransformer2 import TransformerManager
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config
    except ImportError:
        raise NoIPythonError(
            "the cell uses IPython syntax (%magics, !commands) but IPython is not installed where it runs: "
            "add --pip ipython, or write the cell in plain Python"
        ) from None
    config = Config()
    config.HistoryManager.enabled = False  # no sqlite file in the task's directory
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config, user_ns=namespace)
    namespace["get_ipython"] = shell.get_ipython
    return str(TransformerManager().transform_cell(source))
