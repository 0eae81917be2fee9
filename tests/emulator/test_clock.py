"""The emulator's clock: emulated time runs ``scale`` times as fast and never goes back."""

from __future__ import annotations

import threading
import time

import pytest

from batchmagic.emulator.clock import Clock


def test_scaled_clock_runs_faster_from_now() -> None:
    clock = Clock(scale=100)
    start = clock.now()
    assert abs(start - time.time()) < 1.0
    time.sleep(0.1)
    assert 8.0 <= clock.now() - start <= 30.0
    assert clock.real(900) == 9.0
    assert clock.emulated(2.0) == 200.0


def test_real_timestamps_map_onto_the_scaled_clock() -> None:
    clock = Clock(scale=10)
    now = time.time()
    assert abs(clock.from_real(now) - clock.now()) < 1.0
    assert abs(clock.from_real(now + 1) - clock.from_real(now) - 10) < 1e-6


def test_sleep_and_wait_take_emulated_seconds() -> None:
    clock = Clock(scale=50)
    t0 = time.monotonic()
    clock.sleep(10)
    assert 0.15 <= time.monotonic() - t0 < 1.0
    event = threading.Event()
    assert clock.wait(event, 5) is False
    event.set()
    assert clock.wait(event, 1000) is True


def test_origin_in_the_future_is_kept_and_one_in_the_past_is_not() -> None:
    future = time.time() + 3600
    assert Clock(origin=future).now() >= future
    assert Clock(origin=0).now() >= time.time() - 1


def test_scale_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Clock(scale=0)
