"""A run's record as a notebook: the cell's source and its outputs, as ``runs/<run-id>/outputs.ipynb``.

The outputs are what the cell printed and displayed, in the order it did (its log's records: stream
text and the runner's display records), then its error if it raised. Any notebook front end opens it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from batchmagic.run.state import LogRecord

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
) -> dict[str, Any]:
    """A valid nbformat 4.5 notebook of one code cell, as JSON-ready data: ``source`` with its outputs;
    ``metadata`` under the notebook's ``batchmagic`` key (run id, name, backend...).

    Built as plain data rather than with nbformat, whose import (its JSON schema validators) can take
    seconds: the record is written while the user waits for the run to end. The tests validate it.
    """
    cell: dict[str, Any] = {
        "cell_type": "code",
        "execution_count": None,
        "id": uuid.uuid4().hex[:8],
        "metadata": {},
        "outputs": [_with_defaults(output) for output in outputs_of(records, error)],
        "source": source,
    }
    return {
        "cells": [cell],
        "metadata": {"language_info": {"name": "python"}, "batchmagic": metadata},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def _with_defaults(output: dict[str, Any]) -> dict[str, Any]:
    """The fields nbformat requires of each output type (a display made remotely may lack metadata)."""
    kind = output.get("output_type")
    if kind in ("display_data", "execute_result"):
        output = {"metadata": {}, **output}
        if kind == "execute_result":
            output.setdefault("execution_count", None)
    return output
