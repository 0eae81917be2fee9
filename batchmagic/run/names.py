"""A run's names into the notebook, as the cell would have left them there.

Names the cell assigned are bound; names it deleted go; values it read and changed in place
(``clf.fit(X, y)``) come back as changed copies and are bound too. A copy is a new object: any other
name that referred to the old one (``a = b = []``, then the cell does ``a.append(1)``) still holds
the old one, so :func:`rebind` says which names those are.

A cell that raises keeps, in the notebook, what it did before the raise; so does a remote one
(:func:`kept_line` is the line that says so).
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

__all__ = ["kept_line", "rebind", "stale_aliases"]

# Names IPython binds in every notebook: they hold history, not the user's objects.
_IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit"})


def rebind(
    namespace: MutableMapping[str, Any],
    outputs: Mapping[str, Any],
    *,
    deleted: Iterable[str] = (),
    changed: Iterable[str] = (),
) -> list[str]:
    """Bind ``outputs`` in ``namespace`` and drop ``deleted``; return a line per alias left behind."""
    notes = stale_aliases(namespace, outputs, changed)
    namespace.update(outputs)
    for name in deleted:
        namespace.pop(name, None)
    return notes


def stale_aliases(namespace: Mapping[str, Any], outputs: Mapping[str, Any], changed: Iterable[str]) -> list[str]:
    """What rebinding the ``changed`` names leaves behind: a line per object of the notebook that other
    names still refer to, or that now exists as several copies. Pure: nothing is bound."""
    groups: dict[int, list[str]] = {}
    olds: dict[int, Any] = {}
    for name in changed:
        if name in namespace:
            old = namespace[name]
            groups.setdefault(id(old), []).append(name)
            olds[id(old)] = old
    notes = []
    for key, names in groups.items():
        old = olds[key]
        others = [
            k
            for k, v in namespace.items()
            if v is old and k not in outputs and not k.startswith("_") and k not in _IPYTHON_NAMES
        ]
        rebound = ", ".join(f"`{n}`" for n in names)
        if len(names) > 1:
            notes.append(
                f"{rebound} were one object here and the remote cell changed it: each now holds its own changed copy"
            )
        if others:
            held = ", ".join(f"`{n}`" for n in others)
            verb = "holds" if len(others) == 1 else "hold"
            notes.append(
                f"{rebound} changed in place in the remote cell and now {'holds' if len(names) == 1 else 'hold'} "
                f"the changed copy; {held} referred to the same object and still {verb} the old one "
                f"({others[0]} = {names[0]} to follow it)"
            )
    return notes


def kept_line(outputs: Mapping[str, Any], deleted: Iterable[str], *, bound: bool) -> str:
    """The line under a cell's error that says what it did before it raised: where those names are
    (``bound``: in the notebook; else in the error's ``outputs``, for ``Run.fetch``). Modules it imported
    are kept without a word (``import sys; sys.exit(3)`` is one line, as in the notebook). Pure."""
    said = [n for n, v in outputs.items() if not isinstance(v, types.ModuleType)]
    names, gone = ", ".join(f"`{n}`" for n in said), ", ".join(f"`{n}`" for n in deleted)
    did = " and ".join(part for part in (names and f"assigned or changed {names}", gone and f"deleted {gone}") if part)
    if not did:
        return ""
    if bound:
        return f"batchmagic: the cell {did} before it raised: kept here, as if the cell had run here"
    return f"batchmagic: the cell {did} before it raised: err.outputs holds them, run.fetch(namespace) binds them"
