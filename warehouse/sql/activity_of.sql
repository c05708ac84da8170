-- The activity of a few people or companies, from their stored interactions without
-- those of deleted mail and events, plus the run's new rows: what an incremental run
-- redoes for whoever lost interactions. Same meaning as transforms.metrics
-- .activity_metrics (the full build), column for column; tests/flows/test_incremental.py
-- checks the two agree. Run by warehouse.delta.DuckLookup.activity_of, which registers:
--   redo_ids(id)                       the people or companies to redo
--   dropped_frame(member_id, source_key) the (member, source) of each removed row
--   added_rows(<interactions columns>) the run's new interactions
-- $KEY is person_id or company_id; $as_of and $lo_<days> (as_of minus the window) are
-- parameters.
WITH dropped_sources AS (
    SELECT member_id, source_key, hash(source_key) AS h FROM dropped_frame
),
-- The rows of the dropped sources, by row id: found by the hash column (narrow), then
-- confirmed by the strings, which are decoded only where a hash matched.
dropped_rows AS (
    SELECT i.rowid AS row_id
    FROM interactions AS i
    JOIN dropped_sources AS d
        ON d.h = i.source_hash AND d.member_id = i.member_id AND d.source_key = i.source_key
    WHERE i.rowid IN (
        SELECT rowid FROM interactions WHERE source_hash IN (SELECT h FROM dropped_sources)
    )
),
kept AS (
    SELECT member_id, $KEY AS id, kind, "at", source_hash
    FROM interactions
    WHERE $KEY IN (SELECT id FROM redo_ids) AND rowid NOT IN (SELECT row_id FROM dropped_rows)
),
all_rows AS (
    SELECT * FROM kept
    UNION ALL
    SELECT member_id, $KEY, kind, "at", hash(source_key)
    FROM added_rows
    WHERE $KEY IN (SELECT id FROM redo_ids)
),
flagged AS (
    SELECT
        *,
        kind IN ('email_sent', 'email_received') AS is_email,
        kind = 'meeting' AS is_meeting,
        "at" <= $as_of AS past
    FROM all_rows
),
times AS (
    SELECT
        id,
        min("at") FILTER (past) AS first_interaction_at,
        max("at") FILTER (past) AS last_interaction_at,
        min("at") FILTER (is_email AND past) AS first_email_at,
        max("at") FILTER (is_email AND past) AS last_email_at,
        min("at") FILTER (is_meeting AND past) AS first_meeting_at,
        max("at") FILTER (is_meeting AND past) AS last_meeting_at,
        min("at") FILTER (is_meeting AND "at" > $as_of) AS next_meeting_at
    FROM flagged
    GROUP BY id
),
-- Of the rows at the last time, the greatest (kind, member_id): the full build's
-- tie-break (a struct max over every row cost more than all of the above).
last_rows AS (
    SELECT f.id, max(struct_pack(k := f.kind, m := f.member_id)) AS last_row
    FROM flagged AS f
    JOIN times AS t ON t.id = f.id AND f."at" = t.last_interaction_at
    GROUP BY f.id
),
-- Distinct sources in each window: whether each (id, source) has a row in it, then a
-- count per id (cheaper than four count(DISTINCT ...) FILTER over the rows).
per_source AS (
    SELECT
        id,
        bool_or(is_email AND past AND "at" > $lo_30) AS in_30,
        bool_or(is_email AND past AND "at" > $lo_90) AS in_90,
        bool_or(is_email AND past AND "at" > $lo_365) AS in_365,
        bool_or(is_meeting AND past AND "at" > $lo_90) AS meet_90
    FROM flagged
    WHERE past AND "at" > $lo_365  -- (the widest window)
    GROUP BY id, source_hash
),
counts AS (
    SELECT
        id,
        count(*) FILTER (in_30) AS emails_30d,
        count(*) FILTER (in_90) AS emails_90d,
        count(*) FILTER (in_365) AS emails_365d,
        count(*) FILTER (meet_90) AS meetings_90d
    FROM per_source
    GROUP BY id
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
    t.last_meeting_at,
    t.next_meeting_at,
    coalesce(c.emails_30d, 0) AS emails_30d,
    coalesce(c.emails_90d, 0) AS emails_90d,
    coalesce(c.emails_365d, 0) AS emails_365d,
    coalesce(c.meetings_90d, 0) AS meetings_90d
FROM times AS t
LEFT JOIN last_rows AS l ON l.id = t.id
LEFT JOIN counts AS c ON c.id = t.id
