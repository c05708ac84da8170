"""Prefect flows. Tasks are coarse: one per account and stream, one for the publish."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task, unmapped

from flows.engine import (
    STREAMS_BY_PROVIDER,
    StreamResult,
    apply_blocklist_changes,
    backfill_stream,
    build_and_publish,
    compact_lake,
    extract_stream,
    new_run_id,
    record_stream_results,
    remove_account_data,
)
from flows.workspace import Home, WorkspaceError


@task(name="extract-account-stream", task_run_name="extract-{account_id}-{stream}")
def extract_account_stream(home: str, account_id: str, stream: str) -> dict[str, Any]:
    logger = get_run_logger()
    last = {"pct": -10}

    def progress(done: int, total: int | None) -> None:
        if total:
            pct = int(100 * done / total)
            if pct >= last["pct"] + 10 or done == total:
                last["pct"] = pct
                logger.info("%s/%s: %d/%d messages", account_id, stream, done, total)

    result = extract_stream(Home(home), account_id, stream, progress)
    logger.info("%s/%s: %s", account_id, stream, result.status)
    return asdict(result)


@task(name="transform-validate-publish")
def transform_validate_publish(
    home: str, run_id: str, as_of: str, stream_results: list[dict[str, Any]], started_at: str
) -> dict[str, Any]:
    results = [StreamResult(**r) for r in stream_results]
    out = build_and_publish(
        Home(home),
        run_id,
        datetime.fromisoformat(as_of),
        results,
        datetime.fromisoformat(started_at),
    )
    if out.status != "published":
        failed = ", ".join(f"{f['table']}.{f['expectation']}" for f in out.failures)
        raise RuntimeError(f"quality gate failed ({failed}); the warehouse was not changed")
    return asdict(out)


def parse_as_of(as_of: str | None) -> datetime:
    if not as_of:
        return datetime.now(UTC)
    try:
        ts = datetime.fromisoformat(as_of)
    except ValueError:
        raise WorkspaceError(f"--as-of {as_of!r} is not an ISO 8601 timestamp") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def stream_targets(h: Home, accounts: list[str] | None) -> list[tuple[str, str]]:
    """(account_id, stream) for every live account (or only the named ones)."""
    return [
        (a.account_id, s)
        for a in h.load().active_accounts()
        if accounts is None or a.email in accounts
        for s in STREAMS_BY_PROVIDER.get(a.provider, [])
    ]


def prewarm_quality_gate() -> None:
    """Import Great Expectations (seconds) in the background while extraction runs."""
    import importlib
    import threading

    threading.Thread(
        target=importlib.import_module, args=("great_expectations",), daemon=True
    ).start()


@flow(name="sync-workspace")
def sync_workspace(
    home: str = "./data",
    as_of: str | None = None,
    accounts: list[str] | None = None,
    lock_timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Extract every account (in parallel), then transform, validate and publish."""
    h = Home(home)
    when = parse_as_of(as_of)
    started = datetime.now(UTC)
    run_id = new_run_id()
    prewarm_quality_gate()
    with h.lock("writer", timeout_s=lock_timeout_s):
        apply_blocklist_changes(h)
        targets = stream_targets(h, accounts)
        futures = extract_account_stream.map(
            unmapped(home), [t[0] for t in targets], [t[1] for t in targets]
        )
        results = [f.result() for f in futures]
        record_stream_results(h, [StreamResult(**r) for r in results])
        published = transform_validate_publish(
            home, run_id, when.isoformat(), results, started.isoformat()
        )
        compact_lake(h)  # after the publish, so the next run reads fewer files
    return {"run_id": run_id, "streams": results, "publish": published}


@flow(name="import-files")
def import_files(
    home: str,
    account: str,
    paths: list[str],
    as_of: str | None = None,
    lock_timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Land mbox/.eml/.ics files for a file account, then transform, validate and publish."""
    from pathlib import Path

    from connectors.files import import_paths
    from connectors.mailparse import Blocklist

    h = Home(home)
    when = parse_as_of(as_of)
    started = datetime.now(UTC)
    run_id = new_run_id()
    prewarm_quality_gate()  # (while the files are parsed, as a sync does while it extracts)
    with h.lock("writer", timeout_s=lock_timeout_s):
        apply_blocklist_changes(h)
        ws = h.load()
        acc = ws.account_by_email(account)
        blocklist = Blocklist((b.entry, b.kind) for b in ws.blocklist_for(acc.account_id))
        addresses = ws.member_addresses().get(acc.member_id, acc.addresses)
        t0 = datetime.now(UTC)
        out = import_paths(
            lake_dir=h.lake,
            account_id=acc.account_id,
            paths=[Path(p) for p in paths],
            account_addresses=addresses,
            blocklist=blocklist,
            progress=_progress_hook(acc.account_id),
        )
        result = StreamResult(
            account_id=acc.account_id,
            stream="import",
            status="ok",
            mode="import",
            landed=out.landed,
            blocked=out.blocked,
            quarantined=out.quarantined,
            seconds=round((datetime.now(UTC) - t0).total_seconds(), 3),
        )
        record_stream_results(h, [result])
        published = transform_validate_publish(
            home, run_id, when.isoformat(), [asdict(result)], started.isoformat()
        )
    return {
        "run_id": run_id,
        "streams": [asdict(result)],
        "publish": published,
        "skipped": getattr(out, "skipped", 0),
    }


def _progress_hook(account_id: str):  # noqa: ANN202
    from flows import engine

    def progress(done: int, total: int | None) -> None:
        if engine.PROGRESS_HOOK:
            engine.PROGRESS_HOOK(account_id, "import", done, total)

    return progress


@task(name="backfill-account-stream", task_run_name="backfill-{account_id}-{stream}")
def backfill_account_stream(
    home: str, account_id: str, stream: str, since: str | None, until: str | None, full: bool
) -> dict[str, Any]:
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    artifact_id = create_progress_artifact(
        progress=0.0, description=f"backfill {account_id}/{stream}"
    )
    last = {"pct": -1.0}

    def progress(done: int, total: int | None) -> None:
        pct = 100.0 * done / total if total else 100.0
        if pct - last["pct"] >= 5 or done == total:
            last["pct"] = pct
            update_progress_artifact(artifact_id=artifact_id, progress=pct)

    result = backfill_stream(
        Home(home),
        account_id,
        stream,
        parse_as_of(since) if since else None,
        parse_as_of(until) if until else None,
        full,
        progress,
    )
    update_progress_artifact(artifact_id=artifact_id, progress=100.0)
    return asdict(result)


@flow(name="backfill")
def backfill(
    home: str = "./data",
    accounts: list[str] | None = None,
    since: str | None = None,
    until: str | None = None,
    full: bool = False,
    as_of: str | None = None,
    lock_timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Re-fetch history (a date range, or everything with full=True), then publish.

    Cursors never move; already-landed mail is skipped unless full, so a stopped
    backfill resumes where it left off.
    """
    h = Home(home)
    when = parse_as_of(as_of)
    if since:
        parse_as_of(since)
    if until:
        parse_as_of(until)
    started = datetime.now(UTC)
    run_id = new_run_id()
    with h.lock("writer", timeout_s=lock_timeout_s):
        apply_blocklist_changes(h)
        targets = stream_targets(h, accounts)
        futures = backfill_account_stream.map(
            unmapped(home),
            [t[0] for t in targets],
            [t[1] for t in targets],
            unmapped(since),
            unmapped(until),
            unmapped(full),
        )
        results = [f.result() for f in futures]
        published = transform_validate_publish(
            home, run_id, when.isoformat(), results, started.isoformat()
        )
    return {"run_id": run_id, "streams": results, "publish": published}


@flow(name="remove-account")
def remove_account(
    home: str = "./data",
    email: str = "",
    as_of: str | None = None,
    lock_timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Purge one account's mail and events, keep every record, recompute metrics."""
    h = Home(home)
    when = parse_as_of(as_of)
    started = datetime.now(UTC)
    run_id = new_run_id()
    with h.lock("writer", timeout_s=lock_timeout_s):
        account_id = remove_account_data(h, email)
        published = transform_validate_publish(
            home, run_id, when.isoformat(), [], started.isoformat()
        )
    return {"run_id": run_id, "account_id": account_id, "streams": [], "publish": published}
