-- `/api/live?minutes=N`: the live view's last N minutes of event time, up to and including
-- the newest window, one row per (minute, partner, currency). Amounts stay exact decimals and
-- are never summed across currencies.
--
-- Parameter: $1 = N minutes (INTERVAL).
SELECT window_start, partner_id, currency, events, errors, amount
FROM live_view
WHERE window_start > (SELECT max(window_start) FROM live_view) - $1
ORDER BY window_start, partner_id, currency
