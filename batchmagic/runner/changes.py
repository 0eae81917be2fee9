"""What the cell changed in place: the values it read that are not what it received.

A notebook cell that runs ``clf.fit(X, y)``, ``d['b'] = 2`` or ``xs.append(5)`` changes an object the
notebook holds; remotely that object is a copy, so the change must travel back. The client records,
for each shipped value that could change (:func:`batchmagic.package.capture.may_change`), the sha256
of the pickle it shipped (``Manifest.tracked``). After the cell the runner pickles each such value
again: the same hash means unchanged, and nothing goes back (content-addressed, so an unchanged
object costs one pickle here and nothing on the wire).

A pickle can differ without a change: a set of strings iterates in another order in another process
(string hashes are salted per process). So a value whose hash differs is compared once more with
the value it received, unpickled and pickled again here: only a real difference counts.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["as_received", "changed_in_place"]


def changed_in_place(
    namespace: Mapping[str, Any],
    tracked: Mapping[str, str],
    received: Callable[[str], bytes | None],
    *,
    wanted: Iterable[str] | None = None,
) -> tuple[dict[str, bytes], dict[str, str]]:
    """The tracked values the cell changed, each pickled, and those that changed but cannot travel.

    Parameters
    ----------
    namespace : mapping
        The cell's namespace after it ran.
    tracked : mapping
        Name -> sha256 of the pickle the client shipped for it.
    received : callable
        ``received(name)``: the bytes shipped for ``name`` (None if they cannot be had again), for
        the second look at a value whose pickle differs.
    wanted : iterable of str, optional
        ``--out``: only these names may come back.

    Returns
    -------
    changed : dict
        Name -> the changed value's pickle (protocol 5, cloudpickle).
    skipped : dict
        Name -> why a value the cell may have changed cannot come back.
    """
    allowed = None if wanted is None else set(wanted)
    changed: dict[str, bytes] = {}
    skipped: dict[str, str] = {}
    if not tracked:
        return changed, skipped
    import cloudpickle  # by a runner with values to compare only (see runner.main._collect)

    for name, sha256 in tracked.items():
        if name not in namespace or (allowed is not None and name not in allowed):
            continue
        value = namespace[name]
        try:
            after = cloudpickle.dumps(value, protocol=5)
        except Exception as err:
            skipped[name] = f"it may have changed in place, but {type(value).__name__} cannot be pickled now: {err}"
            continue
        if hashlib.sha256(after).hexdigest() == sha256 or _same_as_received(after, received(name)):
            continue
        changed[name] = after
    return changed, skipped


def as_received(
    outputs: Mapping[str, bytes], received: Callable[[str], bytes | None], hashes: Mapping[str, str]
) -> list[str]:
    """The names among ``outputs`` (pickled) whose value is still the one the cell received: a cell that
    raised before it assigned them. Each is compared as :func:`changed_in_place` compares, except a name
    in ``hashes`` (the sha256 of a large value shipped as an object of its own): its hash alone decides,
    so a value the cell did assign costs no second download of the one it received."""
    same = []
    for name, after in outputs.items():
        if name in hashes:
            if hashlib.sha256(after).hexdigest() == hashes[name]:
                same.append(name)
            continue
        original = received(name)
        if original is not None and (after == original or _same_as_received(after, original)):
            same.append(name)
    return same


def _same_as_received(after: bytes, original: bytes | None) -> bool:
    """Whether ``after`` is what the received value pickles to in this process (see the module's note)."""
    if original is None:
        return False
    import cloudpickle  # as changed_in_place's

    try:
        again = cloudpickle.dumps(pickle.loads(original), protocol=5)  # noqa: S301 - what the notebook sent
    except Exception:  # the received value cannot be rebuilt a second time: count it as changed
        return False
    return bool(again == after)
