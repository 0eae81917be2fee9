"""The emulator's one clock: wall time, optionally running faster (``--time-scale F``).

Everything in the emulator that reads the time or waits for it (allocation delays, autoscale
evaluation intervals, idle periods, job schedule recurrences, wall-clock limits, the timestamps
reported to clients) goes through one :class:`Clock`, so a scaled clock stays consistent: a pool
resized at emulated time T with a 15-minute evaluation interval is evaluated at T + 15 min as its
``autoScaleRun.timestamp`` says, which is 9 real seconds later at ``--time-scale 100``.

Emulated time starts at the real time when the clock is made (or at ``origin``, so a restarted
emulator with ``--state`` never goes back in time) and then advances ``scale`` times as fast.

Examples
--------
In [1]: clock = Clock(scale=60)          # one emulated minute per real second

In [2]: clock.sleep(120)                 # returns after about 2 real seconds

In [3]: clock.real(900)                  # real seconds in 15 emulated minutes
Out[3]: 15.0
"""

from __future__ import annotations

import threading
import time

__all__ = ["Clock"]


class Clock:
    """Emulated wall-clock time (epoch seconds) running ``scale`` times as fast as real time.

    Parameters
    ----------
    scale : float
        How many emulated seconds pass per real second; 1 is real time. Must be positive.
    origin : float, optional
        The emulated epoch time at creation (default: the real time now). A restarted emulator passes
        the latest time it had recorded so its timestamps keep increasing.
    """

    def __init__(self, scale: float = 1.0, *, origin: float | None = None) -> None:
        if not scale > 0:
            raise ValueError(f"time scale must be positive, not {scale!r}")
        self.scale = float(scale)
        self._real0 = time.monotonic()
        self._wall0 = real_now = time.time()
        self._emulated0 = real_now if origin is None else max(float(origin), real_now)

    def __repr__(self) -> str:
        return f"Clock(scale={self.scale!r})"

    def now(self) -> float:
        """The emulated time, in epoch seconds (what ``time.time()`` would say on the emulated service)."""
        return self._emulated0 + (time.monotonic() - self._real0) * self.scale

    def from_real(self, timestamp: float) -> float:
        """The emulated time of a real epoch ``timestamp`` (a file's mtime, say), on this clock's scale."""
        return self._emulated0 + (timestamp - self._wall0) * self.scale

    def real(self, seconds: float) -> float:
        """Real seconds that ``seconds`` of emulated time take."""
        return max(0.0, seconds) / self.scale

    def emulated(self, real_seconds: float) -> float:
        """Emulated seconds that pass in ``real_seconds`` of real time."""
        return real_seconds * self.scale

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of emulated time."""
        time.sleep(self.real(seconds))

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait for ``event`` at most ``seconds`` of emulated time; True when it was set."""
        return event.wait(self.real(seconds))
