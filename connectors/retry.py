"""Retries with exponential backoff and full jitter, honouring Retry-After, and a
token bucket that keeps a connector inside a provider's per-user quota."""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httplib2
import requests

T = TypeVar("T")

# Network failures that are worth another try (a dropped connection, a timeout).
TRANSIENT_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    OSError,
    http.client.HTTPException,
    httplib2.HttpLib2Error,
    requests.ConnectionError,
    requests.Timeout,
)
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class AuthFailure(Exception):
    """Credentials that refreshing cannot fix: the account must be reconnected."""


class GiveUp(Exception):
    """A transient failure that outlived every retry."""


@dataclass
class RetryPolicy:
    attempts: int = 8
    base_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        backoff = random.uniform(0, min(self.cap_s, self.base_s * 2**attempt))
        if retry_after is not None:
            return max(retry_after, backoff * 0.1)
        return backoff


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date form: fall back to our own backoff


def call_with_retries(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy,
    classify: Callable[[BaseException], tuple[bool, float | None]],
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> T:
    """Run fn; on an exception that classify() calls transient, sleep and retry.

    classify returns (retryable, retry_after_seconds).
    """
    for attempt in range(policy.attempts):
        try:
            return fn()
        except AuthFailure:
            raise
        except Exception as exc:  # noqa: BLE001 - classify decides
            retryable, retry_after = classify(exc)
            if not retryable:
                raise
            if attempt == policy.attempts - 1:
                raise GiveUp(f"gave up after {policy.attempts} attempts: {exc!r}"[:300]) from exc
            pause = policy.delay(attempt, retry_after)
            if on_retry:
                on_retry(exc, pause)
            time.sleep(pause)
    raise AssertionError("unreachable")


class TokenBucket:
    """Quota units per second with a one-second burst; thread-safe."""

    def __init__(self, units_per_second: float | None):
        self.rate = units_per_second
        self.capacity = units_per_second or 0.0
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def acquire(self, units: float) -> None:
        if not self.rate:
            return
        units = min(units, self.capacity)
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= units:
                    self.tokens -= units
                    return
                wait = (units - self.tokens) / self.rate
            time.sleep(wait)
