"""The quality gate (DESIGN §6): Great Expectations 1.x suites over the staged tables.

GX 1.x has no Polars or DuckDB datasource and costs ~15 ms per expectation whatever
the data. So every rule (ids unique and not null, a company_id that exists, no
blocklisted address in messages, ...) is computed in Polars as the rows that break it,
cheap at a million rows, and one GX suite expects that list to be empty. Each rule is
still reported on its own, with how many rows broke it.
"""

from __future__ import annotations

import gc
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from transforms.metrics import SUM_COLUMNS

log = logging.getLogger("rapport.expectations")


@dataclass
class GateResult:
    success: bool
    results: list[dict[str, Any]]

    def failures(self) -> list[dict[str, Any]]:
        return [r for r in self.results if not r["success"]]


def _violations(
    tables: dict[str, pl.LazyFrame], blocklist: pl.DataFrame, internal_addresses: list[str]
) -> dict[str, pl.LazyFrame]:
    people = tables["people"]
    companies = tables["companies"]
    interactions = tables["interactions"]
    messages = tables["messages"]
    missing_company = (
        people.filter(pl.col("company_id").is_not_null())
        .join(companies, on="company_id", how="anti")
        .select("person_id", "company_id")
    )
    missing_person = interactions.join(people, on="person_id", how="anti").select("person_id")
    internal_people = (
        people.select("person_id", email="email_addresses")
        .explode("email")
        .filter(pl.col("email").is_in(internal_addresses))
    )
    if blocklist.is_empty():
        blocked_rows = pl.LazyFrame(schema={"account_id": pl.String, "email": pl.String})
        return {
            "people_company_missing": missing_company,
            "interactions_person_missing": missing_person,
            "people_internal_address": internal_people,
            "messages_blocklisted": blocked_rows,
        }
    addrs = (
        messages.select(
            "account_id",
            email=pl.concat_list(pl.col("from_email").fill_null(""), "to_emails", "cc_emails"),
        )
        .explode("email")
        .filter(pl.col("email") != "")
        .with_columns(domain=pl.col("email").str.split("@").list.last())
    )
    blocklist_rows = blocklist.lazy()
    by_address = addrs.join(
        blocklist_rows.filter(pl.col("kind") == "address").select("account_id", email="entry"),
        on=["account_id", "email"],
    )
    dom = blocklist_rows.filter(pl.col("kind") == "domain").select("account_id", entry="entry")
    by_domain = (
        addrs.join(dom, on="account_id")
        .filter(
            (pl.col("domain") == pl.col("entry"))
            | pl.col("domain").str.ends_with("." + pl.col("entry"))
        )
        .select("account_id", "email")
    )
    return {
        "people_company_missing": missing_company,
        "interactions_person_missing": missing_person,
        "people_internal_address": internal_people,
        "messages_blocklisted": pl.concat([by_address.select("account_id", "email"), by_domain]),
    }


@dataclass
class PreparedGate:
    """The GX side of a gate, set up before the data is ready (~0.025 s of GX objects,
    whatever the data: a run does it in a thread while it builds, once per process)."""

    batch_definition: Any
    suite: Any


_prepared: PreparedGate | None = None
_preparing = threading.Lock()


def prepare_gate() -> PreparedGate:
    """The GX objects of the gate, made once per process (like the import, a fixed cost
    that a long-lived worker pays once); each run validates its own rows with them."""
    global _prepared
    with _preparing:
        if _prepared is None:
            _prepared = _new_gate()
        return _prepared


def _new_gate() -> PreparedGate:
    import great_expectations as gx  # slow import: only when a gate runs
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # After the import (which may have run in a prewarming thread and set its own levels):
    # GX announces its temporary directories at INFO.
    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Hide what exists now (GX's import: hundreds of thousands of objects that live as
    # long as the process) from the cyclic GC, whose every full collection walked them
    # all: a 0.14 s pause landed in the gate of a 0.5 s incremental run. Frozen objects
    # are still freed by reference counting. (Once per process, as this function is.)
    gc.freeze()

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(name="staged")
    asset = source.add_dataframe_asset(name="row_rules")
    batch_def = asset.add_batch_definition_whole_dataframe("row_rules_all")
    suite = context.suites.add(gx.ExpectationSuite(name="row_rules_suite"))
    suite.add_expectation(gxe.ExpectTableRowCountToEqual(value=0))
    # A first validation builds GX's execution engine and metric machinery (~0.012 s):
    # done here, on no rows, it is off the run's path.
    no_rows = pl.DataFrame({"rule": pl.Series([], dtype=pl.String)}).to_pandas()
    batch_def.get_batch(batch_parameters={"dataframe": no_rows}).validate(suite)
    return PreparedGate(batch_def, suite)


def null_or_repeated(frame: pl.LazyFrame, column: str) -> pl.LazyFrame:
    """The rows whose `column` is null or not unique.

    First, as many distinct 64-bit hashes as rows and no null prove there are none (on a
    million message keys 0.026 s, against 0.084 s for finding repeats). Otherwise the
    strings are compared only among the rows whose hash repeats (every copy of a repeated
    value is among them).
    """
    value = pl.col(column)
    unique = (value.null_count() == 0) & (value.hash().n_unique() == pl.len())
    if frame.select(unique).collect().item():
        return frame.select(column).clear()
    return (
        frame.select(column)
        .filter(value.is_null() | value.hash().is_duplicated())
        .filter(value.is_null() | value.is_duplicated())
    )


def run_gate(
    tables: dict[str, pl.DataFrame],
    blocklist: pl.DataFrame,
    internal_addresses: list[str],
    as_of: datetime,
    prepared: PreparedGate | None = None,
) -> GateResult:
    gate = prepared if prepared is not None else prepare_gate()
    lo = datetime(1971, 1, 1)
    hi = (as_of + timedelta(days=3650)).replace(tzinfo=None)

    # One row per offence, named by its rule (see the module docstring for why). The
    # rules are lazy and collected together, in parallel.
    tables = {name: frame.lazy() for name, frame in tables.items()}
    people, companies = tables["people"], tables["companies"]
    messages, sums = tables["messages"], tables["_rapport_connection_sums"]
    rules = {
        "people_id_null_or_duplicate": null_or_repeated(people, "person_id"),
        "people_primary_email_null": people.filter(pl.col("primary_email").is_null()).select(
            "person_id"
        ),
        "people_without_address": people.filter(
            pl.col("email_addresses").list.len().fill_null(0) < 1
        ).select("person_id"),
        "companies_id_null_or_duplicate": null_or_repeated(companies, "company_id"),
        # connection strength is computed from these when queried (sql/scores.sql)
        "connection_sums_invalid": sums.filter(
            pl.any_horizontal(
                pl.col(SUM_COLUMNS).is_null()
                | ~pl.col(SUM_COLUMNS).is_finite()
                | (pl.col(SUM_COLUMNS) < 0)
            )
        ).select("member_id", "person_id"),
        "messages_key_null_or_duplicate": null_or_repeated(messages, "message_key"),
        "messages_sent_at_range": messages.select(
            "message_key", sent_at=pl.col("sent_at").dt.replace_time_zone(None)
        ).filter(pl.col("sent_at").is_not_null() & ~pl.col("sent_at").is_between(lo, hi)),
        **_violations(tables, blocklist, internal_addresses),
    }
    per_rule = {
        name: frame.height
        for name, frame in zip(rules, pl.collect_all(rules.values()), strict=True)
    }
    # Each offence as a row named by its rule, in one query (not one per rule).
    found = (
        pl.DataFrame(
            {"rule": list(per_rule), "n": list(per_rule.values())},
            schema={"rule": pl.String, "n": pl.UInt32},
        )
        .filter(pl.col("n") > 0)
        .select(pl.col("rule").repeat_by("n").explode())
    )
    batch = gate.batch_definition.get_batch(batch_parameters={"dataframe": found.to_pandas()})
    outcome = batch.validate(gate.suite)
    [result] = outcome.results
    results = [
        {
            "table": rule,
            "expectation": result.expectation_config.type,
            "column": None,
            "success": per_rule[rule] == 0,
            "observed": per_rule[rule],
        }
        for rule in rules
    ]
    if bool(result.success) != (found.height == 0):  # GX and the per-rule counts must agree
        raise RuntimeError(f"quality gate disagrees with its rule counts: {result.result}")
    return GateResult(success=all(r["success"] for r in results), results=results)
