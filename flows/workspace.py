"""The workspace's own state: members, accounts, blocklists, settings, credentials.

Everything lives under one home folder (DESIGN §1):
  state/workspace.json          members, accounts, blocklists, settings (no secrets)
  state/credentials/<id>.json   refresh tokens and client secrets, mode 0600
  state/cursors/<id>/<stream>.json
JSON files are replaced atomically (write temp, fsync, rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connectors.lake import fsync_dir

SHARING_LEVELS = ("metadata", "subject", "full")


class WorkspaceError(Exception):
    """A user-facing problem with workspace state or input (one clear line, exit code 2)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None) -> str | None:
    return ts.astimezone(UTC).isoformat() if ts else None


def stable_id(prefix: str, *parts: str) -> str:
    """Short deterministic id: the same inputs give the same id on every machine."""
    digest = hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:12]
    return f"{prefix}_{digest}"


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any, mode: int = 0o644) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode(), mode)


@dataclass
class Member:
    member_id: str
    email: str
    name: str


@dataclass
class Account:
    account_id: str
    member_id: str
    provider: str  # google | microsoft | file
    email: str
    aliases: list[str] = field(default_factory=list)
    status: str = "active"  # active | disconnected | removed
    status_reason: str | None = None
    default_sharing: str = "metadata"
    grants: list[str] = field(default_factory=list)  # member emails with full access
    connected_at: str | None = None
    removed_at: str | None = None
    last_synced_at: str | None = None
    last_error: str | None = None
    sync_bodies: bool = True
    # Endpoints: production defaults, simulators in tests and the demo.
    api_endpoint: str | None = None
    token_uri: str | None = None
    authority: str | None = None
    graph_endpoint: str | None = None
    tenant: str | None = None

    @property
    def addresses(self) -> list[str]:
        return [self.email, *self.aliases]


@dataclass
class BlocklistEntry:
    account_id: str
    entry: str
    kind: str  # address | domain
    added_at: str


@dataclass
class Workspace:
    members: list[Member] = field(default_factory=list)
    accounts: list[Account] = field(default_factory=list)
    blocklist: list[BlocklistEntry] = field(default_factory=list)
    # Each toggle of enhanced record creation: {"enabled": bool, "at": iso}.
    enhanced_record_creation: list[dict[str, Any]] = field(default_factory=list)
    extra_free_mail_domains: list[str] = field(default_factory=list)
    # extra domain -> the registrable domain of the company it joins (configuration only)
    company_domains: dict[str, str] = field(default_factory=dict)
    exclude_list_mail: bool = True
    automated_senders_pattern: str | None = None  # regex on the local part; None = default
    # account_id -> blocklist fingerprint last applied to the lake (retroactive purge)
    purged_blocklists: dict[str, str] = field(default_factory=dict)
    # account ids whose blocked markers must be re-fetched (an entry was removed)
    refetch_blocked: list[str] = field(default_factory=list)

    # ------------------------------------------------------------ lookups
    def account_by_email(self, email: str) -> Account:
        email = email.strip().lower()
        for acc in self.accounts:
            if acc.email == email and acc.status != "removed":
                return acc
        raise WorkspaceError(f"no account {email!r}; see `rapport accounts list`")

    def member(self, member_id: str) -> Member:
        for m in self.members:
            if m.member_id == member_id:
                return m
        raise WorkspaceError(f"no member {member_id!r}")

    def active_accounts(self) -> list[Account]:
        return [a for a in self.accounts if a.status != "removed"]

    def member_addresses(self) -> dict[str, list[str]]:
        """member_id -> every address and alias of every live account of that member."""
        out: dict[str, list[str]] = {m.member_id: [m.email] for m in self.members}
        for acc in self.active_accounts():
            out.setdefault(acc.member_id, []).extend(acc.addresses)
        return {k: sorted(set(v)) for k, v in out.items()}

    def blocklist_for(self, account_id: str) -> list[BlocklistEntry]:
        return [b for b in self.blocklist if b.account_id == account_id]

    def blocklist_fingerprint(self, account_id: str) -> str:
        entries = sorted(f"{b.kind}:{b.entry}" for b in self.blocklist_for(account_id))
        return hashlib.sha1("\n".join(entries).encode()).hexdigest()

    def erc_enabled(self) -> bool:
        toggles = self.enhanced_record_creation
        return bool(toggles[-1]["enabled"]) if toggles else True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Workspace:
        return cls(
            members=[Member(**m) for m in data.get("members", [])],
            accounts=[Account(**a) for a in data.get("accounts", [])],
            blocklist=[BlocklistEntry(**b) for b in data.get("blocklist", [])],
            enhanced_record_creation=list(data.get("enhanced_record_creation", [])),
            extra_free_mail_domains=list(data.get("extra_free_mail_domains", [])),
            company_domains=dict(data.get("company_domains", {})),
            exclude_list_mail=bool(data.get("exclude_list_mail", True)),
            automated_senders_pattern=data.get("automated_senders_pattern"),
            purged_blocklists=dict(data.get("purged_blocklists", {})),
            refetch_blocked=list(data.get("refetch_blocked", [])),
        )


class Home:
    """Paths under the data home, and the load/save of workspace state."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().resolve()

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def workspace_file(self) -> Path:
        return self.state / "workspace.json"

    def ensure(self) -> None:
        for p in (self.lake, self.state, self.state / "credentials", self.state / "cursors"):
            p.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state / "credentials", 0o700)

    # ------------------------------------------------------------ workspace
    def load(self) -> Workspace:
        if not self.workspace_file.exists():
            return Workspace()
        try:
            return Workspace.from_json(json.loads(self.workspace_file.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            msg = f"{self.workspace_file} is not valid workspace state: {exc}"
            raise WorkspaceError(msg) from None

    def save(self, ws: Workspace) -> None:
        self.ensure()
        atomic_write_json(self.workspace_file, ws.to_json())

    @contextlib.contextmanager
    def editing(self) -> Iterator[Workspace]:
        """Load, let the caller change, save: under a lock so CLI edits don't race."""
        self.ensure()
        with self.lock("workspace", timeout_s=30):
            ws = self.load()
            yield ws
            self.save(ws)

    # ------------------------------------------------------------ credentials
    def credential_path(self, account_id: str) -> Path:
        return self.state / "credentials" / f"{account_id}.json"

    def save_credentials(self, account_id: str, secrets: dict[str, str]) -> None:
        self.ensure()
        atomic_write_json(self.credential_path(account_id), secrets, mode=0o600)

    def load_credentials(self, account_id: str) -> dict[str, str]:
        path = self.credential_path(account_id)
        if not path.exists():
            raise WorkspaceError(f"no stored credentials for account {account_id}")
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)  # repair loose permissions rather than leak
        return json.loads(path.read_text())

    def delete_credentials(self, account_id: str) -> None:
        self.credential_path(account_id).unlink(missing_ok=True)

    # ------------------------------------------------------------ cursors
    def cursor_path(self, account_id: str, stream: str) -> Path:
        return self.state / "cursors" / account_id / f"{stream}.json"

    def load_cursor(self, account_id: str, stream: str) -> dict[str, Any] | None:
        path = self.cursor_path(account_id, stream)
        return json.loads(path.read_text()) if path.exists() else None

    def save_cursor(self, account_id: str, stream: str, cursor: dict[str, Any]) -> None:
        atomic_write_json(self.cursor_path(account_id, stream), cursor)

    def delete_cursors(self, account_id: str) -> None:
        folder = self.state / "cursors" / account_id
        if folder.exists():
            for p in folder.iterdir():
                p.unlink()
            folder.rmdir()

    # ------------------------------------------------------------ locking
    @contextlib.contextmanager
    def lock(self, name: str, timeout_s: float = 0.0) -> Iterator[None]:
        """An exclusive advisory lock; raise WorkspaceError after `timeout_s`."""
        self.state.mkdir(parents=True, exist_ok=True)
        path = self.state / f"{name}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise WorkspaceError(
                            f"another Rapport process holds the {name} lock ({path}); "
                            "try again when it finishes"
                        ) from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)


def new_member(email: str, name: str | None = None) -> Member:
    email = email.strip().lower()
    default = email.split("@")[0].replace(".", " ").title()
    return Member(member_id=stable_id("mem", email), email=email, name=name or default)


def account_id_for(provider: str, email: str) -> str:
    return stable_id("acc", provider, email.strip().lower())
