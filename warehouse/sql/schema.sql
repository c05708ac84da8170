-- The contract tables of DESIGN §5. Built fresh into a new file on every publish,
-- then swapped in atomically, so readers never see half a run.
-- No PRIMARY KEY constraints: index builds cost a fifth of the publish; the quality
-- gate (expectations/) checks that ids are unique and not null before every publish.
CREATE TABLE members (
    member_id VARCHAR,
    email     VARCHAR NOT NULL,
    name      VARCHAR
);

CREATE TABLE accounts (
    account_id      VARCHAR,
    member_id       VARCHAR NOT NULL,
    provider        VARCHAR NOT NULL,
    email           VARCHAR NOT NULL,
    aliases         VARCHAR[],
    status          VARCHAR NOT NULL,
    default_sharing VARCHAR NOT NULL,
    connected_at    TIMESTAMPTZ,
    removed_at      TIMESTAMPTZ,
    last_synced_at  TIMESTAMPTZ
);

CREATE TABLE blocklist (
    account_id VARCHAR NOT NULL,
    entry      VARCHAR NOT NULL,
    kind       VARCHAR NOT NULL,
    added_at   TIMESTAMPTZ
);

-- Individual full-access grants (DESIGN §4.7); read by messages_for().
CREATE TABLE sharing_grants (
    account_id   VARCHAR NOT NULL,
    member_email VARCHAR NOT NULL
);

CREATE TABLE people (
    person_id            VARCHAR,
    name                 VARCHAR,
    first_name           VARCHAR,
    last_name            VARCHAR,
    email_addresses      VARCHAR[] NOT NULL,
    primary_email        VARCHAR NOT NULL,
    company_id           VARCHAR,
    created_at           TIMESTAMPTZ,
    created_from_account VARCHAR
);

CREATE TABLE companies (
    company_id VARCHAR,
    name       VARCHAR,
    domains    VARCHAR[] NOT NULL,
    created_at TIMESTAMPTZ
);

CREATE TABLE person_merges (
    survivor_id VARCHAR NOT NULL,
    merged_id   VARCHAR NOT NULL,
    rule        VARCHAR NOT NULL,
    evidence    VARCHAR,
    merged_at   TIMESTAMPTZ
);

-- Ids (hashes) and free text barely compress with DuckDB's light-weight codecs, which
-- spend most of the publish analysing them, so none is left to choose. Free text takes
-- zstd (no dearer than storing it raw). The ids are stored raw: at a million messages
-- 0.14 s less to publish than zstd, for a file of 248 MB instead of 193 MB (an
-- incremental run's copy of it measured no slower).
CREATE TABLE messages (
    message_key    VARCHAR USING COMPRESSION uncompressed,
    account_id     VARCHAR NOT NULL,
    thread_id      VARCHAR USING COMPRESSION uncompressed,
    rfc_message_id VARCHAR USING COMPRESSION uncompressed,
    sent_at        TIMESTAMPTZ,
    direction      VARCHAR NOT NULL,
    subject        VARCHAR,
    snippet        VARCHAR USING COMPRESSION zstd,
    body_text      VARCHAR USING COMPRESSION zstd,
    from_email     VARCHAR,
    to_emails      VARCHAR[],
    cc_emails      VARCHAR[],
    -- hash(message_key), filled in on insert: a sync checks whether its new mail is
    -- already here by scanning this integer, not the compressed keys (as interactions)
    key_hash       UBIGINT NOT NULL
);

-- Per-message facts the privacy macro needs but analysts rarely do: a row for each
-- message with a flag set (internal-only mail), none for the rest.
CREATE TABLE message_flags (
    message_key   VARCHAR,
    internal_only BOOLEAN NOT NULL
);

CREATE TABLE events (
    event_key       VARCHAR,
    account_id      VARCHAR NOT NULL,
    starts_at       TIMESTAMPTZ,
    ends_at         TIMESTAMPTZ,
    title           VARCHAR,
    organizer_email VARCHAR,
    attendee_emails VARCHAR[],
    status          VARCHAR
);

CREATE TABLE interactions (
    member_id  VARCHAR NOT NULL,
    person_id  VARCHAR NOT NULL,
    company_id VARCHAR,
    account_id VARCHAR NOT NULL,
    kind       VARCHAR NOT NULL,
    "at"       TIMESTAMPTZ NOT NULL,
    source_key VARCHAR NOT NULL USING COMPRESSION zstd,  -- Message-IDs: as for messages
    weight     DOUBLE NOT NULL,  -- what the interaction adds to connection strength
    -- hash(source_key), filled in on insert: a sync finds the rows of a few sources by
    -- scanning this integer, not the compressed keys (0.01 s, not 0.05 s, at 1M messages)
    source_hash UBIGINT NOT NULL
);

-- connections, person_metrics and company_metrics are views (sql/scores.sql): a score
-- decays with time, so it is computed for the run's as_of when queried. The stored
-- part is below: one activity row per person and per company (the metrics without the
-- strongest connection), and the decay sums in _rapport_connection_sums.
CREATE TABLE _rapport_person_activity (
    person_id                     VARCHAR NOT NULL,
    first_interaction_at          TIMESTAMPTZ,
    last_interaction_at           TIMESTAMPTZ,
    last_interaction_kind         VARCHAR,
    last_interaction_member       VARCHAR,
    first_email_at                TIMESTAMPTZ,
    last_email_at                 TIMESTAMPTZ,
    first_meeting_at              TIMESTAMPTZ,
    last_meeting_at               TIMESTAMPTZ,
    next_meeting_at               TIMESTAMPTZ,
    emails_30d                    BIGINT,
    emails_90d                    BIGINT,
    emails_365d                   BIGINT,
    meetings_90d                  BIGINT
);

CREATE TABLE _rapport_company_activity (
    company_id                    VARCHAR NOT NULL,
    first_interaction_at          TIMESTAMPTZ,
    last_interaction_at           TIMESTAMPTZ,
    last_interaction_kind         VARCHAR,
    last_interaction_member       VARCHAR,
    first_email_at                TIMESTAMPTZ,
    last_email_at                 TIMESTAMPTZ,
    first_meeting_at              TIMESTAMPTZ,
    last_meeting_at               TIMESTAMPTZ,
    next_meeting_at               TIMESTAMPTZ,
    emails_30d                    BIGINT,
    emails_90d                    BIGINT,
    emails_365d                   BIGINT,
    meetings_90d                  BIGINT
);

-- Items a connector could not parse, with the reason (never their content).
CREATE TABLE quarantine (
    account_id VARCHAR NOT NULL,
    stream     VARCHAR NOT NULL,
    item_id    VARCHAR NOT NULL,
    reason     VARCHAR NOT NULL,
    detail     VARCHAR,
    fetched_at TIMESTAMPTZ
);

CREATE TABLE sync_runs (
    run_id              VARCHAR,
    started_at          TIMESTAMPTZ NOT NULL,
    finished_at         TIMESTAMPTZ,
    status              VARCHAR NOT NULL,
    accounts            VARCHAR,
    rows_landed         BIGINT,
    rows_published      BIGINT,
    expectation_results VARCHAR
);

-- Build state: what the next run needs to extend this one (work that follows the
-- delta) instead of re-reading the whole lake. Internal; not part of the contract.
CREATE TABLE _rapport_build (
    as_of       TIMESTAMPTZ NOT NULL,
    fingerprint VARCHAR NOT NULL,   -- settings, accounts and blocklist the run used
    mode        VARCHAR NOT NULL,   -- full | incremental
    state       VARCHAR             -- its generation of state files (warehouse/state.py)
);
-- The state only the pipeline reads (the name counts, the keys of every address, ...)
-- is kept beside this file, not in it: warehouse/state.py.

CREATE TABLE _rapport_connection_sums (
    member_id VARCHAR NOT NULL,
    person_id VARCHAR NOT NULL,
    f_sent DOUBLE, l_sent DOUBLE,   -- decay sums anchored at 2020-01-01 UTC (metrics.py)
    f_recv DOUBLE, l_recv DOUBLE,   -- f_: 45-day half-life, l_: 365-day
    f_meet DOUBLE, l_meet DOUBLE
);

-- Would-be interactions with addresses that are not people (yet): when one becomes a
-- person, its history is here, not only in the lake.
CREATE TABLE _rapport_contact_history (
    canonical_key VARCHAR NOT NULL,
    member_id     VARCHAR NOT NULL,
    account_id    VARCHAR NOT NULL,
    kind          VARCHAR NOT NULL,
    "at"          TIMESTAMPTZ NOT NULL,
    source_key    VARCHAR NOT NULL,
    weight        DOUBLE NOT NULL
);

