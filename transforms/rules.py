"""Message-level rules: blocklists (§4.2), direction, internal and automated mail (§4.3)."""

from __future__ import annotations

import polars as pl

from transforms.addresses import domain_suffixes, internal_flag

# Senders that are machines, not people (configurable through Settings).
DEFAULT_AUTOMATED_LOCAL_PARTS = (
    r"^(no[-_.]?reply|do[-_.]?not[-_.]?reply|donotreply|mailer[-_.]?daemon|postmaster|"
    r"bounces?|notifications?|notify|alerts?|automated|auto[-_.]?confirm|daemon|"
    r"unsubscribe|newsletters?|news|digest|updates?|calendar-notification)$"
    r"|^(bounce|bounces|noreply|no-reply|msprvs1|prvs=)[-+=._].*"
)
LIST_PRECEDENCE = ("bulk", "list", "junk")


def blocklist_matches(
    participants: pl.LazyFrame, blocklist: pl.DataFrame, key: list[str] | None = None
) -> pl.LazyFrame:
    """The `key` (account_id, message_id; or `_mid`) of every message with a participant
    the account blocks.

    Address entries match the normalised address; domain entries match the domain and
    all its subdomains (joined on every suffix of each distinct domain).
    """
    addresses = blocklist.filter(pl.col("kind") == "address").select(
        "account_id", email=pl.col("entry")
    )
    domains = blocklist.filter(pl.col("kind") == "domain").select(
        "account_id", suffix=pl.col("entry")
    )
    by_address = participants.join(addresses.lazy(), on=["account_id", "email"], how="semi")
    distinct = participants.select(pl.col("domain").drop_nulls().unique()).collect()["domain"]
    suffixes = pl.DataFrame(
        {"domain": list(distinct), "suffix": [domain_suffixes(d) for d in distinct]},
        schema={"domain": pl.String, "suffix": pl.List(pl.String)},
    ).explode("suffix")
    by_domain = participants.join(suffixes.lazy(), on="domain", how="inner").join(
        domains.lazy(), on=["account_id", "suffix"], how="semi"
    )
    key = key or ["account_id", "message_id"]
    return pl.concat([by_address.select(key), by_domain.select(key)]).unique()


def split_blocked(
    messages: pl.LazyFrame, participants: pl.LazyFrame, blocklist: pl.DataFrame
) -> tuple[pl.LazyFrame, pl.LazyFrame, pl.LazyFrame]:
    """-> (visible messages, their participants, blocked threads per account).

    A message is hidden if it was landed as a marker or any participant is blocked.
    Its whole thread then creates no records for that account.
    """
    key = message_key(messages, participants)
    markers = messages.filter(pl.col("blocked")).select(key)
    if blocklist.is_empty() and markers.select(pl.len()).collect().item() == 0:
        # Nothing is blocked: skip four joins over every message and participant.
        empty = messages.select("account_id", "thread_id").head(0)
        return messages, participants, empty
    matched = blocklist_matches(participants, blocklist, key)
    hidden = pl.concat([matched, markers]).unique()
    visible = messages.join(hidden, on=key, how="anti")
    blocked_threads = (
        messages.join(hidden, on=key, how="semi")
        .select("account_id", "thread_id")
        .drop_nulls()
        .unique()
    )
    visible_parts = participants.join(hidden, on=key, how="anti")
    return visible, visible_parts, blocked_threads


def message_key(
    messages: pl.LazyFrame, participants: pl.LazyFrame, id_column: str = "message_id"
) -> list[str]:
    """Join messages and participants (or events and attendees, `id_column` "event_id")
    on the integer `_mid` when both carry it."""
    both = "_mid" in messages.collect_schema().names() and (
        "_mid" in participants.collect_schema().names()
    )
    return ["_mid"] if both else ["account_id", id_column]


def with_direction(
    messages: pl.LazyFrame, participants: pl.LazyFrame, account_addresses: pl.DataFrame
) -> pl.LazyFrame:
    """direction = sent when the From is any address of the account's member, or SENT label."""
    key = message_key(messages, participants)
    own = account_addresses.lazy().select("account_id", email=pl.col("address"))
    # The few member addresses filter the senders first; the exact (account, address)
    # match then runs on those rows only.
    member_addresses = account_addresses["address"].unique().implode()
    senders = participants.filter(
        (pl.col("role") == "from") & pl.col("email").is_in(member_addresses)
    ).select(*dict.fromkeys([*key, "account_id"]), "email")
    sent_by_member = (
        senders.join(own, on=["account_id", "email"], how="semi")
        .select(*key, _sent=pl.lit(True))
        .unique()
    )
    if key == ["_mid"]:  # a membership test on integers, not a join moving wide rows
        sent_mids = sent_by_member.select("_mid").collect()["_mid"].implode()
        flagged = messages.with_columns(_sent=pl.col("_mid").is_in(sent_mids))
    else:
        flagged = messages.join(sent_by_member, on=key, how="left")
    return flagged.with_columns(
        direction=pl.when(pl.col("_sent").fill_null(False) | pl.col("labels").list.contains("SENT"))
        .then(pl.lit("sent"))
        .otherwise(pl.lit("received"))
    ).drop("_sent")


def is_list_mail() -> pl.Expr:
    return (
        pl.col("list_id").is_not_null()
        | pl.col("list_unsubscribe").is_not_null()
        | pl.col("precedence").str.to_lowercase().str.strip_chars().is_in(LIST_PRECEDENCE)
        | (
            pl.col("auto_submitted").is_not_null()
            & (pl.col("auto_submitted").str.to_lowercase().str.strip_chars() != "no")
        )
    ).fill_null(False)


def is_automated_address(pattern: str = DEFAULT_AUTOMATED_LOCAL_PARTS) -> pl.Expr:
    local = pl.col("email").str.split("@").list.first()
    return local.str.contains(pattern).fill_null(False)


def with_internal_flag(
    participants: pl.LazyFrame, internal_addresses: list[str], internal_domains: list[str]
) -> pl.LazyFrame:
    """The internal flag on every normalised row. The build flags each distinct address
    once instead (normalise_addresses `internal=`); tests hold the two equal."""
    return participants.with_columns(internal=internal_flag(internal_addresses, internal_domains))
