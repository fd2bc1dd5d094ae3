-- `/api/status`: the latest `tally reconcile` run of each day, with its verdict: `drift` when
-- any partner's unexplained drift exceeded the threshold of that run, `ok` otherwise. Newest
-- day first, the last 31 days reconciled.
WITH latest AS (
    SELECT day, max(run_time) AS run_time
    FROM reconciliations
    GROUP BY day
)
SELECT r.day,
       r.run_id,
       r.run_time,
       CASE WHEN bool_or(r.verdict = 'drift') THEN 'drift' ELSE 'ok' END AS verdict,
       count(*)                                                          AS partners,
       count(*) FILTER (WHERE r.verdict = 'drift')                      AS drifting,
       max(r.unexplained_drift)                                          AS max_unexplained_drift,
       max(r.threshold)                                                  AS threshold
FROM reconciliations AS r
JOIN latest AS l ON r.day = l.day AND r.run_time = l.run_time
GROUP BY r.day, r.run_id, r.run_time
ORDER BY r.day DESC
LIMIT 31
