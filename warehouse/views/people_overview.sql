-- people_overview: one row per live person, with their company's name and every
-- person_metrics column, so "who is this and how warm are we" is one SELECT.
CREATE OR REPLACE VIEW people_overview AS
SELECT
    p.person_id,
    p.name,
    p.first_name,
    p.last_name,
    p.email_addresses,
    p.primary_email,
    p.company_id,
    c.name AS company_name,
    p.created_at,
    p.created_from_account,
    pm.* EXCLUDE (person_id)
FROM people AS p
LEFT JOIN companies AS c ON c.company_id = p.company_id
LEFT JOIN person_metrics AS pm ON pm.person_id = p.person_id;
