"""What every connector stream returns, whatever the provider."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# progress(done, total): called as work lands; total may be unknown (None).
ProgressFn = Callable[[int, int | None], None]


@dataclass
class SyncResult:
    mode: str  # full | incremental | resync | import
    landed: int = 0
    deleted: int = 0
    blocked: int = 0
    quarantined: int = 0
    provider_total: int | None = None
    cursor: dict[str, Any] | None = None
    retries: int = 0
    aliases: list[str] | None = None  # discovered send-as addresses, if the provider has them
