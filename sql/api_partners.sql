-- The dashboard's partner table: each partner's events and errors over the last N minutes of
-- event time (currencies summed: these are counts), busiest first.
--
-- Parameter: $1 = N minutes (INTERVAL).
SELECT partner_id, sum(events) AS events, sum(errors) AS errors
FROM live_view
WHERE window_start > (SELECT max(window_start) FROM live_view) - $1
GROUP BY partner_id
ORDER BY events DESC, partner_id
