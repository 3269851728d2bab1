"""A warning per distinct problem, for loops that retry every few seconds: the first time a
message is seen it goes out at WARNING, its repeats at DEBUG, so a lasting fault is said once
rather than every round and a new one is still said."""

from __future__ import annotations

import logging


class DistinctWarnings:
    """Logs each distinct formatted message once at WARNING; remembers up to `limit` of them."""

    def __init__(self, logger: logging.Logger, limit: int = 64):
        self._logger = logger
        self._limit = limit
        self._seen: set[str] = set()

    def warn(self, message: str, *args: object) -> bool:
        """Log `message % args`; True if it went out at WARNING (the first time it was seen)."""
        text = message % args if args else message
        if text in self._seen:
            self._logger.debug("%s (again)", text)
            return False
        if len(self._seen) >= self._limit:
            self._seen.clear()  # bounded: messages that embed changing values must not grow it forever
        self._seen.add(text)
        self._logger.warning("%s", text)
        return True
