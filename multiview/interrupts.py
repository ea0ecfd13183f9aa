"""Stopping long work cleanly: Ctrl-C (SIGINT) or a scheduler's SIGTERM lets the step under way finish, so that a
checkpoint can be saved; a second one stops at once.

Used by the training loops (``reconstruct.train``, ``generate.finetune``); ``orbit4d.cli`` turns SIGTERM into
KeyboardInterrupt everywhere else.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from multiview.console import console


@contextmanager
def deferred_interrupt() -> Iterator[Callable[[], bool]]:
    """Yield ``interrupted()``: whether Ctrl-C or SIGTERM came since the block began. The first one only takes note
    (the loop checks between steps and raises KeyboardInterrupt itself after saving); a second raises
    KeyboardInterrupt at once. Off the main thread, where Python cannot set handlers, nothing changes."""
    raised = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield raised.is_set
        return

    def handler(signum, frame):
        if raised.is_set():
            raise KeyboardInterrupt
        raised.set()
        console.print("stopping after this step to save a checkpoint (Ctrl-C again to stop at once)")

    previous = {number: signal.signal(number, handler) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield raised.is_set
    finally:
        for number, old in previous.items():
            signal.signal(number, old)
