-- messages_for(viewer_email): what one member may see (DESIGN §4.7), one row per RFC
-- Message-ID with the most permissive copy. Access levels: 1 metadata, 2 subject, 3 full.
--   * the viewer is a member, matched on members.email (case- and space-insensitive);
--     anyone else gets no rows;
--   * the owner (any of the viewer's accounts holds the copy) sees everything: level 3;
--   * an individual grant (sharing_grants) gives level 3; otherwise the owner account's
--     default_sharing decides, and an unknown value counts as metadata;
--   * removed accounts contribute nothing, not even to their owner;
--   * mail among internal addresses only (message_flags.internal_only) is visible only to
--     the members whose accounts hold a copy of it: no member's own mail, or mail between
--     members, reaches a colleague who was not on it (internal privacy);
--   * copies of one mail (same RFC Message-ID, ignoring surrounding blanks; copies without
--     one stand alone) collapse to the copy with the highest level, the viewer's own copy
--     first on a tie, then the lowest message_key.
CREATE OR REPLACE MACRO messages_for(viewer_email) AS TABLE
WITH viewer AS (
    SELECT DISTINCT member_id, email FROM members
    WHERE lower(trim(email)) = lower(trim(viewer_email))
),
copies AS (
    SELECT
        m.*,
        a.member_id = v.member_id AS is_owner,
        CASE
            WHEN a.member_id = v.member_id THEN 3
            WHEN EXISTS (
                SELECT 1 FROM sharing_grants AS g
                WHERE g.account_id = m.account_id
                    AND lower(trim(g.member_email)) = lower(trim(v.email))
            ) THEN 3
            WHEN a.default_sharing = 'full' THEN 3
            WHEN a.default_sharing = 'subject' THEN 2
            ELSE 1
        END AS access_level
    FROM messages AS m
    JOIN accounts AS a ON a.account_id = m.account_id
    CROSS JOIN viewer AS v
    WHERE a.status <> 'removed'
),
visible AS (
    -- internal-only mail stays with the accounts that hold a copy of it
    SELECT c.* FROM copies AS c
    LEFT JOIN message_flags AS f ON f.message_key = c.message_key
    WHERE c.is_owner OR NOT coalesce(f.internal_only, false)
),
ranked AS (
    SELECT *,
        row_number() OVER (
            PARTITION BY
                nullif(trim(rfc_message_id), ''),
                CASE WHEN nullif(trim(rfc_message_id), '') IS NULL THEN message_key END
            ORDER BY access_level DESC, is_owner DESC, message_key
        ) AS copy_rank
    FROM visible
)
SELECT
    message_key, account_id, thread_id, rfc_message_id, sent_at, direction,
    CASE WHEN access_level >= 2 THEN subject END AS subject,
    CASE WHEN access_level >= 3 THEN snippet END AS snippet,
    CASE WHEN access_level >= 3 THEN body_text END AS body_text,
    from_email, to_emails, cc_emails, key_hash
FROM ranked
WHERE copy_rank = 1;
