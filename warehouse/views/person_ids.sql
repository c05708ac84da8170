-- person_ids(any_id, person_id): resolves any person id an analyst may hold (say, one
-- saved before a dedup merge) to the live person it now belongs to. Live people map to
-- themselves; merged ids follow person_merges survivor by survivor until a live person
-- (chains and stale log rows resolve; cycles stop after 32 steps). Ids that end nowhere
-- live are left out, so a join on any_id never points at a missing person.
CREATE OR REPLACE VIEW person_ids AS
WITH RECURSIVE chain(any_id, person_id, depth) AS (
    SELECT merged_id, survivor_id, 1
    FROM person_merges
    WHERE merged_id NOT IN (SELECT person_id FROM people)
    UNION ALL
    SELECT c.any_id, m.survivor_id, c.depth + 1
    FROM chain AS c
    JOIN person_merges AS m ON m.merged_id = c.person_id
    WHERE c.depth < 32 AND c.person_id NOT IN (SELECT person_id FROM people)
),
resolved AS (
    SELECT c.any_id, c.person_id
    FROM chain AS c
    JOIN people AS p ON p.person_id = c.person_id
    QUALIFY row_number() OVER (PARTITION BY c.any_id ORDER BY c.depth, c.person_id) = 1
)
SELECT person_id AS any_id, person_id FROM people
UNION ALL
SELECT any_id, person_id FROM resolved;
