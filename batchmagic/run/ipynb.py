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


#: Characters of printed text a record keeps (about 32 MB): past them it says where the rest is (the run's
#: log keeps every line), so writing the record of a flood of output holds a bounded amount of memory.
RECORD_TEXT_LIMIT = 32_000_000


def outputs_of(
    records: Iterable[LogRecord], error: dict[str, Any] | None = None, *, limit: int = RECORD_TEXT_LIMIT
) -> list[dict[str, Any]]:
    """nbformat output objects: consecutive text of one stream joined, displays as the runner made them,
    the first ``limit`` characters of text (then a note of how many lines are left out).

    Linear in the output: a stream's pieces are gathered and joined in blocks (``+=`` on a dict's value
    copies the whole text each time: a million lines took hours)."""
    outputs: list[dict[str, Any]] = []
    text = _Text()
    kept, left_out = 0, 0
    for record in records:
        if record.output is not None:
            text.close(outputs)
            outputs.append(dict(record.output))
        elif record.stream in ("stdout", "stderr") and record.text:
            if kept >= limit:
                left_out += record.text.count("\n") or 1
                continue
            kept += len(record.text)
            last = outputs[-1] if outputs else None
            if last is None or last["output_type"] != "stream" or last["name"] != record.stream:
                text.close(outputs)
                outputs.append({"output_type": "stream", "name": record.stream, "text": ""})
            text.add(record.text)
    text.close(outputs)
    if left_out:
        note = f"[batchmagic] the record stops here: {left_out:,} more lines are in the run's log (run.logs())\n"
        outputs.append({"output_type": "stream", "name": "stderr", "text": note})
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


class _Text:
    """The text of the stream output last in a list, gathered in blocks of joined pieces (a million
    small strings would weigh more than their text)."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.blocks: list[str] = []

    def add(self, piece: str) -> None:
        self.pieces.append(piece)
        if len(self.pieces) >= 4096:
            self.blocks.append("".join(self.pieces))
            self.pieces.clear()

    def close(self, outputs: list[dict[str, Any]]) -> None:
        """Set the last output's text, and start afresh."""
        if self.pieces or self.blocks:
            self.blocks.append("".join(self.pieces))
            outputs[-1]["text"] = "".join(self.blocks)
            self.pieces.clear()
            self.blocks.clear()


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
