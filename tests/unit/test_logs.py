"""Stop signals: a service's loop is told to stop, whatever its main thread was doing."""

from __future__ import annotations

import logging
import signal
import threading

from mlops_platform import logs


def test_a_stop_signal_arriving_inside_stop_wait_still_stops_the_service():
    """The handler runs on the main thread between two of its steps; inside stop.wait() that thread may
    hold the event's lock, so a handler that takes it waits for its own thread forever."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop = logs.stop_on_signals(logging.getLogger("unit-test"))
        handler = signal.getsignal(signal.SIGTERM)

        def interrupted_inside_wait():
            with stop._cond:  # what stop.wait() holds just before and after it sleeps
                handler(signal.SIGTERM, None)

        main = threading.Thread(target=interrupted_inside_wait, daemon=True)
        main.start()
        main.join(timeout=10)
        assert not main.is_alive(), "the signal handler is stuck on the event's lock"
        assert stop.wait(timeout=10)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
