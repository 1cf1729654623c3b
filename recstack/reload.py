"""One background reload at a time: what a serving replica uses to swap in new state (item feature columns, a new
item-item set) without a request ever waiting for the read."""

from __future__ import annotations

import threading
from collections.abc import Callable


class BackgroundReload:
    """Runs a reload on a daemon thread of its own unless one is already running; the caller keeps serving what it
    has meanwhile. The reload itself handles (and logs) its own errors."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._running = False

    def start(self, reload: Callable[[], None]) -> bool:
        """Start ``reload`` now; False (and nothing started) while the previous one still runs."""
        with self._lock:
            if self._running:
                return False
            self._running = True

        def run() -> None:
            try:
                reload()
            finally:
                with self._lock:
                    self._running = False

        threading.Thread(target=run, name=self.name, daemon=True).start()
        return True
