-- Each partner's newest alert in `alerts`: its state (firing / resolved) and the minute of
-- event time it was about. A restarted live loop continues from these states, so an episode
-- that already fired is not fired again, and one that resolved is not resolved twice.
SELECT partner_id, state, window_start
FROM (
    SELECT partner_id, state, window_start,
           row_number() OVER (PARTITION BY partner_id
                              ORDER BY detected_at DESC, window_start DESC) AS newest_first
    FROM alerts
) AS ranked
WHERE newest_first = 1
ORDER BY partner_id
