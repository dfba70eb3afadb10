"""The pub/sub listener: news of ready jobs and cancelled running ones from every host.

One thread per queue handle, started when a claim first waits or a listener
is added; it reconnects (with jittered backoff) after the server goes away, and
logs an outage once, and its end.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from walq.redisq.connection import redis_module

log = logging.getLogger("walq.redisq")

_T = TypeVar("_T")


class Listeners(list[_T]):
    """A list of callbacks that starts the queue's pub/sub listener when one is added."""

    def __init__(self, on_add: Callable[[], None]) -> None:
        super().__init__()
        self._on_add = on_add

    def append(self, item: _T) -> None:
        super().append(item)
        self._on_add()


class Events:
    """The listener of one queue handle on `channel` ("r": ready; "c ID ORIGIN": cancelled)."""

    def __init__(
        self,
        client: Any,
        channel: str,
        *,
        path: str,
        origin: str,
        rng: random.Random,
        forget: Callable[[Iterable[int]], None],
    ) -> None:
        self._client = client
        self._channel = channel
        self._path = path
        self._origin = origin
        self._rng = rng
        self._forget = forget
        self._closed = False
        self._ready = threading.Condition()
        self.seq = 0  # bumped on every piece of ready news
        self._listener: threading.Thread | None = None
        self._lock = threading.Lock()
        self.ready_listeners: list[Callable[[], None]] = Listeners(self.start)
        self.cancel_listeners: list[Callable[[int], None]] = Listeners(self.start)

    def after_fork_in_child(self) -> None:
        """Fresh locks: the parent's may have been held by its other threads."""
        self._lock = threading.Lock()
        self._ready = threading.Condition()

    def start(self) -> None:
        """Start the listener (once)."""
        with self._lock:
            if self._listener is not None or self._closed:
                return
            subscribed = threading.Event()
            self._listener = threading.Thread(
                target=self._listen, args=(subscribed,), name="walq-redis-listener", daemon=True
            )
            self._listener.start()
        subscribed.wait(2.0)

    def wait(self, seen: int, timeout: float) -> None:
        """Sleep up to `timeout` seconds unless news came after `seen` (a value of seq)."""
        with self._ready:
            if self.seq == seen and not self._closed:
                self._ready.wait(timeout)

    def cancelled(self, job_id: int) -> None:
        """Tell this handle's cancel listeners that running job `job_id` was cancelled."""
        for listener in list(self.cancel_listeners):
            listener(job_id)

    def close(self) -> None:
        """Stop listening, and wake whoever waits."""
        self._closed = True
        with self._ready:
            self._ready.notify_all()
        listener = self._listener
        if listener is not None:
            listener.join(timeout=3.0)

    def _listen(self, subscribed: threading.Event) -> None:
        redis = redis_module()
        pause = 0.1
        down_since: float | None = None  # an outage is logged once, and its end
        while not self._closed:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._channel)
                subscribed.set()
                if down_since is not None:
                    log.info(
                        "%s: event listener back after %.1f s",
                        self._path,
                        time.monotonic() - down_since,
                    )
                    down_since = None
                self._on_ready()  # whatever was published while no one listened
                pause = 0.1
                while not self._closed:
                    message = pubsub.get_message(timeout=0.25)
                    if message is not None:
                        self._on_message(message.get("data"))
            except (redis.RedisError, OSError, ValueError) as exc:
                if self._closed:
                    break
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("%s: event listener: %s; reconnecting", self._path, exc)
                else:
                    log.debug("%s: event listener: %s; reconnecting", self._path, exc)
                time.sleep(pause * (0.5 + self._rng.random() / 2))
                pause = min(pause * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()

    def _on_message(self, data: Any) -> None:
        if not isinstance(data, bytes):
            return
        if data == b"r":
            self._on_ready()
        elif data.startswith(b"c "):
            parts = data.split()
            if len(parts) == 3 and parts[2].decode() != self._origin:
                jid = int(parts[1])
                self._forget([jid])
                for listener in list(self.cancel_listeners):
                    try:
                        listener(jid)
                    except Exception:
                        log.exception("cancel listener failed")

    def _on_ready(self) -> None:
        with self._ready:
            self.seq += 1
            self._ready.notify_all()
        for listener in list(self.ready_listeners):
            try:
                listener()
            except Exception:
                log.exception("ready listener failed")
