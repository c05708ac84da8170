-- connections_overview: connections with names instead of ids. Rows with a person are
-- (member, person) strengths; rows with person_id NULL are (member, company) strengths.
CREATE OR REPLACE VIEW connections_overview AS
SELECT
    k.member_id,
    m.email AS member_email,
    m.name AS member_name,
    k.person_id,
    p.name AS person_name,
    p.primary_email AS person_email,
    k.company_id,
    c.name AS company_name,
    c.domains AS company_domains,
    k.score,
    k.strength
FROM connections AS k
LEFT JOIN members AS m ON m.member_id = k.member_id
LEFT JOIN people AS p ON p.person_id = k.person_id
LEFT JOIN companies AS c ON c.company_id = k.company_id;
