"""Deterministic synthetic workspaces: from a 5,000-message demo to 1,000,000-message benchmarks.

Everything at message scale is generated column-wise with numpy and assembled into Polars
frames (DESIGN §8 needs 1M messages in seconds). Only the population (a few ten thousand
people) and the per-mailbox conversion to simulator objects (`to_sim_messages`, demo scale)
loop in Python.

Model: a *thread* has an ordered list of participant *slots* (slot 0 starts it, slot 1 is the
counterpart, further slots are To/Cc/Bcc/Reply-To extras) and a set of member *mailboxes*.
Messages in a thread alternate between slot 0 and slot 1 as sender; every message is copied
into each of the thread's mailboxes, which is how internal mail shows up in every member's
mailbox with one RFC Message-ID.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, formataddr

import numpy as np
import polars as pl
import pyarrow as pa

from connectors.simulators.model import SimAttendee, SimEvent, SimMessage

UTC_US = pl.Datetime("us", "UTC")

MESSAGE_SCHEMA: dict[str, pl.DataType] = {
    "mailbox": pl.String(),
    "message_id": pl.String(),
    "thread_id": pl.String(),
    "rfc_message_id": pl.String(),
    "sent_at": UTC_US,
    "subject": pl.String(),
    "body_text": pl.String(),
    "label_ids": pl.List(pl.String()),
    "list_id": pl.String(),
    "list_unsubscribe": pl.String(),
    "precedence": pl.String(),
    "auto_submitted": pl.String(),
    "in_reply_to": pl.String(),
}
PARTICIPANT_SCHEMA: dict[str, pl.DataType] = {
    "mailbox": pl.String(),
    "message_id": pl.String(),
    "role": pl.String(),
    "email": pl.String(),
    "name": pl.String(),
}
EVENT_SCHEMA: dict[str, pl.DataType] = {
    "mailbox": pl.String(),
    "event_id": pl.String(),
    "ical_uid": pl.String(),
    "summary": pl.String(),
    "start_at": UTC_US,
    "end_at": UTC_US,
    "status": pl.String(),
    "organizer_email": pl.String(),
    "organizer_name": pl.String(),
    "rrule": pl.String(),
    "cancelled_occurrences": pl.List(UTC_US),
    "all_day": pl.Boolean(),
}
ATTENDEE_SCHEMA: dict[str, pl.DataType] = {
    "mailbox": pl.String(),
    "event_id": pl.String(),
    "email": pl.String(),
    "name": pl.String(),
    "response_status": pl.String(),
}

FREE_MAIL_DOMAINS = ("gmail.com", "googlemail.com", "yahoo.com", "outlook.com", "hotmail.com")

# ---------------------------------------------------------------------------------------------
# Vocabulary. Non-ASCII names and subjects are deliberate: they exercise header encoding.
# ---------------------------------------------------------------------------------------------
_MEMBER_NAMES = [
    ("Alice", "Smith"),
    ("Bob", "Jones"),
    ("Carol", "Nguyen"),
    ("Dave", "Miller"),
    ("Erin", "Okafor"),
    ("Frank", "Rossi"),
    ("Grace", "Lee"),
    ("Heidi", "Berg"),
    ("Ivan", "Petrov"),
    ("Judy", "Garcia"),
    ("Mallory", "Chen"),
    ("Niaj", "Patel"),
]
# (display, ascii used in the local part)
_FIRST = [
    ("James", "james"),
    ("Mary", "mary"),
    ("Jane", "jane"),
    ("John", "john"),
    ("Priya", "priya"),
    ("Wei", "wei"),
    ("José", "jose"),
    ("Zoë", "zoe"),
    ("Chloé", "chloe"),
    ("Mohammed", "mohammed"),
    ("Fatima", "fatima"),
    ("Liam", "liam"),
    ("Olivia", "olivia"),
    ("Noah", "noah"),
    ("Emma", "emma"),
    ("Lukas", "lukas"),
    ("Sofía", "sofia"),
    ("Hiroshi", "hiroshi"),
    ("Yuki", "yuki"),
    ("Anna", "anna"),
    ("Ole", "ole"),
    ("Søren", "soren"),
    ("François", "francois"),
    ("Aisha", "aisha"),
    ("Carlos", "carlos"),
    ("Elena", "elena"),
    ("David", "david"),
    ("Sarah", "sarah"),
    ("Michael", "michael"),
    ("Laura", "laura"),
    ("Tom", "tom"),
    ("Ana", "ana"),
    ("Raj", "raj"),
    ("Mei", "mei"),
    ("Ivan", "ivan"),
    ("Olga", "olga"),
    ("Kwame", "kwame"),
    ("Amara", "amara"),
    ("Mateo", "mateo"),
    ("Isabella", "isabella"),
    ("Lars", "lars"),
    ("Ingrid", "ingrid"),
    ("Patrick", "patrick"),
    ("Siobhán", "siobhan"),
    ("Ahmed", "ahmed"),
    ("Leila", "leila"),
    ("Daniel", "daniel"),
    ("Grace", "grace"),
    ("Peter", "peter"),
    ("Julia", "julia"),
    ("Marta", "marta"),
    ("Kenji", "kenji"),
    ("Nadia", "nadia"),
    ("Oscar", "oscar"),
    ("Rosa", "rosa"),
    ("Samuel", "samuel"),
    ("Tariq", "tariq"),
    ("Uma", "uma"),
    ("Viktor", "viktor"),
    ("Wanjiru", "wanjiru"),
]
_LAST = [
    ("Smith", "smith"),
    ("Doe", "doe"),
    ("Johnson", "johnson"),
    ("Williams", "williams"),
    ("Brown", "brown"),
    ("García", "garcia"),
    ("Müller", "mueller"),
    ("Schmidt", "schmidt"),
    ("Nguyễn", "nguyen"),
    ("Kim", "kim"),
    ("Patel", "patel"),
    ("Singh", "singh"),
    ("O'Brien", "obrien"),
    ("Rossi", "rossi"),
    ("Dubois", "dubois"),
    ("Tanaka", "tanaka"),
    ("Sato", "sato"),
    ("Kowalski", "kowalski"),
    ("Novak", "novak"),
    ("Jensen", "jensen"),
    ("Hansen", "hansen"),
    ("Silva", "silva"),
    ("Santos", "santos"),
    ("Ivanova", "ivanova"),
    ("Chen", "chen"),
    ("Wang", "wang"),
    ("Li", "li"),
    ("Okafor", "okafor"),
    ("Mensah", "mensah"),
    ("Haddad", "haddad"),
    ("Cohen", "cohen"),
    ("Levi", "levi"),
    ("Martin", "martin"),
    ("Bernard", "bernard"),
    ("Fischer", "fischer"),
    ("Weber", "weber"),
    ("Taylor", "taylor"),
    ("Anderson", "anderson"),
    ("Thomas", "thomas"),
    ("Moore", "moore"),
    ("Van der Berg", "vanderberg"),
    ("de la Cruz", "delacruz"),
    ("Núñez", "nunez"),
    ("Åberg", "aberg"),
    ("Lindqvist", "lindqvist"),
    ("Murphy", "murphy"),
    ("Kelly", "kelly"),
    ("Walsh", "walsh"),
    ("Ali", "ali"),
    ("Khan", "khan"),
    ("Yilmaz", "yilmaz"),
    ("Kaya", "kaya"),
    ("Horvat", "horvat"),
    ("Popescu", "popescu"),
    ("Nagy", "nagy"),
    ("Costa", "costa"),
    ("Ferreira", "ferreira"),
    ("Ahmed", "ahmed"),
    ("Park", "park"),
    ("Choi", "choi"),
]
# Fixed companies first so every workspace has the awkward cases the transforms must handle:
# a multi-level public suffix, subdomain senders and hyphenated names.
_ANCHORS = [
    ("acme-corp", "co.uk", "mail.eu."),
    ("globex", "com", "mail."),
    ("initech", "io", ""),
    ("umbrella-group", "com.au", "au."),
    ("northwind", "de", ""),
]
_SINGLES = [
    "hooli",
    "stark",
    "wayne",
    "wonka",
    "tyrell",
    "cyberdyne",
    "soylent",
    "oscorp",
    "vandelay",
    "dunder",
    "aperture",
    "nakatomi",
    "wernham",
    "contoso",
    "fabrikam",
    "tailspin",
    "litware",
    "proseware",
    "lucerne",
    "kestrel",
    "lumen",
    "nimbus",
    "quartz",
    "zephyr",
    "vertex",
    "indigo",
    "juniper",
    "ember",
    "tundra",
    "orbit",
]
_WORDS1 = [
    "blue",
    "bright",
    "cedar",
    "silver",
    "north",
    "red",
    "green",
    "iron",
    "clear",
    "swift",
    "bold",
    "true",
    "deep",
    "high",
    "open",
    "prime",
    "smart",
    "urban",
    "alpine",
    "coastal",
    "golden",
    "rapid",
    "solid",
    "lunar",
    "polar",
    "quiet",
    "royal",
    "sunny",
    "vivid",
    "wild",
]
_WORDS2 = [
    "fjord",
    "harbor",
    "peak",
    "river",
    "stone",
    "bridge",
    "field",
    "forge",
    "grove",
    "haven",
    "labs",
    "leaf",
    "line",
    "works",
    "point",
    "ridge",
    "rock",
    "sky",
    "wave",
    "wood",
    "bay",
    "path",
    "gate",
    "mill",
    "crest",
    "spark",
    "cloud",
    "data",
    "logic",
    "metrics",
]
_SUFFIXES = [
    "",
    "-corp",
    "-group",
    "-labs",
    "-tech",
    "-systems",
    "-partners",
    "-global",
    "hq",
    "-ventures",
]
_TLDS = [
    "com",
    "io",
    "co.uk",
    "de",
    "fr",
    "com.au",
    "co.jp",
    "net",
    "ai",
    "nl",
    "ca",
    "es",
    "com.br",
    "ch",
]
_TLD_P = [0.45, 0.08, 0.10, 0.07, 0.05, 0.04, 0.02, 0.04, 0.03, 0.03, 0.03, 0.02, 0.02, 0.02]
_SUBDOMAINS = ["mail.", "eu.", "us.", "mail.eu.", "corp.", "uk.", "emea."]
_FREE_P = [0.50, 0.06, 0.16, 0.14, 0.14]

_EXT_A = [
    "Quick question about",
    "Follow-up on",
    "Proposal for",
    "Next steps on",
    "Intro:",
    "Pricing for",
    "Contract review:",
    "Notes from our call on",
    "Feedback on",
    "Invoice for",
    "Re-connecting on",
    "Timeline for",
    "Kick-off:",
    "Update on",
    "Questions about",
    "Angebot für",
    "Suivi :",
    "Agenda for",
]
_EXT_B = [
    "the pilot",
    "the renewal",
    "Q3 roadmap",
    "onboarding",
    "API access",
    "the Berlin offsite",
    "your proposal",
    "pricing tiers",
    "the integration",
    "SSO setup",
    "the data export",
    "next quarter",
    "the contract",
    "security review",
    "the partnership",
    "données clients",
    "Zusammenarbeit 2026",
    "the case study",
    "our demo",
    "the PoC ☕",
]
_INT_SUBJ = [
    "Standup notes",
    "Lunch?",
    "Hiring: backend role",
    "Board deck draft",
    "Q3 pipeline review",
    "Offsite logistics",
    "Customer escalation",
    "Expense report",
    "Team retro",
    "Roadmap brainstorm",
    "Deal desk: discount approval",
    "Heads-up: prod incident",
]
_NEWS_HEAD = [
    "5 things you missed this week",
    "Product update: new dashboards",
    "Your monthly digest",
    "Webinar invite: scaling sales ops",
    "Last chance: 30% off annual plans",
    "What's new in March",
    "Les nouveautés du mois",
    "Top stories for you",
]
_NOTIF_SUBJ = [
    "Your invoice is ready",
    "Security alert: new sign-in",
    "Password reset requested",
    "Your weekly report",
    "Payment received – thank you",
    "New comment on your document",
    "Your order has shipped",
    "Action required: verify your email",
    "A new SSH key was added to your account",
    "Your subscription renews soon",
]
_DAEMON_SUBJ = [
    "Delivery Status Notification (Failure)",
    "Undelivered Mail Returned to Sender",
    "Mail delivery failed: returning message to sender",
]
_GREET = ["Hi", "Hello", "Hey", "Dear", "Hi", "Bonjour", "Hallo"]
_S1 = [
    "Thanks for the quick reply.",
    "Following up on our conversation from last week.",
    "Hope you're well.",
    "Great speaking with you earlier.",
    "Just checking in on this.",
    "Merci pour votre retour — à bientôt.",
    "Danke für die schnelle Antwort.",
    "Sorry for the delay here.",
]
_S2 = [
    "Could you send over the latest numbers?",
    "Let me know what works for a call next week.",
    "I've attached the draft for your review.",
    "Happy to jump on a call if easier.",
    "We're aligned on the next steps.",
    "Can we move this to Thursday?",
    "Looping in my colleague for visibility.",
    "Looks good to me 👍",
]
_SIGN = ["Best,", "Thanks,", "Cheers,", "Kind regards,", "Best regards,", "Talk soon,"]
_NEWS_BODY = [
    "Read this issue online. You are receiving this because you subscribed.",
    "View in browser. Manage your preferences or unsubscribe at any time.",
]
_NOTIF_BODY = [
    "This is an automated message. Please do not reply.",
    "You are receiving this notification because of your account settings.",
]
_DAEMON_BODY = [
    "Address not found. Your message wasn't delivered because the address couldn't be found.",
    "I'm sorry to have to inform you that your message could not be delivered.",
]
_OOO_BODY = [
    "I am out of the office with limited access to email and will reply when I return.",
    "Je suis absente du bureau jusqu'à lundi. Je vous répondrai à mon retour.",
]

# Roles, in participant-row order.
ROLES = ("from", "to", "cc", "bcc", "reply_to")
_FROM, _TO, _CC, _BCC, _REPLY_TO = range(5)

# Thread categories.
_OUT, _IN, _NEWS, _LIST, _NOTIF, _DAEMON, _INT, _INTCC = range(8)
_NCAT = 8
# Share of mailbox copies per category (DESIGN traffic mix): external person-to-person mail
# (sent and received, including reply threads) ~75%, newsletters 7% + lists 3%,
# notifications 4% + bounces 1%, internal-only 8%, internal with an external cc'd 2%.
_TARGET = np.array([0.375, 0.375, 0.07, 0.03, 0.04, 0.01, 0.08, 0.02])
_EXT_L = np.array([0.5, 0.2, 0.12, 0.07, 0.05, 0.03, 0.02, 0.01])  # thread length 1..8
_INT_L = np.array([0.45, 0.25, 0.13, 0.08, 0.05, 0.04])
_ONE_L = np.array([1.0])
_L_PMF = [_EXT_L, _EXT_L, _ONE_L, _ONE_L, _ONE_L, _ONE_L, _INT_L, _INT_L]
_EXTRA_PMF = np.array([0.18, 0.20, 0.17, 0.13, 0.10, 0.07, 0.05, 0.04, 0.03, 0.03])
_INT_K_PMF = np.array([0.7, 0.2, 0.1])  # 2, 3 or 4 members on an internal thread
_P_SECOND_MEMBER = 0.06  # external thread where a teammate is cc'd (copy in both mailboxes)

_NV = 4  # email variants per entity: canonical, Case-Varied, gmail dots, gmail +tag
_NN = 4  # name variants: "First Last", "Last, First", null, the address itself
_NAME_P = np.array([0.74, 0.06, 0.14, 0.06])

_LABELS = [
    ["SENT"],
    ["INBOX"],
    ["INBOX", "UNREAD"],
    ["INBOX", "CATEGORY_PROMOTIONS"],
    ["INBOX", "UNREAD", "CATEGORY_PROMOTIONS"],
    ["INBOX", "CATEGORY_UPDATES"],
    ["INBOX", "UNREAD", "CATEGORY_UPDATES"],
]

_MASK64 = (1 << 64) - 1
_CHUNK = 1 << 18  # mailbox copies per participant-building slice
_DAY = 86_400


# ---------------------------------------------------------------------------------------------
# Public types
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticMember:
    email: str
    name: str
    aliases: tuple[str, ...]


@dataclass(eq=False)
class _Population:
    """The address book every message and event draws from (kept so deltas reuse it)."""

    seed: int
    key: int  # id-mixing key, shared by every delta of the workspace
    n_members: int
    member_weights: np.ndarray
    member_of: np.ndarray  # member index or -1
    company_of: np.ndarray  # company index or -1
    varies: np.ndarray  # gmail contact written with dot/+tag variants
    emails: pl.Series  # n_entities * _NV, entity-major
    names: pl.Series  # n_entities * _NN, entity-major, nullable
    first: pl.Series  # greeting name
    first_vocab: list[str]  # distinct greeting names, for pre-built body fragments
    first_idx: np.ndarray  # per entity, into first_vocab
    label: pl.Series  # company name for company people, else display name
    rfc_host: pl.Series  # right-hand side of Message-IDs this entity sends
    list_id: pl.Series  # List-Id for newsletter/list entities, else null
    list_unsub: pl.Series
    persons: np.ndarray  # entity ids of external people
    zipf_p: np.ndarray  # contact-rank probabilities
    perms: np.ndarray  # (1 + n_members, n_persons): shared ranking, then one per member
    comp_people: np.ndarray  # company people's entity ids grouped by company
    comp_start: np.ndarray
    comp_size: np.ndarray
    newsletters: np.ndarray
    nl_support: np.ndarray  # Reply-To entity per newsletter
    lists: np.ndarray
    notifiers: np.ndarray
    daemons: np.ndarray


@dataclass(eq=False)  # frames do not compare with ==; use polars.testing.assert_frame_equal
class SyntheticWorkspace:
    """A team's mail and calendars, column-wise (schemas: MESSAGE_SCHEMA and friends).

    `messages` has one row per copy in a member's mailbox; `participants` one row per
    (mailbox, message_id, role, address as written); `events`/`attendees` one row per copy
    in a member attendee's calendar.
    """

    domain: str
    members: list[SyntheticMember]
    messages: pl.DataFrame
    participants: pl.DataFrame
    events: pl.DataFrame
    attendees: pl.DataFrame
    # Extensions: the population and id counter that `generate_delta` continues from.
    population: _Population | None = field(default=None, repr=False)
    seed: int = 0
    next_id: int = 0


# ---------------------------------------------------------------------------------------------
# Small vectorised helpers
# ---------------------------------------------------------------------------------------------
def _mix(x: np.ndarray, key: int) -> np.ndarray:
    """Bijective 64-bit mix (splitmix64 finaliser): distinct counters give distinct ids."""
    z = x.astype(np.uint64) + np.uint64((key * 0x9E3779B97F4A7C15) & _MASK64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _counters(n: int, base: int) -> np.ndarray:
    """base, base+1, ... as uint64 (wrapping), the input of `_mix` for one id namespace."""
    with np.errstate(over="ignore"):
        return np.arange(n, dtype=np.uint64) + np.uint64(base & _MASK64)


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _hex(x: np.ndarray, width: int = 16) -> pl.Series:
    """Lower-case hex strings of uint64 values, built as one Arrow buffer (no Python loop)."""
    n = len(x)
    b = np.ascontiguousarray(x, dtype=np.uint64).astype(">u8").view(np.uint8).reshape(n, 8)
    out = np.empty((n, 16), dtype=np.uint8)
    out[:, 0::2] = _HEX[b >> 4]
    out[:, 1::2] = _HEX[b & 15]
    data = np.ascontiguousarray(out[:, :width])
    offsets = np.arange(0, width * (n + 1), width, dtype=np.int64)
    arr = pa.Array.from_buffers(
        pa.large_string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    return pl.Series(pl.from_arrow(arr)).cast(pl.String)


def _zipf(n: int, s: float, q: float = 0.0) -> np.ndarray:
    """Zipf-Mandelbrot probabilities p(k) ~ 1 / (k + q) ** s for ranks k = 1..n."""
    w = 1.0 / (np.arange(1, n + 1, dtype=np.float64) + q) ** s
    return w / w.sum()


def _segments(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, rank) for a ragged expansion: owner i repeated lengths[i] times, rank 0.."""
    lengths = lengths.astype(np.int64)
    owner = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    starts = np.cumsum(lengths) - lengths
    rank = np.arange(len(owner), dtype=np.int64) - starts[owner]
    return owner, rank


def _take(series: pl.Series, idx: np.ndarray) -> pl.Series:
    """series[idx]; a UInt32 index skips Polars' slow int64-from-numpy index conversion."""
    return series.gather(pl.Series(np.asarray(idx).astype(np.uint32)))


def _pick(vocab: list[str], idx: np.ndarray) -> pl.Series:
    return _take(pl.Series(vocab, dtype=pl.String), idx)


def _datetimes(us: np.ndarray) -> pl.Series:
    return pl.Series(us.astype(np.int64)).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def _epoch_s(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


def _seed_hash(*parts: int) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


# ---------------------------------------------------------------------------------------------
# Population
# ---------------------------------------------------------------------------------------------
def _case_variant(email: pl.Expr) -> pl.Expr:
    """ "jane.doe@acme.com" -> "Jane.Doe@Acme.com": how people retype addresses."""
    return pl.concat_str(
        email.str.extract(r"^(.*)@", 1).str.to_titlecase(),
        pl.lit("@"),
        email.str.extract(r"@(.)", 1).str.to_uppercase(),
        email.str.extract(r"@.(.*)$", 1),
    )


def _build_population(
    n_people: int, n_members: int, domain: str, seed: int
) -> tuple[_Population, list[SyntheticMember]]:
    rng = np.random.default_rng([seed, 0x9E0])
    emails: list[str] = []
    dots: list[str | None] = []
    pluses: list[str | None] = []
    displays: list[str | None] = []
    last_firsts: list[str | None] = []
    first: list[str] = []
    label: list[str] = []
    host_of: list[str] = []
    member_of: list[int] = []
    company_of: list[int] = []
    varies: list[bool] = []
    list_ids: list[str | None] = []
    list_unsubs: list[str | None] = []
    used: dict[str, int] = {}

    def add(
        email: str,
        display: str | None,
        *,
        greet: str = "",
        lab: str | None = None,
        rfc_host: str | None = None,
        member: int = -1,
        company: int = -1,
        variants: tuple[str, str] | None = None,
        last_first: str | None = None,
        list_id: str | None = None,
        list_unsub: str | None = None,
    ) -> int:
        used[email.lower()] = len(emails)
        emails.append(email)
        dots.append(variants[0] if variants else None)
        pluses.append(variants[1] if variants else None)
        displays.append(display)
        last_firsts.append(last_first or display)
        first.append(greet)
        label.append(lab or display or email)
        host_of.append(rfc_host or email.split("@", 1)[1].lower())
        member_of.append(member)
        company_of.append(company)
        varies.append(variants is not None)
        list_ids.append(list_id)
        list_unsubs.append(list_unsub)
        return len(emails) - 1

    # Members: primary addresses first, then one alias each, so entity i / n_members + i.
    members: list[SyntheticMember] = []
    member_rows = []
    for i in range(n_members):
        if i < len(_MEMBER_NAMES):
            fn, ln = _MEMBER_NAMES[i]
            primary, alias = f"{fn.lower()}@{domain}", f"{fn[0].lower()}.{ln.lower()}@{domain}"
        else:
            fn, ln = f"Member{i}", "Team"
            primary, alias = f"member{i}@{domain}", f"m{i}.team@{domain}"
        members.append(SyntheticMember(primary, f"{fn} {ln}", (alias,)))
        member_rows.append((fn, ln, primary, alias))
    for i, (fn, ln, primary, _) in enumerate(member_rows):
        add(
            primary,
            f"{fn} {ln}",
            greet=fn,
            member=i,
            last_first=f"{ln}, {fn}",
            rfc_host=domain,
        )
    for i, (fn, ln, _, alias) in enumerate(member_rows):
        add(
            alias,
            f"{fn} {ln}",
            greet=fn,
            member=i,
            last_first=f"{ln}, {fn}",
            rfc_host=domain,
        )

    # Companies: anchors, then shuffled made-up labels; numbered labels beyond the vocabulary.
    n_company_people = round(n_people * 0.72)
    n_comp = max(10, round(n_company_people / 6))
    anchor_labels = {a[0] for a in _ANCHORS}
    pool = [w + s for w in _SINGLES for s in _SUFFIXES]
    pool += [a + b + s for a in _WORDS1 for b in _WORDS2 for s in _SUFFIXES if s != "hq"]
    pool += [f"{a}-{b}" for a in _WORDS1 for b in _WORDS2]
    pool = [p for p in dict.fromkeys(pool) if p not in anchor_labels]
    order = rng.permutation(len(pool))
    n_rand = n_comp - len(_ANCHORS)
    labels = [pool[i] for i in order[:n_rand]]
    labels += [f"{pool[order[i % len(pool)]]}{i}" for i in range(len(labels), n_rand)]
    tlds = rng.choice(len(_TLDS), n_rand, p=_TLD_P)
    subs = np.where(rng.random(n_rand) < 0.12, rng.integers(0, len(_SUBDOMAINS), n_rand), -1)
    comp_domain = [f"{a}.{t}" for a, t, _ in _ANCHORS]
    comp_sub = [s for _, _, s in _ANCHORS]
    comp_domain += [f"{lab}.{_TLDS[t]}" for lab, t in zip(labels, tlds, strict=True)]
    comp_sub += [_SUBDOMAINS[s] if s >= 0 else "" for s in subs]
    # The workspace's own domain is internal: never let an external company share it.
    comp_domain = [d if d != domain.lower() else "ext-" + d for d in comp_domain]
    comp_name = [" ".join(w.capitalize() for w in d.split(".")[0].split("-")) for d in comp_domain]

    # People at companies: company sizes are Zipf-skewed (anchors are the biggest).
    n_free = n_people - n_company_people
    comp_pick = rng.choice(n_comp, n_company_people, p=_zipf(n_comp, 0.7))
    fi = rng.integers(0, len(_FIRST), n_people)
    li = rng.integers(0, len(_LAST), n_people)
    form = rng.choice(6, n_people, p=[0.5, 0.2, 0.1, 0.05, 0.05, 0.1])
    use_sub = rng.random(n_people) < 0.4
    seen_names: set[tuple[int, int, int]] = set()

    def local_for(f: str, la: str, code: int) -> str:
        return (f"{f}.{la}", f"{f[0]}{la}", f, f"{f}_{la}", f"{f}{la[0]}", f"{f}{la}")[code]

    def unique(local: str, host: str) -> str:
        email, n = f"{local}@{host}", 1
        while email in used:
            n += 1
            email = f"{local}{n}@{host}"
        return email

    company_people: list[tuple[int, int]] = []  # (entity, company)
    for j in range(n_company_people):
        c = int(comp_pick[j])
        f, la = int(fi[j]), int(li[j])
        for _ in range(20):  # distinct full names within a company (a false merge is worse)
            if (c, f, la) not in seen_names:
                break
            f, la = int(rng.integers(len(_FIRST))), int(rng.integers(len(_LAST)))
        seen_names.add((c, f, la))
        (fd, fa), (ld, lasc) = _FIRST[f], _LAST[la]
        host = comp_sub[c] + comp_domain[c] if comp_sub[c] and use_sub[j] else comp_domain[c]
        email = unique(local_for(fa, lasc, int(form[j])), host)
        e = add(
            email,
            f"{fd} {ld}",
            greet=fd,
            lab=comp_name[c],
            company=c,
            last_first=f"{ld}, {fd}",
        )
        company_people.append((e, c))
        if rng.random() < 0.02:  # the same person under a second address at the company
            alt_host = comp_sub[c] + comp_domain[c] if comp_sub[c] else comp_domain[c]
            alt = unique(local_for(fa, lasc, (int(form[j]) + 1) % 5), alt_host)
            e2 = add(
                alt,
                f"{fd} {ld}",
                greet=fd,
                lab=comp_name[c],
                company=c,
                last_first=f"{ld}, {fd}",
            )
            company_people.append((e2, c))

    free_dom = rng.choice(len(FREE_MAIL_DOMAINS), n_free, p=_FREE_P)
    free_form = rng.choice(4, n_free, p=[0.35, 0.25, 0.15, 0.25])
    nn = rng.integers(70, 100, n_free)
    vary = rng.random(n_free) < 0.15
    tags = ["work", "crm", "news", "sales"]
    free_people: list[int] = []
    for j in range(n_free):
        k = n_company_people + j
        (fd, fa), (ld, lasc) = _FIRST[int(fi[k])], _LAST[int(li[k])]
        host = FREE_MAIL_DOMAINS[int(free_dom[j])]
        gmail = host in ("gmail.com", "googlemail.com")
        code = int(free_form[j])
        local = (f"{fa}.{lasc}", f"{fa}{lasc}", f"{fa}_{lasc}", f"{fa}{lasc}{int(nn[j])}")[code]
        email = unique(local, host)
        variants = None
        if gmail and vary[j] and code < 2:
            loc = email.split("@", 1)[0]
            dotted = loc.replace(".", "") if "." in loc else f"{fa}.{loc[len(fa) :]}"
            tag = tags[j % len(tags)]
            variants = (f"{dotted}@{host}", f"{loc}+{tag}@{host}")
        e = add(
            email,
            f"{fd} {ld}",
            greet=fd,
            last_first=f"{ld}, {fd}",
            rfc_host="mail.gmail.com" if gmail else host,
            variants=variants,
        )
        free_people.append(e)

    # Service senders.
    n_nl = max(4, n_comp // 12)
    newsletters, nl_support = [], []
    nl_comp = rng.integers(0, n_comp, n_nl)
    for j in range(n_nl):
        c = int(nl_comp[j])
        dom, cname = comp_domain[c], comp_name[c]
        host = ["news.", "mail.", "e.", "email.", ""][j % 5] + dom
        local = ["newsletter", "news", "hello", "digest", "updates", "team"][j % 6]
        email = unique(local, host)
        loc, host = email.split("@", 1)
        lid = (
            f"<{loc}.{host}>" if j % 3 else f"<{int(rng.integers(10**8, 10**9))}.list-id.mcsv.net>"
        )
        title = ["Weekly", "Digest", "News", "Insider", "Briefing"][j % 5]
        newsletters.append(
            add(
                email,
                f"{cname} {title}",
                rfc_host=host,
                list_id=lid,
                list_unsub=f"<mailto:unsubscribe@{host}>, <https://{host}/unsubscribe?l={j}>",
            )
        )
        support = f"support@{dom}"
        nl_support.append(
            add(support, f"{cname} Support") if support not in used else used[support]
        )
    topics = [
        "eng-discuss",
        "product-users",
        "sales-ops",
        "devrel",
        "security-announce",
        "design-crit",
        "data-eng",
        "founders",
    ]
    lists = []
    for j in range(max(2, min(40, n_comp // 30))):
        topic = topics[j % len(topics)] + (str(j // len(topics)) if j >= len(topics) else "")
        if j % 5 < 3:
            addr, lid = f"{topic}@googlegroups.com", f"<{topic}.googlegroups.com>"
            unsub = f"<mailto:{topic}+unsubscribe@googlegroups.com>"
        else:
            dom = comp_domain[int(rng.integers(n_comp))]
            addr, lid = f"{topic}@lists.{dom}", f"<{topic}.lists.{dom}>"
            unsub = f"<mailto:{topic}-leave@lists.{dom}>"
        if addr not in used:
            lists.append(add(addr, topic, lab=topic, list_id=lid, list_unsub=unsub))
    notifiers = [
        add(e, nm)
        for e, nm in [
            ("notifications@github.com", "GitHub"),
            ("no-reply@accounts.google.com", "Google"),
            ("noreply@zoom.us", "Zoom"),
            ("no-reply@slack.com", "Slack"),
        ]
    ]
    locals_ = ["no-reply", "noreply", "notifications", "do-not-reply", "alerts", "donotreply"]
    for j in range(max(4, n_comp // 10)):
        c = int(rng.integers(n_comp))
        host = ["", "mail.", "notify."][j % 3] + comp_domain[c]
        email = f"{locals_[j % len(locals_)]}@{host}"
        if email not in used:
            display = [comp_name[c], f"{comp_name[c]} Notifications", None][j % 3]
            notifiers.append(add(email, display, lab=comp_name[c]))
    daemons = [add("mailer-daemon@googlemail.com", "Mail Delivery Subsystem")]
    for c in range(min(3, n_comp)):
        for email in (f"MAILER-DAEMON@mx.{comp_domain[c]}", f"postmaster@{comp_domain[c]}"):
            daemons.append(add(email, "Mail Delivery System"))

    persons = np.array([e for e, _ in company_people] + free_people, dtype=np.int64)
    cp = np.array(company_people, dtype=np.int64).reshape(-1, 2)
    comp_size = np.bincount(cp[:, 1], minlength=n_comp).astype(np.int64)
    n_persons = len(persons)
    # Rankings of contacts: one shared, and one per member that perturbs it, so members share
    # key accounts but each has their own close contacts, and the long tail stays a tail.
    shared = rng.permutation(n_persons)
    rank_of = np.empty(n_persons, dtype=np.int64)
    rank_of[shared] = np.arange(n_persons)
    # Company people in order of activity, so the colleagues who get cc'd are the busy ones.
    by_comp = np.lexsort((rank_of[: len(cp)], cp[:, 1]))
    log_rank = np.log1p(np.arange(n_persons))
    perms = np.stack(
        [shared]
        + [shared[np.argsort(log_rank + rng.normal(0, 1.0, n_persons))] for _ in range(n_members)]
    )
    # Entity-major variant tables: row e * _NV + v is variant v of entity e.
    book = pl.DataFrame(
        {"e": emails, "dot": dots, "plus": pluses, "d": displays, "lf": last_firsts},
        schema={c: pl.String for c in ("e", "dot", "plus", "d", "lf")},
    )
    e = pl.col("e")
    email_variants = book.select(
        v=pl.concat_list(e, _case_variant(e), pl.coalesce("dot", e), pl.coalesce("plus", e))
    ).explode("v")["v"]
    name_variants = book.select(
        v=pl.concat_list("d", "lf", pl.lit(None, dtype=pl.String), e)
    ).explode("v")["v"]
    first_vocab = sorted(set(first))
    first_pos = {f: i for i, f in enumerate(first_vocab)}
    pop = _Population(
        seed=seed,
        key=_seed_hash(seed, 0x1D) & _MASK64,
        n_members=n_members,
        member_weights=_zipf(n_members, 0.5),
        member_of=np.array(member_of, dtype=np.int64),
        company_of=np.array(company_of, dtype=np.int64),
        varies=np.array(varies, dtype=bool),
        emails=email_variants,
        names=name_variants,
        first=pl.Series(first, dtype=pl.String),
        first_vocab=first_vocab,
        first_idx=np.array([first_pos[f] for f in first], dtype=np.int64),
        label=pl.Series(label, dtype=pl.String),
        rfc_host=pl.Series(host_of, dtype=pl.String),
        list_id=pl.Series(list_ids, dtype=pl.String),
        list_unsub=pl.Series(list_unsubs, dtype=pl.String),
        persons=persons,
        # A flattened head (q) so the closest contact has a few percent of the mail, and a
        # steep tail so most of the population appears in only one or two messages.
        zipf_p=_zipf(n_persons, 1.6, 15.0),
        perms=perms,
        comp_people=cp[by_comp, 0],
        comp_start=np.cumsum(comp_size) - comp_size,
        comp_size=comp_size,
        newsletters=np.array(newsletters, dtype=np.int64),
        nl_support=np.array(nl_support, dtype=np.int64),
        lists=np.array(lists, dtype=np.int64),
        notifiers=np.array(notifiers, dtype=np.int64),
        daemons=np.array(daemons, dtype=np.int64),
    )
    return pop, members


# ---------------------------------------------------------------------------------------------
# Sampling helpers on the population
# ---------------------------------------------------------------------------------------------
def _contacts(pop: _Population, rng: np.random.Generator, member: np.ndarray) -> np.ndarray:
    """Zipf-skewed external contacts: 40% from a shared ranking, else the member's own."""
    n = len(member)
    rank = rng.choice(len(pop.persons), n, p=pop.zipf_p)
    row = np.where(rng.random(n) < 0.4, 0, member + 1)
    return pop.persons[pop.perms[row, rank]]


def _colleagues(
    pop: _Population, rng: np.random.Generator, of: np.ndarray, member: np.ndarray
) -> np.ndarray:
    """Often one of the most active colleagues of `of` at its company, else another contact."""
    comp = pop.company_of[of]
    safe = np.where(comp >= 0, comp, 0)
    offset = rng.exponential(2.0, len(of)).astype(np.int64)
    use = (comp >= 0) & (offset < pop.comp_size[safe]) & (rng.random(len(of)) < 0.5)
    mate = pop.comp_people[np.minimum(pop.comp_start[safe] + offset, len(pop.comp_people) - 1)]
    return np.where(use, mate, _contacts(pop, rng, member))


def _other_member(rng: np.random.Generator, m: np.ndarray, nm: int) -> np.ndarray:
    return (m + 1 + rng.integers(0, max(nm - 1, 1), len(m))) % nm


def _choice(rng: np.random.Generator, k: int, n: int, s: float = 1.0) -> np.ndarray:
    return rng.choice(k, n, p=_zipf(k, s))


# ---------------------------------------------------------------------------------------------
# Mail
# ---------------------------------------------------------------------------------------------
def _draw_threads(
    rng: np.random.Generator, n: int, nm: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thread category, length and mailbox count, cut so the copies add up to exactly n."""
    mean_l = np.array([(pmf * np.arange(1, len(pmf) + 1)).sum() for pmf in _L_PMF])
    ks = np.minimum(np.arange(2, 5), nm)
    mean_mb = np.array([1.0] * _NCAT)
    mean_mb[[_OUT, _IN]] = 1 + (_P_SECOND_MEMBER if nm >= 2 else 0)
    mean_mb[_INT] = (_INT_K_PMF * ks).sum()
    mean_mb[_INTCC] = 2
    w = _TARGET / (mean_l * mean_mb)
    if nm < 2:
        w[[_INT, _INTCC]] = 0
    probs = w / w.sum()
    per_thread = (probs * mean_l * mean_mb).sum()
    size = int(n / per_thread * 1.15) + 32
    while True:
        cat = rng.choice(_NCAT, size, p=probs)
        length = np.ones(size, dtype=np.int64)
        for c in range(_NCAT):
            sel = np.flatnonzero(cat == c)
            pmf = _L_PMF[c]
            length[sel] = rng.choice(len(pmf), len(sel), p=pmf) + 1
        nmb = np.ones(size, dtype=np.int64)
        if nm >= 2:
            ext = (cat == _OUT) | (cat == _IN)
            nmb[ext & (rng.random(size) < _P_SECOND_MEMBER)] = 2
            sel = np.flatnonzero(cat == _INT)
            nmb[sel] = ks[rng.choice(3, len(sel), p=_INT_K_PMF)]
            nmb[cat == _INTCC] = 2
        cs = np.cumsum(length * nmb)
        if len(cs) and cs[-1] >= n:
            break
        size *= 2
    keep = int(np.searchsorted(cs, n, side="right"))
    rest = n - (int(cs[keep - 1]) if keep else 0)
    # Single-copy, single-message threads fill the remainder so the height is exact.
    fill = np.array([_IN, _OUT, _NOTIF, _NEWS])[rng.choice(4, rest, p=[0.4, 0.4, 0.1, 0.1])]
    cat = np.concatenate([cat[:keep], fill])
    length = np.concatenate([length[:keep], np.ones(rest, dtype=np.int64)])
    nmb = np.concatenate([nmb[:keep], np.ones(rest, dtype=np.int64)])
    return cat, length, nmb


class _Slots:
    """Accumulates (thread, order, entity, role) pieces, then sorts and de-duplicates them."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(
        self, thread: np.ndarray, order: int | np.ndarray, ent: np.ndarray, role: int | np.ndarray
    ) -> None:
        n = len(thread)
        self.parts.append(
            (
                thread.astype(np.int64),
                np.broadcast_to(np.asarray(order, dtype=np.int64), (n,)),
                ent.astype(np.int64),
                np.broadcast_to(np.asarray(role, dtype=np.int64), (n,)),
            )
        )

    def build(self, n_threads: int) -> tuple[np.ndarray, ...]:
        if self.parts:
            t, o, e, r = (np.concatenate(x) for x in zip(*self.parts, strict=True))
        else:
            t = o = e = r = np.zeros(0, dtype=np.int64)
        idx = np.argsort(t * 1024 + (o + 1), kind="stable")  # orders span -1..~100
        t, e, r = t[idx], e[idx], r[idx]
        # An address appears once per message: keep its first (lowest-order) slot. Threads
        # have a handful of slots, so comparing with the few previous rows beats a sort.
        count = np.bincount(t, minlength=n_threads).astype(np.int64)
        dup = np.zeros(len(t), dtype=bool)
        for d in range(1, int(count.max(initial=1))):
            dup[d:] |= (t[d:] == t[:-d]) & (e[d:] == e[:-d])
        t, e, r = t[~dup], e[~dup], r[~dup]
        count = np.bincount(t, minlength=n_threads).astype(np.int64)
        return t, e, r, count, np.cumsum(count) - count


def _gen_mail(
    pop: _Population,
    n: int,
    rng: np.random.Generator,
    start_s: int,
    end_s: int,
    id_base: int,
    members: pl.Series,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    nm = pop.n_members
    cat, length, nmb = _draw_threads(rng, n, nm)
    nt = len(cat)
    tid = np.arange(nt, dtype=np.int64)
    m = rng.choice(nm, nt, p=pop.member_weights)
    maddr = np.where(rng.random(nt) < 0.1, nm + m, m)  # 10% of threads use the alias
    slots = _Slots()
    mb_t: list[np.ndarray] = [tid]
    mb_m: list[np.ndarray] = [m]
    mb_o: list[np.ndarray] = [np.zeros(nt, dtype=np.int64)]

    # External person-to-person threads, started by the member (OUT) or the contact (IN).
    ext = np.flatnonzero((cat == _OUT) | (cat == _IN))
    contact = _contacts(pop, rng, m[ext])
    out = cat[ext] == _OUT
    slots.add(ext, 0, np.where(out, maddr[ext], contact), 0)
    slots.add(ext, 1, np.where(out, contact, maddr[ext]), 0)
    n_extra = rng.choice(len(_EXTRA_PMF), len(ext), p=_EXTRA_PMF)
    owner, rank = _segments(n_extra)
    extra = _colleagues(pop, rng, contact[owner], m[ext][owner])
    slots.add(ext[owner], 3 + rank, extra, np.where(rng.random(len(owner)) < 0.35, _TO, _CC))
    second = ext[nmb[ext] == 2]
    m2 = _other_member(rng, m[second], nm)
    slots.add(second, 2, m2, np.where(rng.random(len(second)) < 0.3, _TO, _CC))
    mb_t.append(second)
    mb_m.append(m2)
    mb_o.append(np.ones(len(second), dtype=np.int64))
    bcc = ext[out & (length[ext] == 1) & (rng.random(len(ext)) < 0.06)]
    slots.add(bcc, 50, _contacts(pop, rng, m[bcc]), _BCC)
    ooo = np.zeros(nt, dtype=bool)
    ooo[ext[out & (length[ext] == 2) & (rng.random(len(ext)) < 0.04)]] = True

    # Subjects come from a pre-built vocabulary (see _subject_vocab): one gather, no concat.
    vocab, base = _subject_vocab(pop)
    subj = np.zeros(nt, dtype=np.int64)
    subj[ext] = base["ext"] + rng.integers(0, len(_EXT_A) * len(_EXT_B), len(ext))
    news = np.flatnonzero(cat == _NEWS)
    if len(pop.newsletters):
        k = rng.choice(len(pop.newsletters), len(news), p=_zipf(len(pop.newsletters), 1.0))
        head = rng.integers(0, len(_NEWS_HEAD), len(news))
        subj[news] = base["news"] + k * len(_NEWS_HEAD) + head
        slots.add(news, 0, pop.newsletters[k], 0)
        slots.add(news, 1, maddr[news], 0)
        rt = rng.random(len(news)) < 0.3
        slots.add(news[rt], 2, pop.nl_support[k[rt]], _REPLY_TO)
    lst = np.flatnonzero(cat == _LIST)
    slots.add(lst, 0, _contacts(pop, rng, m[lst]), 0)  # the poster; the member is not named
    li = _choice(rng, len(pop.lists), len(lst))
    slots.add(lst, 1, pop.lists[li], 0)
    subj[lst] = base["list"] + li * len(_EXT_B) + rng.integers(0, len(_EXT_B), len(lst))
    notif = np.flatnonzero(cat == _NOTIF)
    slots.add(notif, 0, pop.notifiers[_choice(rng, len(pop.notifiers), len(notif), 0.8)], 0)
    subj[notif] = base["notif"] + rng.integers(0, len(_NOTIF_SUBJ), len(notif))
    slots.add(notif, 1, maddr[notif], 0)
    daemon = np.flatnonzero(cat == _DAEMON)
    slots.add(daemon, 0, pop.daemons[_choice(rng, len(pop.daemons), len(daemon), 1.5)], 0)
    slots.add(daemon, 1, m[daemon], 0)
    subj[daemon] = base["daemon"] + rng.integers(0, len(_DAEMON_SUBJ), len(daemon))
    internal = np.flatnonzero((cat == _INT) | (cat == _INTCC))
    subj[internal] = base["int"] + rng.integers(0, len(_INT_SUBJ), len(internal))

    # Internal threads: k distinct members; every one of them gets every message.
    intl = np.flatnonzero(cat == _INT)
    if len(intl):
        shuffled = np.argsort(rng.random((len(intl), nm)), axis=1)
        owner, rank = _segments(nmb[intl])
        who = shuffled[owner, rank]
        alias = rng.random(len(owner)) < 0.05
        ent = np.where(alias, nm + who, who)
        slots.add(intl[owner], rank, ent, np.where(rank >= 2, np.where(rank % 2, _CC, _TO), 0))
        mb_t.append(intl[owner])
        mb_m.append(who)
        mb_o.append(rank + 1)  # after the (overridden) primary row, dropped below
    intcc = np.flatnonzero(cat == _INTCC)
    m2 = _other_member(rng, m[intcc], nm)
    slots.add(intcc, 0, maddr[intcc], 0)
    slots.add(intcc, 1, m2, 0)
    cc_ext = _contacts(pop, rng, m[intcc])
    slots.add(intcc, 2, cc_ext, _CC)
    more = intcc[rng.random(len(intcc)) < 0.3]
    slots.add(more, 3, _colleagues(pop, rng, cc_ext[np.searchsorted(intcc, more)], m[more]), _CC)
    mb_t.append(intcc)
    mb_m.append(m2)
    mb_o.append(np.ones(len(intcc), dtype=np.int64))

    s_thread, s_ent, s_role, s_count, s_start = slots.build(nt)
    # Per-slot written forms: case / gmail variants and display-name variants, fixed per thread.
    ns = len(s_ent)
    varies = pop.varies[s_ent]
    var = np.where(
        varies,
        rng.choice(_NV, ns, p=[0.7, 0.05, 0.15, 0.10]),
        np.where(rng.random(ns) < 0.04, 1, 0),
    )
    s_email = s_ent * _NV + var
    s_name = s_ent * _NN + rng.choice(_NN, ns, p=_NAME_P)

    # Mailboxes per thread. Internal threads list their members explicitly, so drop the
    # default primary-member row for them (it is re-added by the explicit rows).
    mt, mm, mo = (np.concatenate(x) for x in (mb_t, mb_m, mb_o))
    keep = ~((cat[mt] == _INT) & (mo == 0))
    mt, mm, mo = mt[keep], mm[keep], mo[keep]
    idx = np.lexsort((mo, mt))
    mt, mm = mt[idx], mm[idx]
    mb_count = np.bincount(mt, minlength=nt).astype(np.int64)
    assert np.array_equal(mb_count, nmb), "mailbox bookkeeping out of step"
    mb_start = np.cumsum(mb_count) - mb_count

    # Logical messages: thread position, sender slot and time.
    msg_thread, pos = _segments(length)
    nl = len(msg_thread)
    l_start = np.cumsum(length) - length
    sender_slot = pos % 2
    span = max(end_s - start_s, 1)
    mean_gap = min(20 * 3600, span / 80)
    gap = np.where(pos > 0, np.maximum(rng.exponential(mean_gap, nl), 60.0), 0.0)
    cum = np.cumsum(gap)
    cum -= cum[l_start][msg_thread] if nl else 0
    dur = cum[l_start + length - 1] if nt else np.zeros(0)
    squeeze = np.where(dur > span * 0.5, span * 0.5 / np.maximum(dur, 1), 1.0)
    cum = cum * squeeze[msg_thread]
    dur = dur * squeeze
    # u ** (1/1.8) piles thread starts towards `end`: recent activity is denser.
    t0 = start_s + (span - dur - 1) * rng.random(nt) ** (1 / 1.8)
    sent_s = np.floor(t0[msg_thread] + cum).astype(np.int64)
    sent_s = np.clip(sent_s, start_s, end_s - 1)
    s_sender = s_ent[s_start[msg_thread] + sender_slot]
    s_other = s_ent[s_start[msg_thread] + 1 - sender_slot]
    sender_member = pop.member_of[s_sender]

    # Copies: one per mailbox of the thread; final order is (mailbox, time).
    copy_logical, copy_rank = _segments(nmb[msg_thread])
    c_start = np.cumsum(nmb[msg_thread]) - nmb[msg_thread]
    c_member = mm[mb_start[msg_thread[copy_logical]] + copy_rank]
    # Stable, so copies of one instant keep logical order.
    order = np.argsort(c_member * (span + 1) + (sent_s[copy_logical] - start_s), kind="stable")
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    nc = len(order)
    msg_ids = _hex(_mix(_counters(nc, id_base), pop.key))
    first_copy = c_start[l_start[msg_thread[copy_logical]]] + copy_rank
    thread_ids = _take(msg_ids, inv[first_copy][order])

    lg = copy_logical[order]  # logical message of each final row
    member_f = c_member[order]
    sent_f = sender_member[lg] == member_f
    lcat = cat[msg_thread]
    unread_p = np.select(
        [np.isin(lcat, [_NEWS, _LIST]), np.isin(lcat, [_NOTIF, _DAEMON])], [0.55, 0.4], 0.1
    )[lg]
    unread = rng.random(nc) < unread_p
    label_code = np.where(
        sent_f,
        0,
        np.select(
            [lcat[lg] == _NEWS, np.isin(lcat[lg], [_NOTIF, _DAEMON])],
            [3 + unread, 5 + unread],
            1 + unread,
        ),
    )
    labels = _take(pl.Series(_LABELS, dtype=pl.List(pl.String)), label_code)

    # Per-logical header values.
    rfc = pl.DataFrame(
        {
            "h": _hex(_mix(_counters(nl, id_base), pop.key ^ 0x5F)),
            "host": _take(pop.rfc_host, s_sender),
        }
    ).select(pl.concat_str(pl.lit("<"), "h", pl.lit("@"), "host", pl.lit(">")))[:, 0]
    is_ooo = ooo[msg_thread] & (pos == 1)
    prefix = np.where(is_ooo, 2, (pos > 0).astype(np.int64))
    subject = _pick(
        [p + v for p in ("", "Re: ", "Automatic reply: ") for v in vocab],
        prefix * len(vocab) + subj[msg_thread],
    )
    body = _bodies(pop, rng, lcat, is_ooo, s_sender, s_other)
    list_ent = np.where(lcat == _LIST, s_other, s_sender)
    prec = np.select(
        [
            (lcat == _NEWS) & (rng.random(nl) < 0.85),
            lcat == _LIST,
            (lcat == _NOTIF) & (rng.random(nl) < 0.2),
        ],
        [1, 2, 1],
        0,
    )
    auto = np.select(
        [(lcat == _NOTIF) & (rng.random(nl) < 0.6), (lcat == _DAEMON) | is_ooo], [1, 2], 0
    )
    reply_idx = np.maximum(np.arange(nl) - 1, 0)
    in_reply = (
        _take(rfc, reply_idx)
        .to_frame("r")
        .select(pl.when(pl.Series(pos > 0)).then(pl.col("r")))[:, 0]
    )

    messages = pl.DataFrame(
        {
            "mailbox": _take(members, member_f),
            "message_id": msg_ids,
            "thread_id": thread_ids,
            "rfc_message_id": _take(rfc, lg),
            "sent_at": _datetimes(sent_s[lg] * 1_000_000),
            "subject": _take(subject, lg),
            "body_text": _take(body, lg),
            "label_ids": labels,
            "list_id": _take(pop.list_id, list_ent[lg]),
            "list_unsubscribe": _take(pop.list_unsub, list_ent[lg]),
            "precedence": _pick([None, "bulk", "list"], prec[lg]),
            "auto_submitted": _pick([None, "auto-generated", "auto-replied"], auto[lg]),
            "in_reply_to": _take(in_reply, lg),
        },
        schema=MESSAGE_SCHEMA,
    )

    # Participants: every slot of the thread for every copy; Bcc only on the sender's copy.
    # Built in slices of copies so the row-level temporaries stay small at 1M messages.
    roles = pl.Series(ROLES, dtype=pl.String)
    chunks = []
    for lo in range(0, nc, _CHUNK):
        hi = min(nc, lo + _CHUNK)
        c_thread, c_lg = msg_thread[lg[lo:hi]], lg[lo:hi]
        row_copy, row_rank = _segments(s_count[c_thread])
        slot = s_start[c_thread][row_copy] + row_rank
        snd = sender_slot[c_lg][row_copy]
        role = np.where(row_rank == snd, _FROM, np.where(row_rank < 2, _TO, s_role[slot]))
        keep = (role != _BCC) | sent_f[lo:hi][row_copy]
        row_copy, slot, role = row_copy[keep], slot[keep], role[keep]
        chunks.append(
            pl.DataFrame(
                {
                    "mailbox": _take(members, member_f[lo:hi][row_copy]),
                    "message_id": _take(msg_ids, lo + row_copy),
                    "role": _take(roles, role),
                    "email": _take(pop.emails, s_email[slot]),
                    "name": _take(pop.names, s_name[slot]),
                },
                schema=PARTICIPANT_SCHEMA,
            )
        )
    participants = pl.concat(chunks) if chunks else _empty(PARTICIPANT_SCHEMA)
    return messages, participants


def _subject_vocab(pop: _Population) -> tuple[list[str], dict[str, int]]:
    """Every thread subject the generator can produce, and where each family starts."""
    labels = pop.label.to_list()
    families = {
        "ext": [f"{a} {b}" for a in _EXT_A for b in _EXT_B],
        "int": list(_INT_SUBJ),
        "news": [f"{labels[e]}: {h}" for e in pop.newsletters for h in _NEWS_HEAD],
        "list": [f"[{labels[e]}] {b}" for e in pop.lists for b in _EXT_B],
        "notif": list(_NOTIF_SUBJ),
        "daemon": list(_DAEMON_SUBJ),
    }
    vocab: list[str] = []
    base: dict[str, int] = {}
    for name, words in families.items():
        base[name] = len(vocab)
        vocab += words
    return vocab, base


def _bodies(
    pop: _Population,
    rng: np.random.Generator,
    lcat: np.ndarray,
    ooo: np.ndarray,
    sender: np.ndarray,
    other: np.ndarray,
) -> pl.Series:
    """Greeting + text + sign-off, each gathered from a small pre-built vocabulary."""
    nl = len(lcat)
    names = [*pop.first_vocab, "all"]
    greet = [f"{g} {f},\n\n" for g in _GREET for f in names] + [""]
    sign = [f"\n\n{s}\n{f}" for s in _SIGN for f in names] + [""]
    middle = [f"{a} {b}" for a in _S1 for b in _S2]
    fixed = {
        _NEWS: [f"{h}.\n\n{b}" for h in _NEWS_HEAD for b in _NEWS_BODY],
        _NOTIF: _NOTIF_BODY,
        _DAEMON: _DAEMON_BODY,
        -1: _OOO_BODY,
    }
    g_idx = rng.integers(0, len(_GREET), nl) * len(names) + np.where(
        lcat == _LIST, len(names) - 1, pop.first_idx[other]
    )
    s_idx = rng.integers(0, len(_SIGN), nl) * len(names) + pop.first_idx[sender]
    m_idx = rng.integers(0, len(middle), nl)
    personal = ~(ooo | np.isin(lcat, [_NEWS, _NOTIF, _DAEMON]))
    family = np.where(ooo, -1, lcat)
    for key, texts in fixed.items():
        sel = np.flatnonzero((family == key) & ~personal)
        m_idx[sel] = len(middle) + rng.integers(0, len(texts), len(sel))
        middle += texts
    return pl.DataFrame(
        {
            "g": _pick(greet, np.where(personal, g_idx, len(greet) - 1)),
            "m": _pick(middle, m_idx),
            "s": _pick(sign, np.where(personal, s_idx, len(sign) - 1)),
        }
    ).select(pl.concat_str("g", "m", "s"))[:, 0]


# ---------------------------------------------------------------------------------------------
# Calendar
# ---------------------------------------------------------------------------------------------
_EV_ONE, _EV_GROUP, _EV_INT, _EV_LARGE, _EV_ALLDAY = range(5)
_EV_P = [0.47, 0.16, 0.26, 0.04, 0.07]
_RESPONSES = ["accepted", "tentative", "declined", "needsAction"]
_INT_TITLES = [
    "Weekly team sync",
    "Sprint planning",
    "Pipeline review",
    "1:1",
    "Hiring debrief",
    "Retro",
    "Roadmap review",
]
_LARGE_TITLES = [
    "Quarterly business review",
    "Customer advisory board",
    "Webinar: what's new this quarter",
    "Partner summit",
]
_ALLDAY_TITLES = ["Team offsite", "Conference: SaaStr Europa", "Out of office", "Company holiday"]


def _gen_events(
    pop: _Population,
    ne: int,
    rng: np.random.Generator,
    start_s: int,
    end_s: int,
    id_base: int,
    members: pl.Series,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    nm = pop.n_members
    etype = rng.choice(5, ne, p=_EV_P)
    if nm < 2:
        etype[etype == _EV_INT] = _EV_ONE
    m = rng.choice(nm, ne, p=pop.member_weights)
    org = m.copy()
    counterpart = m.copy()  # the external a meeting is "with", for its title
    att = _Slots()
    att.add(np.arange(ne), 0, m, 0)

    one = np.flatnonzero(etype == _EV_ONE)
    c = _contacts(pop, rng, m[one])
    att.add(one, 1, c, 0)
    counterpart[one] = c
    org[one] = np.where(rng.random(len(one)) < 0.65, m[one], c)
    sec = one[rng.random(len(one)) < 0.1]
    att.add(sec, 2, _other_member(rng, m[sec], nm), 0)

    grp = np.flatnonzero(etype == _EV_GROUP)
    c = _contacts(pop, rng, m[grp])
    att.add(grp, 1, c, 0)
    counterpart[grp] = c
    org[grp] = np.where(rng.random(len(grp)) < 0.5, m[grp], c)
    owner, rank = _segments(rng.integers(1, 4, len(grp)))
    att.add(grp[owner], 3 + rank, _colleagues(pop, rng, c[owner], m[grp][owner]), 0)
    sec = grp[rng.random(len(grp)) < 0.25]
    att.add(sec, 2, _other_member(rng, m[sec], nm), 0)

    intl = np.flatnonzero(etype == _EV_INT)
    if len(intl):
        k = np.minimum(np.arange(2, 5), nm)[rng.choice(3, len(intl), p=_INT_K_PMF)]
        shuffled = np.argsort(rng.random((len(intl), nm)), axis=1)
        owner, rank = _segments(k)
        att.add(intl[owner], 1 + rank, shuffled[owner, rank], 0)
        org[intl] = shuffled[:, 0]
        att.add(intl, -1, shuffled[:, 0], 0)

    large = np.flatnonzero(etype == _EV_LARGE)
    owner, rank = _segments(np.full(len(large), nm))
    with_member = rng.random(len(owner)) < 0.6
    att.add(large[owner[with_member]], 1, rank[with_member], 0)
    owner, rank = _segments(rng.integers(10, 41, len(large)))
    guests = _contacts(pop, rng, m[large][owner])
    guests = np.where(rank % 2 == 1, _colleagues(pop, rng, guests, m[large][owner]), guests)
    att.add(large[owner], 2 + rank, guests, 0)
    n_guests = np.bincount(owner, minlength=len(large))
    first_guest = guests[np.cumsum(n_guests) - n_guests]
    org[large] = np.where(rng.random(len(large)) < 0.5, m[large], first_guest)
    att.add(large, -1, org[large], 0)
    counterpart[large] = org[large]

    allday = np.flatnonzero(etype == _EV_ALLDAY)
    owner, rank = _segments(np.full(len(allday), nm))
    pick = rng.random(len(owner)) < 0.5
    att.add(allday[owner[pick]], 1, rank[pick], 0)
    att.add(one, -1, org[one], 0)
    att.add(grp, -1, org[grp], 0)

    a_ev, a_ent, _, a_count, a_start = att.build(ne)

    # Times: weekday business hours, denser towards `end`; some in the future.
    span_days = max((end_s - start_s) // _DAY, 1)
    start_day = start_s // _DAY
    future = rng.random(ne) < 0.08
    day = np.where(
        future,
        end_s // _DAY + rng.integers(0, 90, ne),
        start_day + np.floor(span_days * rng.random(ne) ** (1 / 1.5)).astype(np.int64),
    )
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday
    day = day - np.where(weekday == 5, 1, 0) - np.where(weekday == 6, 2, 0)
    all_day = etype == _EV_ALLDAY
    minute = rng.choice([0, 15, 30, 45], ne, p=[0.5, 0.2, 0.2, 0.1])
    begin = day * _DAY + np.where(all_day, 0, rng.integers(8, 18, ne) * 3600 + minute * 60)
    begin = np.where(begin < start_s, begin + 7 * _DAY, begin)
    begin = np.where(~future & (begin >= end_s), begin - 7 * _DAY, begin)
    dur_min = np.where(
        etype == _EV_LARGE,
        rng.choice([60, 90], ne),
        rng.choice([30, 45, 60, 90, 120], ne, p=[0.4, 0.1, 0.35, 0.1, 0.05]),
    )
    finish = np.where(all_day, begin + rng.integers(1, 4, ne) * _DAY, begin + dur_min * 60)

    recurring = np.isin(etype, [_EV_ONE, _EV_INT]) & (rng.random(ne) < 0.25)
    count = rng.integers(4, 13, ne)
    interval = np.where(rng.random(ne) < 0.8, 1, 2)
    rrule = pl.DataFrame({"c": count, "i": interval}).select(
        pl.when(pl.Series(~recurring))
        .then(pl.lit(None, dtype=pl.String))
        .when(pl.col("i") == 1)
        .then(pl.format("FREQ=WEEKLY;COUNT={}", "c"))
        .otherwise(pl.format("FREQ=WEEKLY;INTERVAL={};COUNT={}", "i", "c"))
    )[:, 0]
    # Cancelled instances of a series sit exactly on its weekly grid.
    n_cx = np.where(recurring & (rng.random(ne) < 0.45), 1 + (rng.random(ne) < 0.3), 0)
    k1 = rng.integers(1, count)
    k2 = np.where(k1 + 1 < count, k1 + 1, k1 - 1)
    cx_owner, cx_rank = _segments(n_cx)
    cx_k = np.where(cx_rank == 0, k1[cx_owner], k2[cx_owner])
    cx_s = begin[cx_owner] + cx_k * interval[cx_owner] * 7 * _DAY
    cx_offsets = np.concatenate([[0], np.cumsum(n_cx)]).astype(np.int32)
    cx_values = pa.array(cx_s * 1_000_000, type=pa.timestamp("us", tz="UTC"))
    cancelled_lists = pl.Series(
        pl.from_arrow(pa.ListArray.from_arrays(pa.array(cx_offsets), cx_values))
    ).cast(pl.List(UTC_US))
    status = np.where(rng.random(ne) < 0.06, 1, 0)

    # Titles.
    one_kind = rng.integers(0, 4, ne)
    frame = pl.DataFrame(
        {
            "t": etype,
            "k": one_kind,
            "rec": recurring,
            "me": _take(pop.first, m),
            "them": _take(pop.first, counterpart),
            "org": _take(pop.label, counterpart),
            "int": _pick(_INT_TITLES, rng.integers(0, len(_INT_TITLES), ne)),
            "large": _pick(_LARGE_TITLES, rng.integers(0, len(_LARGE_TITLES), ne)),
            "allday": _pick(_ALLDAY_TITLES, rng.integers(0, len(_ALLDAY_TITLES), ne)),
        }
    )
    t, k = pl.col("t"), pl.col("k")
    summary = frame.select(
        pl.when((t == _EV_ONE) & pl.col("rec"))
        .then(pl.concat_str(pl.lit("Weekly check-in: "), "org"))
        .when((t == _EV_ONE) & (k == 0))
        .then(pl.concat_str("me", pl.lit(" <> "), "them"))
        .when((t == _EV_ONE) & (k == 1))
        .then(pl.concat_str(pl.lit("Intro call: "), "org"))
        .when((t == _EV_ONE) & (k == 2))
        .then(pl.concat_str(pl.lit("Catch-up with "), "them"))
        .when(t == _EV_ONE)
        .then(pl.concat_str(pl.lit("Demo for "), "org"))
        .when(t == _EV_GROUP)
        .then(
            pl.concat_str(
                "org", pl.when(k < 2).then(pl.lit(" kickoff")).otherwise(pl.lit(" project sync"))
            )
        )
        .when(t == _EV_INT)
        .then(pl.col("int"))
        .when(t == _EV_LARGE)
        .then(pl.col("large"))
        .otherwise(pl.col("allday"))
    )[:, 0]

    # One calendar copy per member attendee.
    is_member = pop.member_of[a_ent] >= 0
    c_ev = a_ev[is_member]
    c_member = pop.member_of[a_ent[is_member]]
    order = np.lexsort((c_ev, begin[c_ev], c_member))
    c_ev, c_member = c_ev[order], c_member[order]
    nc = len(c_ev)
    counter = _counters(nc, id_base)
    event_ids = pl.DataFrame(
        {
            "a": _hex(_mix(counter, pop.key ^ 0xE1)),
            "b": _hex(_mix(counter, pop.key ^ 0xE2), 10),
        }
    ).select(pl.concat_str("a", "b"))[:, 0]
    ev_counter = _counters(ne, id_base)
    by_member = pop.member_of[org] >= 0
    uid = pl.DataFrame(
        {
            "a": _hex(_mix(ev_counter, pop.key ^ 0xE3)),
            "b": _hex(_mix(ev_counter, pop.key ^ 0xE4)),
            "host": _take(pop.rfc_host, org),
            "m": by_member,
        }
    ).select(
        pl.when("m")
        .then(pl.concat_str("a", pl.col("b").str.slice(0, 10), pl.lit("@google.com")))
        .otherwise(pl.concat_str("a", "b", pl.lit("@"), "host"))
    )[:, 0]
    canonical = np.asarray(org) * _NV
    events = pl.DataFrame(
        {
            "mailbox": _take(members, c_member),
            "event_id": event_ids,
            "ical_uid": _take(uid, c_ev),
            "summary": _take(summary, c_ev),
            "start_at": _datetimes(begin[c_ev] * 1_000_000),
            "end_at": _datetimes(finish[c_ev] * 1_000_000),
            "status": _pick(["confirmed", "cancelled"], status[c_ev]),
            "organizer_email": _take(pop.emails, canonical[c_ev]),
            "organizer_name": _take(pop.names, org[c_ev] * _NN),
            "rrule": _take(rrule, c_ev),
            "cancelled_occurrences": _take(cancelled_lists, c_ev),
            "all_day": all_day[c_ev],
        },
        schema=EVENT_SCHEMA,
    )

    # Attendees: the full list in each member's copy; the organizer has accepted.
    response = rng.choice(4, len(a_ent), p=[0.6, 0.1, 0.1, 0.2])
    response = np.where(a_ent == org[a_ev], 0, response)
    a_name = np.where(
        (pop.member_of[a_ent] >= 0) | (rng.random(len(a_ent)) < 0.6), 0, 2
    )  # Calendar often has no display name for guests
    row_copy, row_rank = _segments(a_count[c_ev])
    slot = a_start[c_ev][row_copy] + row_rank
    attendees = pl.DataFrame(
        {
            "mailbox": _take(members, c_member[row_copy]),
            "event_id": _take(event_ids, row_copy),
            "email": _take(pop.emails, a_ent[slot] * _NV),
            "name": _take(pop.names, a_ent[slot] * _NN + a_name[slot]),
            "response_status": _pick(_RESPONSES, response[slot]),
        },
        schema=ATTENDEE_SCHEMA,
    )
    return events, attendees


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
DEFAULT_START = datetime(2025, 1, 1, tzinfo=UTC)
DEFAULT_END = datetime(2026, 12, 1, tzinfo=UTC)


def _window(start: datetime, end: datetime) -> tuple[int, int]:
    s, e = _epoch_s(start), _epoch_s(end)
    if e <= s:
        raise ValueError(f"end ({end}) must be after start ({start})")
    return s, e


def generate_workspace(
    n_messages: int = 5000,
    *,
    seed: int = 7,
    n_members: int = 3,
    domain: str = "rapport-demo.io",
    start: datetime = DEFAULT_START,
    end: datetime = DEFAULT_END,
    n_events: int | None = None,
    id_offset: int = 0,
) -> SyntheticWorkspace:
    """A workspace whose `messages` has exactly `n_messages` rows (mailbox copies).

    `n_events` counts distinct meetings (ical_uid); each member attendee gets a copy, so
    `events` usually has more rows. Identical arguments give identical frames.
    """
    if n_messages < 0:
        raise ValueError("n_messages must be >= 0")
    if n_members < 1:
        raise ValueError("n_members must be >= 1")
    s, e = _window(start, end)
    pop, members = _build_population(max(50, n_messages // 20), n_members, domain, seed)
    member_emails = pl.Series([mb.email for mb in members], dtype=pl.String)
    messages, participants = _gen_mail(
        pop, n_messages, np.random.default_rng([seed, 0x3A11]), s, e, id_offset, member_emails
    )
    ne = max(20, n_messages // 25) if n_events is None else n_events
    events, attendees = _gen_events(
        pop, ne, np.random.default_rng([seed, 0xE7]), s, e, id_offset, member_emails
    )
    return SyntheticWorkspace(
        domain=domain,
        members=members,
        messages=messages,
        participants=participants,
        events=events,
        attendees=attendees,
        population=pop,
        seed=seed,
        next_id=id_offset + max(n_messages, events.height),
    )


def generate_delta(
    ws: SyntheticWorkspace, n_messages: int, *, seed: int, start: datetime, end: datetime
) -> SyntheticWorkspace:
    """New mail in [start, end) between the same members and external population.

    About a fifth are replies in existing single-mailbox threads of `ws` (same thread_id,
    In-Reply-To set), the rest new threads. Ids continue after `ws.next_id`, offset by a hash
    of `seed`, so they never collide with `ws` (nor, practically, with other deltas of it).
    Events are left empty.
    """
    pop = ws.population
    if pop is None:
        raise ValueError("workspace has no population; build it with generate_workspace")
    if n_messages < 0:
        raise ValueError("n_messages must be >= 0")
    s, e = _window(start, end)
    rng = np.random.default_rng([pop.seed, seed, 0xDE1])
    id_base = (ws.next_id + (_seed_hash(pop.seed, seed) % (1 << 20)) * (1 << 36)) % (1 << 64)
    member_emails = pl.Series([mb.email for mb in ws.members], dtype=pl.String)
    r_msgs, r_parts = _delta_replies(ws, pop, rng, n_messages // 5, s, e, id_base)
    k = r_msgs.height
    n_msgs, n_parts = _gen_mail(pop, n_messages - k, rng, s, e, id_base + k, member_emails)
    messages = pl.concat([n_msgs, r_msgs]).sort(["mailbox", "sent_at", "message_id"])
    return SyntheticWorkspace(
        domain=ws.domain,
        members=ws.members,
        messages=messages,
        participants=pl.concat([n_parts, r_parts]),
        events=_empty(EVENT_SCHEMA),
        attendees=_empty(ATTENDEE_SCHEMA),
        population=pop,
        seed=seed,
        next_id=(id_base + n_messages) & _MASK64,
    )


def _delta_replies(
    ws: SyntheticWorkspace,
    pop: _Population,
    rng: np.random.Generator,
    target: int,
    start_s: int,
    end_s: int,
    id_base: int,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Replies to person-to-person messages of `ws` that exist in exactly one mailbox."""
    msgs = ws.messages
    if target == 0 or msgs.height == 0:
        return _empty(MESSAGE_SCHEMA), _empty(PARTICIPANT_SCHEMA)
    latest = datetime.fromtimestamp(end_s - 600, UTC)
    eligible = msgs.filter(
        pl.col("list_id").is_null()
        & pl.col("precedence").is_null()
        & pl.col("auto_submitted").is_null()
        & (pl.col("sent_at") < latest)
    )
    if eligible.height == 0:
        return _empty(MESSAGE_SCHEMA), _empty(PARTICIPANT_SCHEMA)
    # Sample first, then check only the sample (cheap against a 1M-message history).
    pick = rng.choice(eligible.height, min(eligible.height, 4 * target + 16), replace=False)
    cand = eligible[pick]
    shared = (
        msgs.filter(pl.col("rfc_message_id").is_in(cand["rfc_message_id"].implode()))
        .group_by("rfc_message_id")
        .len()
        .filter(pl.col("len") > 1)
    )
    # Mail in several mailboxes (internal, or a teammate cc'd) would need copies everywhere.
    cand = cand.join(shared, on="rfc_message_id", how="anti", maintain_order="left").with_columns(
        pick=pl.int_range(pl.len(), dtype=pl.Int64)
    )
    member_addr = pl.DataFrame(
        [(mb.email, a.lower()) for mb in ws.members for a in (mb.email, *mb.aliases)],
        schema={"mailbox": pl.String, "low": pl.String},
        orient="row",
    ).with_columns(is_me=pl.lit(True))
    person_lows = (
        pop.emails.gather((pop.persons[:, None] * _NV + np.arange(_NV)[None, :]).ravel())
        .str.to_lowercase()
        .unique()
    )
    parts = (
        ws.participants.filter(pl.col("message_id").is_in(cand["message_id"].implode()))
        .join(cand.select("mailbox", "message_id", "pick"), on=["mailbox", "message_id"])
        .with_columns(low=pl.col("email").str.to_lowercase())
        .join(member_addr, on=["mailbox", "low"], how="left")
        .with_columns(pl.col("is_me").fill_null(False), is_person=pl.col("low").is_in(person_lows))
    )
    role = pl.col("role")

    def first(col: str, cond: pl.Expr) -> pl.Expr:
        return pl.col(col).filter(cond).first()

    heads = parts.group_by("pick").agg(
        from_email=first("email", role == "from"),
        from_name=first("name", role == "from"),
        from_me=first("is_me", role == "from"),
        from_person=first("is_person", role == "from"),
        me_email=first("email", role.is_in(["to", "cc"]) & pl.col("is_me")),
        me_name=first("name", role.is_in(["to", "cc"]) & pl.col("is_me")),
        they_email=first("email", (role == "to") & pl.col("is_person")),
        they_name=first("name", (role == "to") & pl.col("is_person")),
    )
    ok_sent = pl.col("from_me") & pl.col("they_email").is_not_null()
    ok_recv = pl.col("from_person") & pl.col("me_email").is_not_null()
    chosen = cand.join(heads, on="pick").filter(ok_sent | ok_recv).sort("pick").head(target)
    n = chosen.height
    if n == 0:
        return _empty(MESSAGE_SCHEMA), _empty(PARTICIPANT_SCHEMA)
    sent_by_me = ~chosen["from_me"].to_numpy()  # replying to received mail: the member sends
    orig_s = chosen["sent_at"].dt.epoch("s").to_numpy()
    lo = np.maximum(start_s, orig_s + 600)
    at = lo + np.floor(rng.random(n) * np.maximum(end_s - lo, 1)).astype(np.int64)
    counter = _counters(n, id_base)
    unread = rng.random(n) < 0.15
    chosen = chosen.with_columns(
        message_id=_hex(_mix(counter, pop.key)),
        h=_hex(_mix(counter, pop.key ^ 0x5F)),
        new_from=pl.when(pl.Series(sent_by_me)).then("me_email").otherwise("they_email"),
        new_from_name=pl.when(pl.Series(sent_by_me)).then("me_name").otherwise("they_name"),
        new_sent=_datetimes(np.minimum(at, end_s - 1) * 1_000_000),
        s1=_pick(_S1, rng.integers(0, len(_S1), n)),
        s2=_pick(_S2, rng.integers(0, len(_S2), n)),
        sign=_pick(_SIGN, rng.integers(0, len(_SIGN), n)),
        labels=pl.Series(_LABELS, dtype=pl.List(pl.String)).gather(
            np.where(sent_by_me, 0, 1 + unread)
        ),
    )
    domain_ = pl.col("new_from").str.split("@").list.last().str.to_lowercase()
    host = (
        pl.when(domain_.is_in(["gmail.com", "googlemail.com"]))
        .then(pl.lit("mail.gmail.com"))
        .otherwise(domain_)
    )
    messages = chosen.select(
        "mailbox",
        "message_id",
        "thread_id",
        rfc_message_id=pl.concat_str(pl.lit("<"), "h", pl.lit("@"), host, pl.lit(">")),
        sent_at="new_sent",
        subject=pl.concat_str(
            pl.lit("Re: "), pl.col("subject").str.replace(r"^(?:(?:Re|RE|Automatic reply): )+", "")
        ),
        body_text=pl.concat_str("s1", pl.lit(" "), "s2", pl.lit("\n\n"), "sign"),
        label_ids="labels",
        list_id=pl.lit(None, dtype=pl.String),
        list_unsubscribe=pl.lit(None, dtype=pl.String),
        precedence=pl.lit(None, dtype=pl.String),
        auto_submitted=pl.lit(None, dtype=pl.String),
        in_reply_to="rfc_message_id",
    ).cast(MESSAGE_SCHEMA)
    head_rows = pl.concat(
        [
            chosen.select(
                "mailbox", "message_id", role=pl.lit("from"), email="new_from", name="new_from_name"
            ),
            # Either way the reply goes back to whoever sent the original.
            chosen.select(
                "mailbox", "message_id", role=pl.lit("to"), email="from_email", name="from_name"
            ),
        ]
    )
    cc_rows = (
        parts.filter(role == "cc")
        .join(chosen.select("pick", new_id="message_id"), on="pick")
        .select("mailbox", message_id="new_id", role="role", email="email", name="name")
    )
    participants = pl.concat([head_rows, cc_rows]).cast(PARTICIPANT_SCHEMA)
    return messages, participants


# ---------------------------------------------------------------------------------------------
# Conversion to simulator objects (per row: demo scale only)
# ---------------------------------------------------------------------------------------------
def _addresses(pairs: list[tuple[str | None, str]]) -> str:
    return ", ".join(formataddr((name or "", email)) for name, email in pairs)


def to_sim_messages(ws: SyntheticWorkspace, mailbox: str) -> list[SimMessage]:
    """The mailbox's messages as SimMessage, headers in RFC 822 order."""
    by_msg: dict[str, dict[str, list[tuple[str | None, str]]]] = {}
    parts = ws.participants.filter(pl.col("mailbox") == mailbox)
    for mid, role, email, name in parts.select("message_id", "role", "email", "name").iter_rows():
        by_msg.setdefault(mid, {}).setdefault(role, []).append((name, email))
    msgs = ws.messages.filter(pl.col("mailbox") == mailbox).with_columns(
        ms=pl.col("sent_at").dt.epoch("ms")
    )
    out = []
    for row in msgs.iter_rows(named=True):
        roles = by_msg.get(row["message_id"], {})
        headers = [
            ("From", _addresses(roles.get("from", []))),
            ("To", _addresses(roles.get("to", []))),
        ]
        if roles.get("cc"):
            headers.append(("Cc", _addresses(roles["cc"])))
        if roles.get("bcc") and "SENT" in row["label_ids"]:
            headers.append(("Bcc", _addresses(roles["bcc"])))
        if roles.get("reply_to"):
            headers.append(("Reply-To", _addresses(roles["reply_to"])))
        headers += [
            ("Subject", row["subject"]),
            ("Date", format_datetime(row["sent_at"])),
            ("Message-ID", row["rfc_message_id"]),
        ]
        for name, col in (
            ("In-Reply-To", "in_reply_to"),
            ("List-Id", "list_id"),
            ("List-Unsubscribe", "list_unsubscribe"),
            ("Precedence", "precedence"),
            ("Auto-Submitted", "auto_submitted"),
        ):
            if row[col]:
                headers.append((name, row[col]))
        headers.append(("Content-Type", 'text/plain; charset="utf-8"'))
        body = row["body_text"]
        out.append(
            SimMessage(
                id=row["message_id"],
                thread_id=row["thread_id"],
                internal_date_ms=row["ms"],
                label_ids=list(row["label_ids"]),
                headers=headers,
                body=body.encode("utf-8"),
                snippet=body[:100],
            )
        )
    return out


def to_sim_events(ws: SyntheticWorkspace, mailbox: str) -> list[SimEvent]:
    """The mailbox's calendar as SimEvent (epoch ms); the organizer's attendee row is flagged."""
    by_event: dict[str, list[tuple[str, str | None, str]]] = {}
    att = ws.attendees.filter(pl.col("mailbox") == mailbox)
    for eid, email, name, status in att.select(
        "event_id", "email", "name", "response_status"
    ).iter_rows():
        by_event.setdefault(eid, []).append((email, name, status))
    evs = ws.events.filter(pl.col("mailbox") == mailbox).with_columns(
        s=pl.col("start_at").dt.epoch("ms"),
        e=pl.col("end_at").dt.epoch("ms"),
        cx=pl.col("cancelled_occurrences").list.eval(pl.element().dt.epoch("ms")),
    )
    out = []
    for row in evs.iter_rows(named=True):
        org = row["organizer_email"]
        out.append(
            SimEvent(
                id=row["event_id"],
                ical_uid=row["ical_uid"],
                summary=row["summary"],
                start_ms=row["s"],
                end_ms=row["e"],
                organizer_email=org,
                organizer_name=row["organizer_name"] or "",
                attendees=[
                    SimAttendee(
                        email=email, name=name or "", response_status=status, organizer=email == org
                    )
                    for email, name, status in by_event.get(row["event_id"], [])
                ],
                status=row["status"],
                all_day=row["all_day"],
                rrule=row["rrule"],
                cancelled_occurrences=list(row["cx"]),
                # No modification history is modelled: "last updated" a week before start.
                updated_ms=max(row["s"] - 7 * _DAY * 1000, 0),
            )
        )
    return out
