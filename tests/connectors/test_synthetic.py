"""The synthetic workspace generator: shape, determinism and the realism the pipeline relies on."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from connectors.simulators.synthetic import (
    ATTENDEE_SCHEMA,
    EVENT_SCHEMA,
    FREE_MAIL_DOMAINS,
    MESSAGE_SCHEMA,
    PARTICIPANT_SCHEMA,
    ROLES,
    SyntheticWorkspace,
    generate_delta,
    generate_workspace,
    to_sim_events,
    to_sim_messages,
)

START = datetime(2025, 1, 1, tzinfo=UTC)
END = datetime(2026, 12, 1, tzinfo=UTC)
HEX16 = r"^[0-9a-f]{16}$"


@pytest.fixture(scope="module")
def ws() -> SyntheticWorkspace:
    return generate_workspace(5000)


@pytest.fixture(scope="module")
def big() -> SyntheticWorkspace:
    return generate_workspace(200_000, seed=11)


def member_addresses(ws: SyntheticWorkspace) -> pl.DataFrame:
    """(mailbox, low) for every address of every member."""
    return pl.DataFrame(
        [(m.email, a.lower()) for m in ws.members for a in (m.email, *m.aliases)],
        schema={"mailbox": pl.String, "low": pl.String},
        orient="row",
    )


def canonical(col: str = "email") -> pl.Expr:
    """DESIGN 4.1 canonical key: lower-case; gmail drops dots and +tag."""
    low = pl.col(col).str.to_lowercase()
    local = low.str.extract(r"^([^@]*)@", 1)
    host = low.str.extract(r"@(.*)$", 1)
    gmail = host.is_in(["gmail.com", "googlemail.com"])
    local = pl.when(gmail).then(local.str.replace(r"\+.*$", "").str.replace_all(r"\.", ""))
    return pl.concat_str(local.otherwise(low.str.extract(r"^([^@]*)@", 1)), pl.lit("@"), host)


def classify(ws: SyntheticWorkspace) -> pl.DataFrame:
    """Messages with a traffic kind: list, automated, internal, sent or received."""
    internal = pl.col("email").str.to_lowercase().str.ends_with("@" + ws.domain)
    per = ws.participants.group_by("mailbox", "message_id").agg(all_internal=internal.all())
    return ws.messages.join(per, on=["mailbox", "message_id"]).with_columns(
        kind=pl.when(pl.col("list_id").is_not_null())
        .then(pl.lit("list"))
        .when(pl.col("auto_submitted").is_not_null() | pl.col("precedence").is_not_null())
        .then(pl.lit("automated"))
        .when(pl.col("all_internal"))
        .then(pl.lit("internal"))
        .when(pl.col("label_ids").list.contains("SENT"))
        .then(pl.lit("sent"))
        .otherwise(pl.lit("received"))
    )


# --- shape -----------------------------------------------------------------------------------


def test_schemas_are_exact(ws: SyntheticWorkspace) -> None:
    assert ws.messages.schema == pl.Schema(MESSAGE_SCHEMA)
    assert ws.participants.schema == pl.Schema(PARTICIPANT_SCHEMA)
    assert ws.events.schema == pl.Schema(EVENT_SCHEMA)
    assert ws.attendees.schema == pl.Schema(ATTENDEE_SCHEMA)
    assert ws.messages["sent_at"].dtype == pl.Datetime("us", "UTC")
    assert ws.events["cancelled_occurrences"].dtype == pl.List(pl.Datetime("us", "UTC"))


@pytest.mark.parametrize("n", [0, 1, 7, 999, 5000])
@pytest.mark.parametrize("n_members", [1, 2, 5])
def test_height_is_exact(n: int, n_members: int) -> None:
    ws = generate_workspace(n, n_members=n_members, seed=n + n_members)
    assert ws.messages.height == n
    assert ws.messages.select(pl.struct("mailbox", "message_id").n_unique()).item() == n
    assert set(ws.participants["mailbox"]) <= {m.email for m in ws.members}


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        generate_workspace(-1)
    with pytest.raises(ValueError):
        generate_workspace(10, n_members=0)
    with pytest.raises(ValueError):
        generate_workspace(10, start=END, end=START)


def test_same_seed_same_frames_different_seed_different() -> None:
    a, b = generate_workspace(3000, seed=3), generate_workspace(3000, seed=3)
    for name in ("messages", "participants", "events", "attendees"):
        assert_frame_equal(getattr(a, name), getattr(b, name))
    c = generate_workspace(3000, seed=4)
    assert not a.messages.equals(c.messages)
    assert not a.participants.equals(c.participants)
    assert not a.events.equals(c.events)


def test_id_offset_moves_every_id() -> None:
    a = generate_workspace(2000, seed=3)
    b = generate_workspace(2000, seed=3, id_offset=10_000)
    assert set(a.messages["message_id"]).isdisjoint(b.messages["message_id"])
    assert set(a.messages["rfc_message_id"]).isdisjoint(b.messages["rfc_message_id"])
    assert set(a.events["event_id"]).isdisjoint(b.events["event_id"])


# --- members and addresses -------------------------------------------------------------------


def test_members_and_aliases_live_on_the_domain() -> None:
    ws = generate_workspace(500, n_members=4, domain="example-team.io")
    assert [m.email for m in ws.members][:3] == [
        "alice@example-team.io",
        "bob@example-team.io",
        "carol@example-team.io",
    ]
    assert ws.members[0].aliases == ("a.smith@example-team.io",)
    for m in ws.members:
        assert len(m.aliases) == 1 and m.name
        assert all(a.endswith("@example-team.io") for a in (m.email, *m.aliases))
    # Members do send from their alias now and then.
    aliases = {a for m in ws.members for a in m.aliases}
    assert ws.participants.filter(pl.col("email").is_in(list(aliases))).height > 0


def test_external_population_is_awkward_on_purpose(ws: SyntheticWorkspace) -> None:
    p = ws.participants
    hosts = p.select(pl.col("email").str.to_lowercase().str.extract(r"@(.*)$", 1))["email"]
    hosts = set(hosts)
    assert any(h.endswith(".co.uk") for h in hosts)
    assert "mail.eu.acme-corp.co.uk" in hosts  # subdomain sender of a multi-level suffix
    assert "acme-corp.co.uk" in hosts
    assert sum("-" in h.split(".")[0] for h in hosts) >= 5  # hyphenated company names
    assert set(FREE_MAIL_DOMAINS) <= hosts
    # Written forms vary: case, and gmail dots / +tags that share one canonical key.
    assert p.filter(pl.col("email").str.contains("[A-Z]")).height > 0
    gmail = p.filter(pl.col("email").str.to_lowercase().str.contains("@(gmail|googlemail)\\.com$"))
    assert gmail.filter(pl.col("email").str.contains(r"\+")).height > 0
    forms = gmail.group_by(canonical().alias("key")).agg(
        pl.col("email").str.to_lowercase().n_unique().alias("forms")
    )
    assert forms.filter(pl.col("forms") > 1).height > 0
    # Display names: "Last, First", missing, and the bare address.
    assert p.filter(pl.col("name").str.contains(", ")).height > 0
    assert 0.05 < p["name"].is_null().mean() < 0.3
    assert p.filter(pl.col("name") == pl.col("email")).height > 0
    # Automated senders.
    senders = set(p.filter(pl.col("role") == "from")["email"].str.to_lowercase())
    assert any(s.startswith(("no-reply@", "noreply@")) for s in senders)
    assert any(s.startswith("mailer-daemon@") for s in senders)


def test_population_scales_with_messages() -> None:
    small, large = generate_workspace(100), generate_workspace(40_000)
    assert small.population is not None and large.population is not None
    assert len(small.population.persons) >= 50
    assert 1800 <= len(large.population.persons) <= 2300  # about n / 20


# --- messages --------------------------------------------------------------------------------


def test_ids_are_gmail_like_and_threads_start_at_their_first_message(
    ws: SyntheticWorkspace,
) -> None:
    m = ws.messages
    assert m["message_id"].str.contains(HEX16).all()
    assert m["thread_id"].str.contains(HEX16).all()
    assert m["rfc_message_id"].str.contains(r"^<[^<>@\s]+@[a-z0-9.-]+>$").all()
    first = (
        m.sort("sent_at", "message_id")
        .group_by("mailbox", "thread_id")
        .agg(pl.col("message_id").first())
    )
    assert (first["thread_id"] == first["message_id"]).all()


def test_every_message_has_one_sender_and_a_recipient(ws: SyntheticWorkspace) -> None:
    p = ws.participants
    assert set(p["role"].unique()) <= set(ROLES)
    per = p.group_by("mailbox", "message_id").agg(
        n_from=(pl.col("role") == "from").sum(), n_to=(pl.col("role") == "to").sum()
    )
    assert per.height == ws.messages.height
    assert (per["n_from"] == 1).all() and (per["n_to"] >= 1).all()
    assert p.join(ws.messages, on=["mailbox", "message_id"], how="anti").height == 0
    # An address appears once per message.
    assert p.select(pl.struct("mailbox", "message_id", "email").n_unique()).item() == p.height
    assert p.filter(pl.col("role") == "bcc").height > 0


def test_labels_follow_the_sender(ws: SyntheticWorkspace) -> None:
    senders = ws.participants.filter(pl.col("role") == "from").select(
        "mailbox", "message_id", low=pl.col("email").str.to_lowercase()
    )
    mine = senders.join(member_addresses(ws), on=["mailbox", "low"], how="semi")
    m = ws.messages.join(
        mine.select("mailbox", "message_id", own=pl.lit(True)),
        on=["mailbox", "message_id"],
        how="left",
    ).with_columns(pl.col("own").fill_null(False))
    sent = m["label_ids"].list.contains("SENT")
    assert (sent == m["own"]).all()
    assert (m["label_ids"].list.contains("INBOX") == ~sent).all()
    labels = set(m["label_ids"].explode())
    assert {"SENT", "INBOX", "UNREAD", "CATEGORY_PROMOTIONS"} <= labels
    promo = m.filter(pl.col("label_ids").list.contains("CATEGORY_PROMOTIONS"))
    assert promo["list_id"].is_not_null().all()


def test_traffic_mix(ws: SyntheticWorkspace) -> None:
    share = dict(classify(ws)["kind"].value_counts(normalize=True).iter_rows())
    assert 0.28 < share["sent"] < 0.45
    assert 0.33 < share["received"] < 0.50
    assert 0.07 < share["list"] < 0.14
    assert 0.02 < share["automated"] < 0.08
    assert 0.04 < share["internal"] < 0.12


def test_internal_mail_is_in_every_participating_mailbox(ws: SyntheticWorkspace) -> None:
    m = ws.messages
    copies = m.group_by("rfc_message_id").agg(
        n=pl.len(),
        mailboxes=pl.col("mailbox").n_unique(),
        times=pl.col("sent_at").n_unique(),
        subjects=pl.col("subject").n_unique(),
        sent=pl.col("label_ids").list.contains("SENT").sum(),
    )
    multi = copies.filter(pl.col("n") > 1)
    assert multi.height > 100
    assert (multi["mailboxes"] == multi["n"]).all()
    assert (multi["times"] == 1).all() and (multi["subjects"] == 1).all()
    assert (multi["sent"] <= 1).all()
    # Each member named on an internal-only message holds a copy of it.
    internal = classify(ws).filter(pl.col("kind") == "internal")
    named = (
        ws.participants.join(internal.select("mailbox", "message_id"), on=["mailbox", "message_id"])
        .join(m.select("mailbox", "message_id", "rfc_message_id"), on=["mailbox", "message_id"])
        .with_columns(low=pl.col("email").str.to_lowercase())
        .join(member_addresses(ws).rename({"mailbox": "owner"}), on="low")
        .select("rfc_message_id", "owner")
        .unique()
    )
    held = m.select("rfc_message_id", owner="mailbox").unique()
    assert named.join(held, on=["rfc_message_id", "owner"], how="anti").height == 0
    assert (internal["label_ids"].list.contains("SENT").sum()) > 0
    # Externals cc'd on mail between two members: copies in both mailboxes.
    cc_ext = (
        ws.participants.filter(
            (pl.col("role") == "cc") & ~pl.col("email").str.to_lowercase().str.ends_with(ws.domain)
        )
        .join(m.select("mailbox", "message_id", "rfc_message_id"), on=["mailbox", "message_id"])
        .join(multi.select("rfc_message_id"), on="rfc_message_id", how="semi")
    )
    assert cc_ext.height > 0


def test_reply_threads(ws: SyntheticWorkspace) -> None:
    m = ws.messages
    replies = m.filter(pl.col("in_reply_to").is_not_null())
    assert replies.height > 0.2 * m.height
    parents = replies.join(
        m.select("mailbox", in_reply_to="rfc_message_id", p_thread="thread_id", p_at="sent_at"),
        on=["mailbox", "in_reply_to"],
    )
    assert parents.height == replies.height
    assert (parents["p_thread"] == parents["thread_id"]).all()
    assert (parents["p_at"] <= parents["sent_at"]).all()
    assert replies["subject"].str.contains(r"^(Re|Automatic reply): ").all()
    # Long threads alternate sent and received copies.
    seq = (
        m.sort("sent_at")
        .group_by("mailbox", "thread_id")
        .agg(sent=pl.col("label_ids").list.contains("SENT"))
        .filter(pl.col("sent").list.len() >= 4)
    )
    assert seq.height > 0
    alternating = seq.filter(
        pl.col("sent").list.eval(pl.element().cast(pl.Int8).diff().abs().drop_nulls()).list.min()
        == 1
    )
    assert alternating.height > 0.5 * seq.height


def test_list_and_automated_headers(ws: SyntheticWorkspace) -> None:
    m = ws.messages
    lists = m.filter(pl.col("list_id").is_not_null())
    assert lists["list_id"].str.contains(r"<[^<>]+>$").all()
    assert lists["list_unsubscribe"].str.contains("mailto:").all()
    assert set(lists["precedence"].drop_nulls()) == {"bulk", "list"}
    assert set(m["auto_submitted"].drop_nulls()) == {"auto-generated", "auto-replied"}
    unlisted = m.filter(pl.col("list_id").is_null())
    assert unlisted["list_unsubscribe"].is_null().all()


def test_dates_spread_with_recent_activity_denser(ws: SyntheticWorkspace) -> None:
    at = ws.messages["sent_at"]
    assert at.min() >= START and at.max() < END
    middle = START + (END - START) / 2
    older, newer = (at < middle).sum(), (at >= middle).sum()
    assert newer > 1.3 * older
    assert older > 0.15 * at.len()


def test_contact_frequency_is_skewed(ws: SyntheticWorkspace) -> None:
    ext = (
        ws.participants.join(
            ws.messages.filter(pl.col("list_id").is_null() & pl.col("auto_submitted").is_null()),
            on=["mailbox", "message_id"],
            how="semi",
        )
        .with_columns(key=canonical())
        .filter(~pl.col("key").str.ends_with("@" + ws.domain))
    )
    counts = ext.group_by("key").agg(n=pl.col("message_id").n_unique()).sort("n", descending=True)
    top = counts.head(max(1, counts.height // 20))["n"].sum()
    assert top > 0.2 * counts["n"].sum()  # the closest 5% of contacts get > 20% of the mail
    assert counts["n"].max() > 10 * counts["n"].median()


# --- calendar --------------------------------------------------------------------------------


def test_events_cover_the_meeting_kinds(ws: SyntheticWorkspace) -> None:
    ev, att = ws.events, ws.attendees
    assert ev["ical_uid"].n_unique() == 5000 // 25
    assert ev.select(pl.struct("mailbox", "event_id").n_unique()).item() == ev.height
    assert set(ev["status"]) == {"confirmed", "cancelled"}
    assert (ev["end_at"] > ev["start_at"]).all()
    size = att.group_by("mailbox", "event_id").agg(
        n=pl.len(),
        ext=(~pl.col("email").str.ends_with("@" + ws.domain)).sum(),
    )
    assert size["n"].max() >= 10  # large meetings
    assert size.filter((pl.col("n") == 2) & (pl.col("ext") == 1)).height > 0  # one-to-one
    assert size.filter(pl.col("ext") == 0).height > 0  # internal
    # The organizer is an attendee of every copy.
    org = ev.select("mailbox", "event_id", email="organizer_email")
    assert org.join(att, on=["mailbox", "event_id", "email"], how="anti").is_empty()
    # All-day events run midnight to midnight.
    day = ev.filter("all_day")
    assert day.height > 0
    assert (day["start_at"].dt.hour() == 0).all() and (day["end_at"].dt.hour() == 0).all()
    # Some are after the window: future meetings for next_meeting_at.
    assert (ev["start_at"] >= END).sum() > 0
    assert ev.filter(pl.col("start_at") < END)["start_at"].min() >= START


def test_recurring_series_and_cancelled_occurrences(ws: SyntheticWorkspace) -> None:
    series = ws.events.filter(pl.col("rrule").is_not_null())
    assert series.height > 0
    assert series["rrule"].str.contains(r"^FREQ=WEEKLY;(INTERVAL=2;)?COUNT=\d+$").all()
    cx = series.filter(pl.col("cancelled_occurrences").list.len() > 0)
    assert cx.height > 0
    for row in cx.iter_rows(named=True):
        interval = 2 if "INTERVAL=2" in row["rrule"] else 1
        count = int(row["rrule"].rsplit("=", 1)[1])
        for occ in row["cancelled_occurrences"]:
            weeks, rest = divmod(occ - row["start_at"], timedelta(weeks=interval))
            assert rest == timedelta(0) and 1 <= weeks < count


def test_events_are_copied_to_every_member_attendee(ws: SyntheticWorkspace) -> None:
    members = {m.email for m in ws.members}
    expected = (
        ws.attendees.filter(pl.col("email").is_in(list(members)))
        .join(ws.events.select("mailbox", "event_id", "ical_uid"), on=["mailbox", "event_id"])
        .select("ical_uid", mailbox="email")
        .unique()
    )
    actual = ws.events.select("ical_uid", "mailbox").unique()
    assert_frame_equal(expected.sort(pl.all()), actual.sort(pl.all()))
    shared = ws.events.group_by("ical_uid").agg(
        n=pl.len(), starts=pl.col("start_at").n_unique(), ids=pl.col("event_id").n_unique()
    )
    assert shared.filter(pl.col("n") > 1).height > 0
    assert (shared["starts"] == 1).all() and (shared["ids"] == shared["n"]).all()


# --- conversion to simulator objects ---------------------------------------------------------

HEADER_ORDER = [
    "From",
    "To",
    "Cc",
    "Bcc",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "List-Id",
    "List-Unsubscribe",
    "Precedence",
    "Auto-Submitted",
    "Content-Type",
]


def test_to_sim_messages(ws: SyntheticWorkspace) -> None:
    mailbox = ws.members[0].email
    sims = to_sim_messages(ws, mailbox)
    rows = {r["message_id"]: r for r in ws.messages.filter(mailbox=mailbox).iter_rows(named=True)}
    assert len(sims) == len(rows)
    quoted = 0
    for sim in sims:
        row = rows[sim.id]
        names = [k for k, _ in sim.headers]
        assert names == sorted(names, key=HEADER_ORDER.index)
        assert names[:2] == ["From", "To"] and names[-1] == "Content-Type"
        assert sim.header("Content-Type") == 'text/plain; charset="utf-8"'
        assert {"Subject", "Date", "Message-ID"} <= set(names)
        assert email.utils.parsedate_to_datetime(sim.header("Date")) == row["sent_at"]
        assert sim.internal_date_ms == int(row["sent_at"].timestamp() * 1000)
        assert sim.thread_id == row["thread_id"] and sim.label_ids == row["label_ids"]
        assert sim.header("Message-ID") == row["rfc_message_id"]
        assert sim.header("In-Reply-To") == row["in_reply_to"]
        assert sim.header("List-Id") == row["list_id"]
        assert sim.body == row["body_text"].encode("utf-8")
        assert sim.snippet == row["body_text"][:100]
        if sim.header("Bcc"):
            assert "SENT" in sim.label_ids
        for key in ("From", "To", "Cc"):
            value = sim.header(key)
            if value and '"' in value and ", " in value:
                for name, addr in email.utils.getaddresses([value]):
                    if ", " in name:
                        quoted += 1
                        assert f'"{name}" <{addr}>' in value
    assert quoted > 0
    assert any(s.header("Bcc") for s in sims)


def test_bcc_is_only_on_the_senders_copy(ws: SyntheticWorkspace) -> None:
    bcc = ws.participants.filter(pl.col("role") == "bcc").join(
        ws.messages, on=["mailbox", "message_id"]
    )
    assert bcc.height > 0 and bcc["label_ids"].list.contains("SENT").all()


def test_to_sim_events(ws: SyntheticWorkspace) -> None:
    mailbox = ws.members[0].email
    sims = to_sim_events(ws, mailbox)
    rows = {r["event_id"]: r for r in ws.events.filter(mailbox=mailbox).iter_rows(named=True)}
    assert len(sims) == len(rows)
    for sim in sims:
        row = rows[sim.id]
        assert sim.ical_uid == row["ical_uid"] and sim.summary == row["summary"]
        assert sim.start_ms == int(row["start_at"].timestamp() * 1000)
        assert sim.end_ms == int(row["end_at"].timestamp() * 1000)
        assert sim.status == row["status"] and sim.all_day == row["all_day"]
        assert sim.rrule == row["rrule"]
        assert sim.cancelled_occurrences == [
            int(t.timestamp() * 1000) for t in row["cancelled_occurrences"]
        ]
        assert [a.email for a in sim.attendees if a.organizer] == [sim.organizer_email]
        assert mailbox in {a.email for a in sim.attendees}
        assert {a.response_status for a in sim.attendees} <= {
            "accepted",
            "tentative",
            "declined",
            "needsAction",
        }


# --- incremental deltas ----------------------------------------------------------------------


def test_generate_delta(ws: SyntheticWorkspace) -> None:
    start, end = END, END + timedelta(days=7)
    d = generate_delta(ws, 1000, seed=1, start=start, end=end)
    assert d.messages.height == 1000
    assert d.messages.schema == ws.messages.schema
    assert d.participants.schema == ws.participants.schema
    assert d.events.is_empty() and d.events.schema == ws.events.schema
    assert d.members == ws.members and d.domain == ws.domain
    assert d.messages["sent_at"].min() >= start and d.messages["sent_at"].max() < end
    both = pl.concat([ws.messages, d.messages])
    assert both.select(pl.struct("mailbox", "message_id").n_unique()).item() == both.height
    assert set(ws.messages["rfc_message_id"]).isdisjoint(d.messages["rfc_message_id"])
    # Some are replies inside existing threads.
    threads = ws.messages.select("mailbox", "thread_id").unique()
    old = d.messages.join(threads, on=["mailbox", "thread_id"])
    assert old.height > 100
    assert old["in_reply_to"].is_in(ws.messages["rfc_message_id"].implode()).all()
    # Same external population: every address was already possible in ws.
    assert ws.population is not None
    known = set(ws.population.emails.str.to_lowercase())
    assert set(d.participants["email"].str.to_lowercase()) <= known
    per = d.participants.group_by("mailbox", "message_id").agg(
        n_from=(pl.col("role") == "from").sum(), n_to=(pl.col("role") == "to").sum()
    )
    assert per.height == 1000 and (per["n_from"] == 1).all() and (per["n_to"] >= 1).all()
    # Deterministic, and another seed gets other ids.
    again = generate_delta(ws, 1000, seed=1, start=start, end=end)
    assert_frame_equal(d.messages, again.messages)
    assert_frame_equal(d.participants, again.participants)
    other = generate_delta(ws, 1000, seed=2, start=start, end=end)
    assert set(other.messages["message_id"]).isdisjoint(d.messages["message_id"])
    # A delta of a delta continues the id space.
    chained = generate_delta(d, 500, seed=1, start=end, end=end + timedelta(days=1))
    assert set(chained.messages["message_id"]).isdisjoint(both["message_id"])


# --- scale -----------------------------------------------------------------------------------


def test_200k_shape_and_invariants(big: SyntheticWorkspace) -> None:
    m, p = big.messages, big.participants
    assert m.height == 200_000
    assert m.select(pl.struct("mailbox", "message_id").n_unique()).item() == m.height
    assert m["message_id"].str.contains(HEX16).all()
    assert 3.0 < p.height / m.height < 6.0
    roles = p.group_by("mailbox", "message_id").agg(
        n_from=(pl.col("role") == "from").sum(), n_to=(pl.col("role") == "to").sum()
    )
    assert roles.height == m.height
    assert (roles["n_from"] == 1).all() and (roles["n_to"] >= 1).all()
    copies = m.group_by("rfc_message_id").agg(
        n=pl.len(), mb=pl.col("mailbox").n_unique(), t=pl.col("sent_at").n_unique()
    )
    assert (copies["n"] == copies["mb"]).all() and (copies["t"] == 1).all()
    assert m["sent_at"].min() >= START and m["sent_at"].max() < END
    assert big.events["ical_uid"].n_unique() == 200_000 // 25
    # At scale the long tail shows: many contacts appear in only one or two messages.
    counts = (
        p.with_columns(key=canonical())
        .filter(~pl.col("key").str.ends_with("@" + big.domain))
        .group_by("key")
        .agg(n=pl.col("message_id").n_unique())
    )
    assert (counts["n"] <= 2).mean() > 0.1
    assert counts["n"].max() > 100 * counts["n"].median()
