"""The notebook's global random generators, carried through a remote cell as if it had run here.

A notebook that seeds numpy's or Python's global generator (``np.random.seed(42)``, ``random.seed(0)``)
draws the same numbers on every run, and scikit-learn's ``random_state=None`` draws from numpy's. A
remote cell therefore starts from the generators' state in the kernel (:func:`global_state`, in the
bundle's manifest), and the state it leaves comes back (:func:`state_after`, in the task's outcome), so
the notebook's next cell draws what it would have drawn had the cell run here (:func:`apply_state`).

The state travels as JSON (numpy's legacy ``MT19937`` state, and :func:`random.getstate`): a few
kilobytes, no pickle. numpy's is taken only when the kernel has imported numpy and its global generator
is the legacy MT19937 one, and set in the runner only then and when the image has numpy.
"""

from __future__ import annotations

import json
import random
import sys
from typing import Any

__all__ = ["apply_state", "global_state", "state_after"]


def global_state() -> str:
    """This process's global generators' state, as text: Python's ``random``, and numpy's when numpy is
    imported."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"random": [version, list(internal), gauss]}
    numpy = sys.modules.get("numpy")
    legacy = numpy.random.get_state(legacy=True) if numpy is not None else None
    # Not MT19937 (np.random.set_bit_generator(PCG64())): get_state gives a dict, which does not travel.
    if isinstance(legacy, tuple):
        name, keys, pos, has_gauss, cached = legacy
        state["numpy"] = [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]
    return json.dumps(state, separators=(",", ":"))


def apply_state(text: str) -> None:
    """Set the global generators to ``text`` (from :func:`global_state`); empty: leave them."""
    if not text:
        return
    state = json.loads(text)
    if "random" in state:
        version, internal, gauss = state["random"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        try:
            import numpy
        except ImportError:  # an image without numpy (--image): the cell cannot draw from it either
            return
        name, keys, pos, has_gauss, cached = state["numpy"]
        numpy.random.set_state((name, numpy.array(keys, dtype=numpy.uint32), pos, has_gauss, cached))


def state_after(sent: str) -> str:
    """The generators' state now, if the cell drew from them since ``sent`` was applied; else empty (and
    empty when nothing was sent: a sweep's task or a rank keeps its own)."""
    if not sent:
        return ""
    before = json.loads(sent)
    now = {k: v for k, v in json.loads(global_state()).items() if k in before}  # numpy only if it went
    return "" if now == before else json.dumps(now, separators=(",", ":"))
