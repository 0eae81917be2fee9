"""A run's record as a notebook: the cell's source and its outputs, as ``runs/<run-id>/outputs.ipynb``.

The outputs are what the cell printed and displayed, in the order it did (its log's records: stream
text and the runner's display records), then its error if it raised. Any notebook front end opens it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import nbformat

from batchmagic.state import LogRecord

__all__ = ["outputs_of", "run_notebook"]


def outputs_of(records: Iterable[LogRecord], error: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """nbformat output objects: consecutive text of one stream joined, displays as the runner made them."""
    outputs: list[dict[str, Any]] = []
    for record in records:
        if record.output is not None:
            outputs.append(dict(record.output))
        elif record.stream in ("stdout", "stderr") and record.text:
            last = outputs[-1] if outputs else None
            if last is not None and last["output_type"] == "stream" and last["name"] == record.stream:
                last["text"] += record.text
            else:
                outputs.append({"output_type": "stream", "name": record.stream, "text": record.text})
    if error is not None:
        outputs.append(
            {
                "output_type": "error",
                "ename": error.get("type", "Exception"),
                "evalue": error.get("message", ""),
                "traceback": [line.rstrip("\n") for line in error.get("traceback", [])],
            }
        )
    return outputs


def run_notebook(
    source: str, records: Iterable[LogRecord], *, error: dict[str, Any] | None = None, **metadata: Any
) -> nbformat.NotebookNode:
    """A valid nbformat 4 notebook of one code cell: ``source`` with its outputs; ``metadata`` under
    the notebook's ``batchmagic`` key (run id, name, backend...)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["batchmagic"] = metadata
    cell = nbformat.v4.new_code_cell(source)
    cell.outputs = [nbformat.from_dict(output) for output in outputs_of(records, error)]
    nb.cells.append(cell)
    nbformat.validate(nb)
    return cast(nbformat.NotebookNode, nb)
