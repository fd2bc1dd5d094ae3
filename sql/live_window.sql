-- One micro-batch of the live view: per minute of event time, partner and
-- currency (amounts in different currencies are never added together).
--
-- Input `batch_rows`: the batch's raw rows that survived the live mode's dedup (a txn_id seen
-- within the dedup TTL is dropped before this runs) and were routed here: on-time rows for
-- `live_view`, rows behind the watermark for `live_late`. The same text serves both tables.
--
-- The output rows are partial: the next batch may add to the same (minute, partner, currency). Readers
-- see the sum through tally's `live_view` / `live_late` views, and the periodic roll-up folds
-- partial rows into one.
SELECT
    date_trunc('minute', event_time)                      AS window_start,
    partner_id,
    currency,
    count(*)                                              AS events,
    -- Anything but 'ok' is an error, including a missing status.
    count(*) FILTER (WHERE coalesce(status, '') <> 'ok')  AS errors,
    -- Exact: Decimal128 in, Decimal128 out.
    sum(amount)                                           AS amount
FROM batch_rows
GROUP BY date_trunc('minute', event_time), partner_id, currency
