"""Hold Ctrl-C and SIGTERM over a few critical lines, then deliver them.

Two places must not be cut in the middle: torch's zip reader calls back into Python, and a
KeyboardInterrupt raised inside such a callback comes out as an unrelated error (an
AttributeError about `read`), which a reader would report as a corrupt file; and the two renames
that swap a finished output into place. A signal that arrives meanwhile is recorded and handed to
the handler that was installed before, once the block is over.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_HELD = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def signals_held() -> Iterator[None]:
    """Run the block with SIGINT and SIGTERM postponed (a no-op outside the main thread, where
    Python delivers no signals anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in _HELD}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(pending):
            handler = previous[s]
            if callable(handler):
                handler(s, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(s)  # the default action (SIGTERM: the process ends here)
