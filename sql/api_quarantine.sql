-- /api/status: the raw files the live mode quarantined (never read), newest first, at most 20,
-- with the total count on every row.
SELECT
    path,
    reason,
    quarantined_at,
    CAST(count(*) OVER () AS BIGINT) AS total
FROM live_quarantine
ORDER BY quarantined_at DESC, path
LIMIT 20
