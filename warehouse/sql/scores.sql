-- Connection strength and the metrics that carry it, computed when queried.
--
-- A score decays with time, so a stored score would change for every (member, person)
-- on every run. What is stored instead are decay sums anchored at a fixed epoch
-- (_rapport_connection_sums): they change only where new interactions land, and these
-- views scale them to the published run's as_of. The formula is the one documented in
-- transforms/metrics.py; its constants are filled in from there at publish.

CREATE VIEW connections AS
WITH decay AS (
    -- days from the sums' epoch to the run's as_of
    SELECT
        pow(2.0, -d / $HALF_LIFE_FAST_DAYS) AS fast,
        pow(2.0, -d / $HALF_LIFE_SLOW_DAYS) AS slow
    FROM (
        SELECT (epoch_us(as_of) - $EPOCH_US) / 86400000000.0 AS d FROM _rapport_build
    )
),
kinds AS (
    SELECT
        s.member_id,
        s.person_id,
        $FAST_SHARE * fast * s.f_sent + (1 - $FAST_SHARE) * slow * s.l_sent AS sent,
        $FAST_SHARE * fast * s.f_recv + (1 - $FAST_SHARE) * slow * s.l_recv AS recv,
        $FAST_SHARE * fast * s.f_meet + (1 - $FAST_SHARE) * slow * s.l_meet AS meet
    FROM _rapport_connection_sums AS s, decay
),
person_rows AS (
    SELECT
        k.member_id,
        k.person_id,
        p.company_id,
        $W_SENT * sent + $W_RECEIVED * recv + $W_RECIPROCAL * least(sent, recv)
            + $W_MEETING * meet AS score
    FROM kinds AS k
    LEFT JOIN people AS p ON p.person_id = k.person_id
),
all_rows AS (
    SELECT member_id, person_id, company_id, score FROM person_rows
    UNION ALL
    SELECT member_id, NULL, company_id, sum(score)
    FROM person_rows
    WHERE company_id IS NOT NULL
    GROUP BY member_id, company_id
)
SELECT member_id, person_id, company_id, score, $BAND AS strength
FROM all_rows;

-- Per person or company: the member with the highest score (ties: member email).
CREATE VIEW _rapport_strongest AS
SELECT
    coalesce(c.person_id, c.company_id) AS id,
    c.person_id IS NULL AS is_company,
    m.email AS strongest_connection_member,
    c.strength AS strongest_connection_strength,
    c.score AS strongest_connection_score
FROM connections AS c
LEFT JOIN members AS m ON m.member_id = c.member_id
QUALIFY row_number() OVER (
    PARTITION BY c.person_id IS NULL, coalesce(c.person_id, c.company_id)
    ORDER BY c.score DESC, m.email
) = 1;

CREATE VIEW person_metrics AS
SELECT a.*, s.* EXCLUDE (id, is_company)
FROM _rapport_person_activity AS a
LEFT JOIN _rapport_strongest AS s ON s.id = a.person_id AND NOT s.is_company;

CREATE VIEW company_metrics AS
SELECT a.*, s.* EXCLUDE (id, is_company)
FROM _rapport_company_activity AS a
LEFT JOIN _rapport_strongest AS s ON s.id = a.company_id AND s.is_company;
