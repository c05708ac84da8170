"""The quality gate (DESIGN §6): Great Expectations 1.x suites over the staged tables.

GX 1.x has no Polars or DuckDB datasource, so each check runs on a pandas frame made
from the staged Arrow data. Cross-table rules (a company_id that exists, a blocklisted
address in messages) are first turned into small "violations" frames in Polars, and GX
then expects those to be empty: cheap at a million rows and still reported by GX.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from transforms.metrics import STRENGTHS

log = logging.getLogger("rapport.expectations")


@dataclass
class GateResult:
    success: bool
    results: list[dict[str, Any]]

    def failures(self) -> list[dict[str, Any]]:
        return [r for r in self.results if not r["success"]]


def _violations(
    tables: dict[str, pl.DataFrame], blocklist: pl.DataFrame, internal_addresses: list[str]
) -> dict[str, pl.DataFrame]:
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
        blocked_rows = pl.DataFrame(schema={"account_id": pl.String, "email": pl.String})
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
    by_address = addrs.join(
        blocklist.filter(pl.col("kind") == "address").select("account_id", email="entry"),
        on=["account_id", "email"],
    )
    dom = blocklist.filter(pl.col("kind") == "domain").select("account_id", entry="entry")
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


def run_gate(
    tables: dict[str, pl.DataFrame],
    blocklist: pl.DataFrame,
    internal_addresses: list[str],
    as_of: datetime,
) -> GateResult:
    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.ERROR)  # it announces temp dirs at INFO
    import great_expectations as gx  # slow import: only when a gate runs
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(name="staged")
    lo = datetime(1971, 1, 1)
    hi = (as_of + timedelta(days=3650)).replace(tzinfo=None)

    checks: dict[str, tuple[pl.DataFrame, list[Any]]] = {
        "people": (
            tables["people"].select(
                "person_id", "primary_email", n_addresses=pl.col("email_addresses").list.len()
            ),
            [
                gxe.ExpectColumnValuesToNotBeNull(column="person_id"),
                gxe.ExpectColumnValuesToBeUnique(column="person_id"),
                gxe.ExpectColumnValuesToNotBeNull(column="primary_email"),
                gxe.ExpectColumnValuesToBeBetween(column="n_addresses", min_value=1),
            ],
        ),
        "companies": (
            tables["companies"].select("company_id"),
            [
                gxe.ExpectColumnValuesToNotBeNull(column="company_id"),
                gxe.ExpectColumnValuesToBeUnique(column="company_id"),
            ],
        ),
        "connections": (
            tables["connections"].select(pl.col("strength").unique()),
            [gxe.ExpectColumnValuesToBeInSet(column="strength", value_set=list(STRENGTHS))],
        ),
    }
    # Row-level rules: Polars finds the offending rows of each rule (a million messages
    # cost a fraction of pandas), and one GX check asserts that no rule found any. One
    # batch instead of one per rule: GX's per-batch overhead is most of a small run's gate.
    rules = {
        "messages_key_null_or_duplicate": tables["messages"]
        .select("message_key")
        .filter(pl.col("message_key").is_null() | pl.col("message_key").is_duplicated()),
        "messages_sent_at_range": tables["messages"]
        .select("message_key", sent_at=pl.col("sent_at").dt.replace_time_zone(None))
        .filter(pl.col("sent_at").is_not_null() & ~pl.col("sent_at").is_between(lo, hi)),
        **_violations(tables, blocklist, internal_addresses),
    }
    found = pl.DataFrame(
        {
            "rule": pl.concat(
                [
                    pl.repeat(name, frame.height, dtype=pl.String, eager=True)
                    for name, frame in rules.items()
                ]
            )
        }
    )
    checks["row_rules"] = (found, [gxe.ExpectTableRowCountToEqual(value=0)])

    results: list[dict[str, Any]] = []
    for name, (frame, expectations) in checks.items():
        asset = source.add_dataframe_asset(name=name)
        batch_def = asset.add_batch_definition_whole_dataframe(f"{name}_all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_suite"))
        for exp in expectations:
            suite.add_expectation(exp)
        batch = batch_def.get_batch(batch_parameters={"dataframe": frame.to_pandas()})
        outcome = batch.validate(suite)
        for res in outcome.results:
            cfg = res.expectation_config
            if name == "row_rules":  # reported per rule: how many rows each one found
                counts = found["rule"].value_counts()
                per_rule = dict(zip(counts["rule"], counts["count"], strict=True))
                results.extend(
                    {
                        "table": rule,
                        "expectation": cfg.type,
                        "column": None,
                        "success": per_rule.get(rule, 0) == 0,
                        "observed": per_rule.get(rule, 0),
                    }
                    for rule in rules
                )
                continue
            results.append(
                {
                    "table": name,
                    "expectation": cfg.type,
                    "column": cfg.kwargs.get("column"),
                    "success": bool(res.success),
                    "observed": _observed(res.result),
                }
            )
    return GateResult(success=all(r["success"] for r in results), results=results)


def _observed(result: dict[str, Any]) -> Any:
    for key in ("observed_value", "unexpected_count"):
        if key in result:
            value = result[key]
            return value if isinstance(value, int | float | str | None) else str(value)
    return None
