-- The first and last times (and the kind and member of the last interaction) of a few
-- people or companies, from their stored interactions without those of deleted mail
-- and events, plus the run's new rows: what an incremental run finds again for whoever
-- lost the interaction that held one of those times (their counts are updated from the
-- lost rows alone). Same meaning as transforms.metrics.activity_metrics (the full
-- build); tests/flows/test_incremental.py checks the two agree. Run by
-- warehouse.delta.DuckLookup.ends_of, which registers:
--   redo_ids(id)                         the people or companies
--   dropped_frame(member_id, source_key) the (member, source) of each removed row
--   added_rows(<interactions columns>)   the run's new interactions
-- $KEY is person_id or company_id; $as_of is a parameter.
-- The dropped rows are taken out by (member, hash of the source key) alone. That is
-- exact: the build asked rows_with_sources for the dropped sources first, which fails
-- the run if any stored row has the hash of one of them under another key. (Matching
-- the keys too decoded the source key of every interaction: 0.15 s at 1M messages.)
WITH dropped_sources AS (
    SELECT DISTINCT member_id, hash(source_key) AS h FROM dropped_frame
),
kept AS (
    SELECT i.member_id, i.$KEY AS id, i.kind, i."at"
    FROM interactions AS i
    ANTI JOIN dropped_sources AS d ON d.member_id = i.member_id AND d.h = i.source_hash
    WHERE i.$KEY IN (SELECT id FROM redo_ids)
),
all_rows AS (
    SELECT * FROM kept
    UNION ALL
    SELECT member_id, $KEY, kind, "at"
    FROM added_rows
    WHERE $KEY IN (SELECT id FROM redo_ids)
),
past AS (SELECT * FROM all_rows WHERE "at" <= $as_of),
times AS (
    SELECT
        id,
        min("at") AS first_interaction_at,
        max("at") AS last_interaction_at,
        min("at") FILTER (kind IN ('email_sent', 'email_received')) AS first_email_at,
        max("at") FILTER (kind IN ('email_sent', 'email_received')) AS last_email_at,
        min("at") FILTER (kind = 'meeting') AS first_meeting_at,
        max("at") FILTER (kind = 'meeting') AS last_meeting_at
    FROM past
    GROUP BY id
),
-- Of the rows at the last time, the greatest (kind, member_id): the full build's
-- tie-break (a struct max over every row cost more than all of the above).
last_rows AS (
    SELECT p.id, max(struct_pack(k := p.kind, m := p.member_id)) AS last_row
    FROM past AS p
    JOIN times AS t ON t.id = p.id AND p."at" = t.last_interaction_at
    GROUP BY p.id
)
SELECT
    t.id AS $KEY,
    t.first_interaction_at,
    t.last_interaction_at,
    l.last_row.k AS last_interaction_kind,
    l.last_row.m AS last_interaction_member_id,
    t.first_email_at,
    t.last_email_at,
    t.first_meeting_at,
    t.last_meeting_at
FROM times AS t
JOIN last_rows AS l ON l.id = t.id
