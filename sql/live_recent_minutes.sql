-- The live view's newest minutes per partner (currencies summed), for the alert rule of a
-- restarted live loop: minutes still filling must be judged on their whole count, not only
-- on the events that arrive after the restart.
--
-- Input `live_view_parts`: the live_view Delta table as stored (partial rows per batch).
-- Parameter: $1 = how far behind the newest minute to look (INTERVAL).
SELECT window_start, partner_id, sum(events) AS events, sum(errors) AS errors
FROM live_view_parts
WHERE window_start > (SELECT max(window_start) FROM live_view_parts) - $1
GROUP BY window_start, partner_id
