"""How often the server answers a datagram it cannot trust.

A refused request (unsigned, wrongly signed, stale, replayed) and a datagram
that is not OSC at all are answered with one short /msdm/error, so a person
typing `oscsend` learns why nothing happens. But anyone can send such a
datagram, and with `--allow-remote` from a forged source address: every reply
would then be sent to a victim of the sender's choosing (a reflection attack).
So these replies go only to the address the datagram came from, one per
datagram whatever it holds, and at most `per_host` a second to one host
(bursts of twice that) and `total` a second to all hosts together: token
buckets (the classic rate limiter, as in the Linux kernel's ICMP rate limit,
net/ipv4/icmp.c), refilled continuously.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

DEFAULT_PER_HOST = 5.0    # unsigned replies a second to one host (a person retrying by hand needs far fewer)
DEFAULT_TOTAL = 50.0      # ... and to all hosts together
MAX_HOSTS = 4096          # buckets kept; full ones are forgotten first (a forgotten host starts full again)


class _Bucket:
    __slots__ = ("tokens", "when")

    def __init__(self, tokens: float, when: float) -> None:
        self.tokens, self.when = tokens, when

    def take(self, rate: float, now: float) -> bool:
        self.tokens = min(2 * rate, self.tokens + (now - self.when) * rate)
        self.when = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class RefusalLimiter:
    """`allow(host)`: whether one more unsigned reply may go to `host` now.
    `per_host` None: no limit (tests that count every answer)."""

    def __init__(self, per_host: float | None = DEFAULT_PER_HOST, total: float | None = DEFAULT_TOTAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if per_host is not None and per_host <= 0 or total is not None and total <= 0:
            raise ValueError("the rates of unsigned replies must be positive (or None: no limit)")
        self.per_host, self.total = per_host, total
        self._clock = clock
        self._hosts: dict[str, _Bucket] = {}
        self._all = _Bucket(2 * (total or 0), clock())
        self._lock = threading.Lock()
        self.dropped = 0  # replies not sent (for tests and the log)

    def allow(self, host: str) -> bool:
        if self.per_host is None and self.total is None:
            return True
        with self._lock:
            now = self._clock()
            allowed = True
            if self.per_host is not None:
                bucket = self._hosts.get(host)
                if bucket is None:
                    if len(self._hosts) >= MAX_HOSTS:
                        self._forget(now)
                    bucket = self._hosts[host] = _Bucket(2 * self.per_host, now)
                allowed = bucket.take(self.per_host, now)
            if allowed and self.total is not None:
                allowed = self._all.take(self.total, now)
            if not allowed:
                self.dropped += 1
            return allowed

    def _forget(self, now: float) -> None:
        """Drop the buckets that have refilled (they hold nothing a new one would not)."""
        for host, bucket in list(self._hosts.items()):
            if bucket.tokens + (now - bucket.when) * self.per_host >= 2 * self.per_host:
                del self._hosts[host]
        if len(self._hosts) >= MAX_HOSTS:  # all busy: forget the oldest half
            for host in sorted(self._hosts, key=lambda h: self._hosts[h].when)[:MAX_HOSTS // 2]:
                del self._hosts[host]
