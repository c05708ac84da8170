-- companies_overview: one row per company, with how many people it has and every
-- company_metrics column ("which accounts have gone quiet" is one WHERE away).
CREATE OR REPLACE VIEW companies_overview AS
SELECT
    c.company_id,
    c.name,
    c.domains,
    c.created_at,
    coalesce(n.people_count, 0) AS people_count,
    cm.* EXCLUDE (company_id)
FROM companies AS c
LEFT JOIN (
    SELECT company_id, count(*) AS people_count
    FROM people
    WHERE company_id IS NOT NULL
    GROUP BY company_id
) AS n ON n.company_id = c.company_id
LEFT JOIN company_metrics AS cm ON cm.company_id = c.company_id;
