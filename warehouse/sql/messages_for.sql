-- messages_for(viewer_email): what one member may see (DESIGN §4.7), one row per RFC
-- Message-ID with the most permissive copy. Access levels: 1 metadata, 2 subject, 3 full.
-- Non-members get nothing. Mail among internal addresses only is visible only to the
-- accounts that hold a copy. Mail of a member's own person record is hidden from others.
CREATE OR REPLACE MACRO messages_for(viewer_email) AS TABLE
WITH viewer AS (
    SELECT member_id, email FROM members WHERE email = lower(trim(viewer_email))
),
copies AS (
    SELECT
        m.*,
        a.member_id = v.member_id AS is_owner,
        CASE
            WHEN a.member_id = v.member_id THEN 3
            WHEN g.account_id IS NOT NULL THEN 3
            WHEN a.default_sharing = 'full' THEN 3
            WHEN a.default_sharing = 'subject' THEN 2
            ELSE 1
        END AS access_level
    FROM messages AS m
    JOIN accounts AS a ON a.account_id = m.account_id
    CROSS JOIN viewer AS v
    LEFT JOIN sharing_grants AS g
        ON g.account_id = m.account_id AND g.member_email = v.email
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
            PARTITION BY coalesce(rfc_message_id, message_key)
            ORDER BY access_level DESC, is_owner DESC, message_key
        ) AS copy_rank
    FROM visible
)
SELECT
    message_key, account_id, thread_id, rfc_message_id, sent_at, direction,
    CASE WHEN access_level >= 2 THEN subject END AS subject,
    CASE WHEN access_level >= 3 THEN snippet END AS snippet,
    CASE WHEN access_level >= 3 THEN body_text END AS body_text,
    from_email, to_emails, cc_emails
FROM ranked
WHERE copy_rank = 1;
