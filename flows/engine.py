"""The work behind the flows, as plain functions (the Prefect layer only orchestrates).

extract_stream(): one account's one stream, lake + cursor.
build_and_publish(): lake -> transforms -> quality gate -> atomic publish.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from connectors.mailparse import Blocklist
from connectors.retry import AuthFailure, RetryPolicy
from flows.workspace import Account, Home, Workspace, WorkspaceError, iso, utcnow
from transforms.pipeline import WorkspaceFrames, build, normalise_blocklist

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger("rapport")
TS = pl.Datetime("us", "UTC")

STREAMS_BY_PROVIDER = {
    "google": ["gmail", "gcalendar"],
    "microsoft": ["outlook_mail", "outlook_calendar"],
    "file": [],  # files land through `rapport import`, not through sync
}

# The CLI sets this to drive a terminal progress bar: (account_id, stream, done, total).
PROGRESS_HOOK: Callable[[str, str, int, int | None], None] | None = None


@dataclass
class StreamResult:
    account_id: str
    stream: str
    status: str  # ok | disconnected | error | skipped
    mode: str | None = None
    landed: int = 0
    deleted: int = 0
    blocked: int = 0
    quarantined: int = 0
    provider_total: int | None = None
    retries: int = 0
    error: str | None = None
    seconds: float = 0.0
    aliases: list[str] | None = None


def retry_policy() -> RetryPolicy:
    # Tests shorten backoff through the environment; production keeps the defaults.
    base = float(os.environ.get("RAPPORT_RETRY_BASE_S", "0.5"))
    return RetryPolicy(base_s=base, cap_s=max(base * 16, 1.0))


def extract_stream(
    home: Home,
    account_id: str,
    stream: str,
    progress: Callable[[int, int | None], None] | None = None,
) -> StreamResult:
    """Land one account's stream; the cursor moves only after the data is durable."""
    started = time.monotonic()
    task_progress = progress

    def progress(done: int, total: int | None) -> None:
        if task_progress:
            task_progress(done, total)
        if PROGRESS_HOOK:
            PROGRESS_HOOK(account_id, stream, done, total)

    ws = home.load()
    account = next((a for a in ws.accounts if a.account_id == account_id), None)
    if account is None or account.status == "removed":
        return StreamResult(account_id, stream, status="skipped", error="account not found")
    result = StreamResult(account_id, stream, status="ok")
    try:
        secrets = home.load_credentials(account_id)
        blocklist = Blocklist((b.entry, b.kind) for b in ws.blocklist_for(account_id))
        cursor = home.load_cursor(account_id, stream)
        refetch: list[str] = []
        if account_id in ws.refetch_blocked and stream == "gmail":
            from connectors.purge import blocked_marker_ids

            refetch = blocked_marker_ids(home.lake, account_id)
        out = run_stream(home, account, stream, secrets, blocklist, cursor, refetch, progress)
        if account_id in ws.refetch_blocked and stream == "gmail":
            with home.editing() as live:
                live.refetch_blocked = [a for a in live.refetch_blocked if a != account_id]
        if out.cursor is not None:
            home.save_cursor(account_id, stream, {**out.cursor, "saved_at": iso(utcnow())})
        result.mode = out.mode
        result.landed, result.deleted = out.landed, out.deleted
        result.blocked, result.quarantined = out.blocked, out.quarantined
        result.provider_total, result.retries = out.provider_total, out.retries
        result.aliases = out.aliases
    except AuthFailure as exc:
        result.status, result.error = "disconnected", f"auth failed: {exc}"
    except Exception as exc:  # noqa: BLE001 - one account's failure must not stop the others
        result.status, result.error = "error", f"{type(exc).__name__}: {str(exc)[:300]}"
        log.warning("extract %s/%s failed: %s", account_id, stream, result.error)
    result.seconds = round(time.monotonic() - started, 3)
    return result


COMPACT_AFTER_FILES = 200  # per account; a sync every 10 minutes reaches it in about a day


def compact_lake(home: Home, min_files: int = COMPACT_AFTER_FILES) -> dict[str, int]:
    """Fold accounts' small delta files into current-state files (under the writer lock)."""
    from connectors.compact import compact_account, file_count

    done: dict[str, int] = {}
    for acc in home.load().active_accounts():
        if file_count(home.lake, acc.account_id) > min_files:
            kept = compact_account(home.lake, acc.account_id)
            done[acc.account_id] = sum(kept.values())
    return done


def apply_blocklist_changes(home: Home) -> dict[str, int]:
    """Purge newly blocked content from the lake (retroactive blocklists, DESIGN §4.2).

    Runs first in every writer, so it also finishes a compaction a crash interrupted.
    """
    from connectors.compact import finish_pending
    from connectors.purge import purge_blocklisted

    finish_pending(home.lake)
    purged: dict[str, int] = {}
    ws = home.load()
    for acc in ws.active_accounts():
        fingerprint = ws.blocklist_fingerprint(acc.account_id)
        if ws.purged_blocklists.get(acc.account_id) == fingerprint:
            continue
        entries = normalise_blocklist(
            pl.DataFrame(
                [
                    {"account_id": b.account_id, "entry": b.entry, "kind": b.kind}
                    for b in ws.blocklist_for(acc.account_id)
                ],
                schema={"account_id": pl.String, "entry": pl.String, "kind": pl.String},
            )
        )
        purged[acc.account_id] = purge_blocklisted(home.lake, acc.account_id, entries)
        with home.editing() as live:
            live.purged_blocklists[acc.account_id] = fingerprint
    return purged


def backfill_stream(
    home: Home,
    account_id: str,
    stream: str,
    since: datetime | None,
    until: datetime | None,
    refetch_all: bool,
    progress: Callable[[int, int | None], None] | None = None,
) -> StreamResult:
    """Re-fetch history for one stream without touching its incremental cursor."""
    started = time.monotonic()
    ws = home.load()
    account = next(a for a in ws.accounts if a.account_id == account_id)
    result = StreamResult(account_id, stream, status="ok", mode="backfill")

    def report(done: int, total: int | None) -> None:
        if progress:
            progress(done, total)
        if PROGRESS_HOOK:
            PROGRESS_HOOK(account_id, f"{stream} backfill", done, total)

    try:
        secrets = home.load_credentials(account_id)
        blocklist = Blocklist((b.entry, b.kind) for b in ws.blocklist_for(account_id))
        if stream == "gmail":
            from connectors.gmail import GmailSync

            out = GmailSync(
                lake_dir=home.lake,
                account_id=account_id,
                secrets=secrets,
                settings=google_settings(account),
                blocklist=blocklist,
                progress=report,
            ).backfill(since, until, refetch_all)
        else:
            # Delta APIs have no date-range listing: a full listing whose new cursor is
            # thrown away re-lands everything (deduplicated downstream by id + version).
            out = run_stream(home, account, stream, secrets, blocklist, None, [], report)
            out.cursor = None
        result.landed, result.deleted = out.landed, out.deleted
        result.blocked, result.quarantined = out.blocked, out.quarantined
        result.provider_total, result.retries = out.provider_total, out.retries
    except AuthFailure as exc:
        result.status, result.error = "disconnected", f"auth failed: {exc}"
    except Exception as exc:  # noqa: BLE001 - report per stream, keep the others going
        result.status, result.error = "error", f"{type(exc).__name__}: {str(exc)[:300]}"
    result.seconds = round(time.monotonic() - started, 3)
    return result


def remove_account_data(home: Home, email: str) -> str:
    """Purge an account's mail and events and forget its secrets; records stay."""
    from connectors import lake as lake_mod

    with home.editing() as ws:
        acc = ws.account_by_email(email)
        acc.status, acc.removed_at = "removed", iso(utcnow())
        acc.status_reason = None
        ws.blocklist = [b for b in ws.blocklist if b.account_id != acc.account_id]
        ws.purged_blocklists.pop(acc.account_id, None)
        ws.refetch_blocked = [a for a in ws.refetch_blocked if a != acc.account_id]
    lake_mod.purge_account(home.lake, acc.account_id)
    home.delete_cursors(acc.account_id)
    home.delete_credentials(acc.account_id)
    return acc.account_id


def google_settings(account: Account) -> Any:
    """Gmail/Calendar client settings for an account (endpoints, quota, retries)."""
    from connectors.gmail import GmailSettings

    return GmailSettings(
        api_endpoint=account.api_endpoint or GmailSettings.api_endpoint,
        token_uri=account.token_uri or GmailSettings.token_uri,
        sync_bodies=account.sync_bodies,
        retry=retry_policy(),
        quota_units_per_second=float(os.environ.get("RAPPORT_GMAIL_QUOTA", "250")),
    )


def run_stream(
    home: Home,
    account: Account,
    stream: str,
    secrets: dict[str, str],
    blocklist: Blocklist,
    cursor: dict[str, Any] | None,
    refetch: list[str],
    progress: Callable[[int, int | None], None],
) -> Any:
    """Dispatch one stream to its connector (each module is imported only when used)."""
    lake_dir, account_id = home.lake, account.account_id
    if stream in ("gmail", "gcalendar"):
        settings = google_settings(account)
        if stream == "gmail":
            from connectors.gmail import GmailSync

            return GmailSync(
                lake_dir=lake_dir,
                account_id=account_id,
                secrets=secrets,
                settings=settings,
                blocklist=blocklist,
                progress=progress,
            ).run(cursor, refetch=refetch)
        from connectors.gcalendar import CalendarSync

        return CalendarSync(
            lake_dir=lake_dir,
            account_id=account_id,
            secrets=secrets,
            settings=settings,
            blocklist=blocklist,
            progress=progress,
        ).run(cursor)
    if stream in ("outlook_mail", "outlook_calendar"):
        from connectors.graph import GraphCalendarSync, GraphMailSync, GraphSettings

        authority = account.authority or (
            f"https://login.microsoftonline.com/{account.tenant or 'common'}"
        )
        gsettings = GraphSettings(
            authority=authority,
            graph_endpoint=account.graph_endpoint or GraphSettings.graph_endpoint,
            retry=retry_policy(),
            sync_bodies=account.sync_bodies,
        )
        cls = GraphMailSync if stream == "outlook_mail" else GraphCalendarSync
        return cls(
            lake_dir=lake_dir,
            account_id=account_id,
            secrets=secrets,
            settings=gsettings,
            blocklist=blocklist,
            progress=progress,
        ).run(cursor)
    raise WorkspaceError(f"stream {stream!r} is not supported")


def record_stream_results(home: Home, results: list[StreamResult]) -> None:
    """Write per-account status back to the workspace (disconnected, last error, last sync)."""
    now = iso(utcnow())
    with home.editing() as ws:
        for res in results:
            for acc in ws.accounts:
                if acc.account_id != res.account_id:
                    continue
                if res.status == "ok":
                    acc.last_synced_at = now
                    if res.aliases:
                        extra = {a.lower() for a in res.aliases} - {acc.email}
                        acc.aliases = sorted(set(acc.aliases) | extra)
                    acc.last_error = None
                    if acc.status == "disconnected":
                        acc.status, acc.status_reason = "active", None
                elif res.status == "disconnected":
                    acc.status, acc.status_reason = "disconnected", res.error
                    acc.last_error = res.error
                elif res.status == "error":
                    acc.last_error = res.error


# ---------------------------------------------------------------- frames
def workspace_frames(ws: Workspace, as_of: datetime) -> WorkspaceFrames:
    live = [a for a in ws.accounts if a.status != "removed"]
    members = pl.DataFrame(
        [{"member_id": m.member_id, "email": m.email, "name": m.name} for m in ws.members],
        schema={"member_id": pl.String, "email": pl.String, "name": pl.String},
    )
    member_addr = ws.member_addresses()
    addr_rows = [
        {"account_id": a.account_id, "member_id": a.member_id, "address": addr}
        for a in live
        for addr in member_addr.get(a.member_id, a.addresses)
    ]
    return WorkspaceFrames(
        members=members,
        accounts=accounts_frame(ws.accounts),
        account_addresses=pl.DataFrame(
            addr_rows,
            schema={"account_id": pl.String, "member_id": pl.String, "address": pl.String},
        ),
        blocklist=blocklist_frame(ws),
        erc_toggles=pl.DataFrame(
            [{"enabled": t["enabled"], "at": _ts(t["at"])} for t in ws.enhanced_record_creation],
            schema={"enabled": pl.Boolean, "at": TS},
        ),
        as_of=as_of,
        extra_free_mail=list(ws.extra_free_mail_domains),
        extra_company_domains=dict(ws.company_domains),
        exclude_list_mail=ws.exclude_list_mail,
        automated_pattern=ws.automated_senders_pattern,
    )


def blocklist_frame(ws: Workspace) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "account_id": b.account_id,
                "entry": b.entry,
                "kind": b.kind,
                "added_at": _ts(b.added_at),
            }
            for b in ws.blocklist
        ],
        schema={"account_id": pl.String, "entry": pl.String, "kind": pl.String, "added_at": TS},
    )


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value).astimezone(UTC) if value else None


def accounts_frame(accounts: list[Account]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "account_id": a.account_id,
                "member_id": a.member_id,
                "provider": a.provider,
                "email": a.email,
                "aliases": a.aliases,
                "status": a.status,
                "default_sharing": a.default_sharing,
                "connected_at": _ts(a.connected_at),
                "removed_at": _ts(a.removed_at),
                "last_synced_at": _ts(a.last_synced_at),
            }
            for a in accounts
        ],
        schema={
            "account_id": pl.String,
            "member_id": pl.String,
            "provider": pl.String,
            "email": pl.String,
            "aliases": pl.List(pl.String),
            "status": pl.String,
            "default_sharing": pl.String,
            "connected_at": TS,
            "removed_at": TS,
            "last_synced_at": TS,
        },
    )


# ---------------------------------------------------------------- runs log
SYNC_RUN_SCHEMA = {
    "run_id": pl.String,
    "started_at": TS,
    "finished_at": TS,
    "status": pl.String,
    "accounts": pl.String,
    "rows_landed": pl.Int64,
    "rows_published": pl.Int64,
    "expectation_results": pl.String,
}


def append_run(home: Home, run: dict[str, Any], durable: bool = True) -> Path:
    """The run log lives in state/ so failed runs are kept without touching the warehouse.
    `durable=False` leaves the fsync of the log (returned) to the caller."""
    home.ensure()
    path = home.state / "sync_runs.jsonl"
    with open(path, "a") as fh:
        fh.write(json.dumps(run, sort_keys=True, default=str) + "\n")
        fh.flush()
        if durable:
            os.fsync(fh.fileno())
    return path


def load_runs(home: Home) -> pl.DataFrame:
    path = home.state / "sync_runs.jsonl"
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                r["started_at"] = _ts(r.get("started_at"))
                r["finished_at"] = _ts(r.get("finished_at"))
                rows.append({k: r.get(k) for k in SYNC_RUN_SCHEMA})
    return pl.DataFrame(rows, schema=SYNC_RUN_SCHEMA)


# ---------------------------------------------------------------- build
@dataclass
class PublishResult:
    run_id: str
    status: str  # published | failed_expectations | failed
    rows_published: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    mode: str = "full"  # full | incremental
    fallback_reason: str | None = None  # why a run was not incremental


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def build_and_publish(
    home: Home,
    run_id: str,
    as_of: datetime,
    stream_results: list[StreamResult],
    started_at: datetime,
    validate: bool = True,
    incremental: bool = True,
) -> PublishResult:
    """Build, gate and publish: incrementally when the delta allows, else in full."""
    wait_for_removals()  # (a run starts once the last one's removals are done)
    with contextlib.ExitStack() as engine:
        result = _build_and_publish(
            home, run_id, as_of, stream_results, started_at, validate, incremental, engine
        )
    # What an incremental publish replaced (the last state files, no longer mapped by the
    # run's frames, freed on return; the last journal) is removed in a thread: freeing
    # their pages (~30 ms at 1M) need not hold up the run.
    removal = threading.Thread(target=remove_retired, args=(home.warehouse,), name="retired")
    removal.start()
    _removals.append(removal)
    return result


_removals: list[threading.Thread] = []


def wait_for_removals() -> None:
    """Wait for the removals publishes left running (before copying a home, say)."""
    while _removals:
        _removals.pop().join()


def remove_retired(warehouse: Path) -> None:
    """Remove the state generations and journals a publish retired."""
    from warehouse.standby import remove_retired_journals
    from warehouse.state import remove_retired as remove_retired_state

    remove_retired_state(warehouse)
    remove_retired_journals(warehouse)


def _build_and_publish(
    home: Home,
    run_id: str,
    as_of: datetime,
    stream_results: list[StreamResult],
    started_at: datetime,
    validate: bool,
    incremental: bool,
    engine: contextlib.ExitStack,
) -> PublishResult:
    """build_and_publish; `engine` holds Polars' engine for the run's queries: in-memory
    while the run may be incremental (its small queries, reading the workspace and the
    state, writing), the default again once it is a full build."""
    from expectations.suites import prepare_gate, run_gate
    from transforms.incremental import fingerprint

    # The gate's GX objects are set up in a thread while the run builds.
    gate_setup = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gate-setup")
    prepared = gate_setup.submit(prepare_gate) if validate else None
    gate_setup.shutdown(wait=False)

    full_build_reason = _full_build_reason(home, incremental)
    live = None
    if full_build_reason is None:
        engine.enter_context(small_queries())
        # The live file is opened meanwhile (~0.01-0.02 s, most of it DuckDB starting a
        # database, off the GIL): an incremental run's questions and state are read there.
        from warehouse.delta import open_live

        opening = ThreadPoolExecutor(max_workers=1, thread_name_prefix="open-live")
        live = opening.submit(open_live, home.warehouse)
        opening.shutdown(wait=False)

    ws = home.load()
    frames = workspace_frames(ws, as_of)
    # The member address sets too (small frames, but ~0.02-0.03 s of fixed cost), while
    # the run starts reading: the build asks for them once its messages are read.
    internal_sets = ThreadPoolExecutor(max_workers=1, thread_name_prefix="internal-sets")
    internal_sets.submit(lambda: frames.internal)
    internal_sets.shutdown(wait=False)
    fp = fingerprint(frames)
    whole = workspace_tables(ws)

    def build_row(mode: str) -> pl.DataFrame:
        return pl.DataFrame(
            {"as_of": [as_of], "fingerprint": [fp], "mode": [mode]},
            schema={"as_of": TS, "fingerprint": pl.String, "mode": pl.String},
        )

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    delta = full_build_reason or _stage_delta(
        home, frames, fp, run_id, {**whole, "_rapport_build": build_row("incremental")}, live
    )
    if isinstance(delta, str):
        from warehouse.publish import FileWriter

        engine.close()  # (millions of rows: the default engine)

        # The new file is written while the build goes on, at the lowest priority: mostly
        # from the CPU time the build leaves unused (1M: publish after the gate 1.95 ->
        # 0.9-1.5 s, build +0.25-0.5 s, peak RSS +0.45 GiB; at normal priority the build
        # stretched more than the publish shrank).
        writer: Any = FileWriter(home.warehouse, run_id).open(in_background=True)
        try:
            stage = _stage_full(home, frames, writer.add)
        except BaseException:
            writer.discard()
            raise
        mode, reason = "full", delta
        staged_tables, stats = stage.tables, stage.stats
        steps, gate_tables = stage.timings, stage.tables
    else:
        mode, reason = "incremental", None
        staged_tables, stats = {}, delta.staged.stats
        steps, gate_tables = delta.staged.timings, delta.staged.gate_tables
    timings["transform_s"] = round(time.perf_counter() - t0, 3)
    timings.update({f"transform.{step}": sec for step, sec in steps.items()})
    log.info("build mode %s%s", mode, f" ({reason})" if reason else "")
    whole["_rapport_build"] = build_row(mode)
    run_row: dict[str, Any] = {
        "run_id": run_id,
        "started_at": iso(started_at),
        "accounts": json.dumps([asdict(r) for r in stream_results], default=str),
        "rows_landed": sum(r.landed + r.deleted + r.blocked for r in stream_results),
    }
    result = PublishResult(
        run_id=run_id, status="published", stats=stats, mode=mode, fallback_reason=reason
    )
    gate_summary: list[dict[str, Any]] = []
    # A run's writes go on in a writer's thread while the gate runs (DuckDB releases the
    # GIL): a full run's new file (its biggest tables already started during the build),
    # an incremental run's copy of the live one. Either is swapped in only if the gate
    # passes.
    if isinstance(delta, str):
        tables = {**staged_tables, **whole}
        t0 = time.perf_counter()
        writer.add({name: frame for name, frame in tables.items() if name not in writer.added})
        timings["publish_start_s"] = round(time.perf_counter() - t0, 3)
    else:
        writer = delta
    if validate:
        t0 = time.perf_counter()
        internal, _ = frames.internal
        try:
            gate = run_gate(
                gate_tables,
                normalise_blocklist(frames.blocklist),
                internal,
                as_of,
                prepared.result() if prepared is not None else None,
            )
        except BaseException:
            writer.discard()
            raise
        timings["validate_s"] = round(time.perf_counter() - t0, 3)
        gate_summary = gate.results
        if not gate.success:
            writer.discard()
            result.status, result.failures = "failed_expectations", gate.failures()
            append_run(
                home,
                {
                    **run_row,
                    "finished_at": iso(utcnow()),
                    "status": result.status,
                    "rows_published": 0,
                    "expectation_results": json.dumps(gate_summary),
                },
            )
            result.timings = timings
            return result
    run_row.update(
        status="published", finished_at=iso(utcnow()), expectation_results=json.dumps(gate_summary)
    )
    t0 = time.perf_counter()
    if isinstance(delta, str):
        published_rows = sum(f.height for f in tables.values())
        run_row["rows_published"] = published_rows
        try:
            append_run(home, run_row)
            sync_runs = load_runs(home)
        except BaseException:
            writer.discard()
            raise
        writer.to_foreground()  # (the gate too ran first: only the publish is left)
        writer.finish(sync_runs)
    else:
        published_rows = delta.row_count()
        run_row["rows_published"] = published_rows
        delta.finish(home, run_row)
        # (the file the run wrote into: the standby brought up to date, or a copy)
        result.stats["published_from_standby"] = int(delta.writer.source == "standby")
    timings["publish_s"] = round(time.perf_counter() - t0, 3)
    result.rows_published = published_rows
    result.timings = timings
    return result


def _stage_full(
    home: Home, frames: WorkspaceFrames, sink: Callable[[dict[str, pl.DataFrame]], object]
) -> Any:
    from warehouse.publish import read_previous

    previous = read_previous(home.warehouse, ("people", "companies", "person_merges"))
    return build(
        home.lake,
        frames,
        previous_people=previous["people"],
        previous_companies=previous["companies"],
        previous_merges=previous["person_merges"],
        sink=sink,
    )


@dataclass
class _DeltaRun:
    """A staged incremental run and the writer of the warehouse copy it goes into."""

    staged: Any
    writer: Any  # warehouse.delta.DeltaWriter

    def row_count(self) -> int:
        upserts = [u.rows for u in self.staged.upsert.values()]
        frames = [*upserts, *self.staged.append.values()]
        return sum(f.height for f in frames)

    def finish(self, home: Home, run_row: dict[str, Any]) -> None:
        """Log the run, add the run log to the file, commit and swap the copy in. The log
        line is fsynced while the writer commits: durable before the swap all the same
        (the fsync, 10-40 ms, commits the file system's journal; 1M, 12 alternating pairs:
        -22 ms, 7 of 11 faster)."""
        from connectors.lake import fsync_path

        try:
            log = append_run(home, run_row, durable=False)
            self.writer.replace({"sync_runs": load_runs(home)})
            self.writer.finish(meanwhile=lambda: fsync_path(log))
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        self.writer.discard()


def _full_build_reason(home: Home, incremental: bool) -> str | None:
    """Why this run is a full build before anything is read, or None."""
    if not incremental:
        return "incremental off"
    if os.environ.get("RAPPORT_INCREMENTAL", "1") == "0":
        return "RAPPORT_INCREMENTAL=0"
    if not home.warehouse.exists():
        return "no published warehouse yet"
    return None


def _stage_delta(
    home: Home,
    frames: WorkspaceFrames,
    fp: str,
    run_id: str,
    whole: dict[str, pl.DataFrame] | None = None,
    live_opening: Future[duckdb.DuckDBPyConnection] | None = None,
) -> _DeltaRun | str:
    """Stage an incremental run, or return why this run needs the full build.

    `whole`: the small tables every run writes whole; the writer starts on them.
    `live_opening`: the live file's read-only connection, being opened.
    """
    if (reason := _full_build_reason(home, incremental=True)) is not None:
        if live_opening is not None:
            live_opening.result().close()
        return reason
    from transforms.incremental import METRIC_TABLES, Fallback, build_delta
    from transforms.pipeline import lake_file_id, lake_files
    from warehouse.delta import DeltaWriter, DuckLookup, open_live, read_state
    from warehouse.publish import building_path
    from warehouse.state import read_sole_generation

    # The writer copies the live file in its thread (the kernel copies, off the GIL) and
    # writes the run into the copy as the build hands rows over; meanwhile the live file,
    # read-only, answers the build's questions.
    tmp = building_path(home.warehouse, run_id)  # (clears a crashed run's leftovers first)
    # (the tables the run replaces whole: `whole` below, and the run log at the end)
    writer = DeltaWriter(
        home.warehouse, tmp, rewritten=[*(whole or {}), "sync_runs"], late=METRIC_TABLES
    )
    live = None
    try:
        # The lake's files are listed while the live file opens (the run waits for it).
        current = lake_files(home.lake, frames)
        ids = {f: lake_file_id(home.lake, f) for files in current.values() for f in files}
        # The state too: the only generation there usually is, checked against the file's
        # build row (1M: -21 and +8 ms in two batches of 11 pairs, 15 of 22 faster).
        ahead = read_sole_generation(home.warehouse)
        live = live_opening.result() if live_opening is not None else open_live(home.warehouse)
        state = read_state(live, home.warehouse, ahead)
        if state is None:
            raise Fallback("the warehouse holds no build state")
        previous, seen = state
        writer.state.start_from(previous.tables, previous.state)
        if previous.fingerprint != fp:
            raise Fallback("settings, accounts or blocklist changed")
        if not seen <= set(ids.values()):
            raise Fallback("lake files were rewritten (compaction or purge)")
        new = {t: [f for f in files if ids[f] not in seen] for t, files in current.items()}
        new_ids = [ids[f] for files in new.values() for f in files]
        writer.replace(whole or {})
        writer.append(
            {"_rapport_lake_files": pl.DataFrame({"path": new_ids}, {"path": pl.String})}, {}
        )
        known = {t: [f for f in files if ids[f] in seen] for t, files in current.items()}
        with small_queries():
            staged = build_delta(frames, previous, new, DuckLookup(live), writer, known)
        threading.Thread(target=live.close).start()  # (0.015 s at 1M: off the run's path)
        return _DeltaRun(staged, writer)
    except Fallback as why:
        reason = str(why)
    except Exception as exc:  # the full build is the reference: a sync still completes
        log.warning("incremental build failed, building in full", exc_info=True)
        reason = f"incremental build failed ({type(exc).__name__}: {exc})"
    if live is None and live_opening is not None and live_opening.exception() is None:
        live = live_opening.result()  # (the run stopped before it waited for the file)
    if live is not None:
        live.close()
    writer.discard()
    return reason


def small_queries() -> contextlib.AbstractContextManager[Any]:
    """Polars' in-memory engine for a run of many small queries (an incremental build
    makes ~720, median 0.1 ms): its default, the streaming engine, costs more to start per
    query (new-mail run at 1M 0.52/0.45 s -> 0.47/0.44 s, medians of 5), while it is the
    faster one on the full build's millions of rows (in-memory: +0.2-0.4 s, +0.2 GiB)."""
    return pl.Config(engine_affinity="in-memory")


def workspace_tables(ws: Workspace) -> dict[str, pl.DataFrame]:
    members = pl.DataFrame(
        [{"member_id": m.member_id, "email": m.email, "name": m.name} for m in ws.members],
        schema={"member_id": pl.String, "email": pl.String, "name": pl.String},
    )
    blocklist = blocklist_frame(ws)
    grants = pl.DataFrame(
        [{"account_id": a.account_id, "member_email": g} for a in ws.accounts for g in a.grants],
        schema={"account_id": pl.String, "member_email": pl.String},
    )
    return {
        "members": members,
        "accounts": accounts_frame(ws.accounts),
        "blocklist": blocklist,
        "sharing_grants": grants,
    }
