-- The decay sums of a few (member, person) pairs, from their stored interactions without
-- those of deleted mail and events, plus the run's new rows: what an incremental run
-- redoes for the pairs that lost interactions. Same formula as transforms.metrics
-- .person_connection_sums (the full build; constants filled in from there). Registered
-- by warehouse.delta.DuckLookup.sums_of: redo_pairs(member_id, person_id), and
-- dropped_frame and added_rows as for ends_of.sql. Pairs with no row up to $as_of
-- are left out, as in the full build.
-- The dropped rows are taken out by (member, hash of the source key), as in
-- ends_of.sql (exact; comparing the keys too decoded every interaction's).
WITH dropped_sources AS (
    SELECT DISTINCT member_id, hash(source_key) AS h FROM dropped_frame
),
kept AS (
    SELECT i.member_id, i.person_id, i.kind, i."at", i.weight
    FROM interactions AS i
    SEMI JOIN redo_pairs AS p ON p.member_id = i.member_id AND p.person_id = i.person_id
    ANTI JOIN dropped_sources AS d ON d.member_id = i.member_id AND d.h = i.source_hash
    WHERE i.person_id IN (SELECT person_id FROM redo_pairs) AND i."at" <= $as_of
),
all_rows AS (
    SELECT * FROM kept
    UNION ALL
    SELECT a.member_id, a.person_id, a.kind, a."at", a.weight
    FROM added_rows AS a
    SEMI JOIN redo_pairs AS p ON p.member_id = a.member_id AND p.person_id = a.person_id
    WHERE a."at" <= $as_of
),
decayed AS (
    SELECT
        member_id,
        person_id,
        kind,
        pow(2.0, (epoch_us("at") - $EPOCH_US) / 86400e6 / $HALF_LIFE_FAST_DAYS) * weight AS f,
        pow(2.0, (epoch_us("at") - $EPOCH_US) / 86400e6 / $HALF_LIFE_SLOW_DAYS) * weight AS l
    FROM all_rows
)
SELECT
    member_id,
    person_id,
    coalesce(sum(f) FILTER (kind = 'email_sent'), 0.0) AS f_sent,
    coalesce(sum(l) FILTER (kind = 'email_sent'), 0.0) AS l_sent,
    coalesce(sum(f) FILTER (kind = 'email_received'), 0.0) AS f_recv,
    coalesce(sum(l) FILTER (kind = 'email_received'), 0.0) AS l_recv,
    coalesce(sum(f) FILTER (kind = 'meeting'), 0.0) AS f_meet,
    coalesce(sum(l) FILTER (kind = 'meeting'), 0.0) AS l_meet
FROM decayed
GROUP BY member_id, person_id
