-- Copies of day D's transactions whose event_time names another day within the bound
-- (D-2, D-1, D+1 or D+2: the copies of one transaction name days at most two apart).
--
-- A transaction belongs to exactly one day: the day its winning copy names. When copies of
-- one txn_id disagree on the day, every day they name must see all of them to pick the same
-- winner, so D's run also reads the copies each of those days would read for itself.
--
-- Input `neighbour_arrivals`: the checked raw files of ingest_date D-3 .. D+2 + horizon, of
-- which tally reads only the rows its key index says carry one of D's keys (the filters below
-- still decide: the index only spares the reading of rows they would drop).
-- Parameters: $1 D-2 00:00, $2 D 00:00, $3 D+1 00:00, $4 D+3 00:00 (TIMESTAMP, UTC);
--   $5 the lateness horizon in days.
--
-- `ledger_day_has(key)` is true exactly for the txn_keys of D's transactions, so only the ids
-- of D are kept (the key index already chose those rows; this keeps the text exact on its own).
SELECT
    txn_key(txn_id) AS txn_key,
    txn_id, partner_id, event_time, ingest_time, amount, currency, status
FROM neighbour_arrivals
-- The event-time bounds on their own (they name file columns only), so the Parquet reader
-- skips D's own row groups by statistics and tests event_time before it decodes txn_id.
WHERE event_time >= $1 AND event_time < $4
  AND (event_time < $2 OR event_time >= $3)
  -- The copy is eligible for the day it names: it arrived (ingest_date, the partition) from
  -- the day before that day to the horizon after it, as that day's own run reads it. Said the
  -- other way round, the day it names lies in [ingest_date - horizon, ingest_date + 1]; in
  -- integers (days since 1970 and microseconds), since a per-row cast of a UTC timestamp to
  -- a date goes through the time-zone database.
  AND CAST(event_time AS BIGINT) >= (CAST(ingest_date AS BIGINT) - $5) * 86400000000
  AND CAST(event_time AS BIGINT) <  (CAST(ingest_date AS BIGINT) + 2) * 86400000000
  AND ledger_day_has(txn_key(txn_id))
