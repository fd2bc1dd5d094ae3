-- A day too large to deduplicate in one pass: its copies, each with its transaction key, so
-- tally can split them into passes by key (a transaction's copies all land in one pass, and
-- every pass is deduplicated by sql/ledger.sql on its own, in memory).
--
-- Parameters (bound by tally, never spliced into the text):
--   $1  D 00:00:00 UTC (TIMESTAMP)      $2  D+1 00:00:00 UTC (TIMESTAMP)
--
-- Input `day_arrivals`: the raw files tally listed and checked for D's arrival window (see
-- sql/ledger.sql). The filter is ledger.sql's step 1, so row-group statistics skip the same
-- rows; ledger.sql applies it again to each pass (a no-op there).

SELECT
    txn_key(txn_id) AS txn_key,
    txn_id, partner_id, event_time, ingest_time, amount, currency, status
FROM day_arrivals
WHERE event_time >= $1
  AND event_time < $2
