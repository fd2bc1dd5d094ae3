-- The finance ledger for one event day D: every transaction once, to the cent.
--
-- Parameters (bound by tally, never spliced into the text):
--   $1  D, the event day (DATE)
--   $2  the last arrival day that still counts for D: D + lateness horizon (DATE)
--   $3  D 00:00:00 UTC (TIMESTAMP)      $4  D+1 00:00:00 UTC (TIMESTAMP)
--
-- Output: one row per transaction whose copies all agree on the payload, plus the keys of
-- transactions whose copies disagree (agree = false); tally settles those with
-- ledger_disputed.sql, which ranks their copies one by one.

WITH
-- Step 1. Every copy that can belong to day D. Raw files are partitioned by arrival day,
-- so `ingest_date` skips whole directories: copies of D's events arrive from D on (late
-- partner replays up to the horizon). Only copies whose event happened on D (UTC) count.
arrivals AS (
    SELECT
        -- The dedup key: txn_key is XXH3-64 of txn_id (txn_bucket is this hash modulo n).
        -- Grouping one integer per copy costs far less than grouping the id string.
        txn_key(txn_id) AS txn_key,
        txn_id, partner_id, event_time, ingest_time, amount, currency, status,
        -- One 64-bit fingerprint of the copy: equal for identical copies. It covers txn_id
        -- too, so two ids that happen to share a txn_key look like a disagreement and are
        -- settled id by id, never merged.
        payload_hash(txn_id, partner_id, amount, currency, status, event_time) AS payload
    FROM raw_payments
    WHERE ingest_date BETWEEN $1 AND $2
      AND event_time >= $3
      AND event_time < $4
),

-- Step 2. Collapse the copies of each transaction. The grouping key is the hash of txn_id, so
-- DataFusion hash-partitions the work by transaction, never by partner: a partner sending
-- half the traffic cannot make one worker a straggler.
-- When every copy carries the same payload (the same payload_hash for all of them), any
-- copy's columns ARE that payload: any_copy() takes one copy's row, bundled into a struct so
-- all its columns come from the same copy and are picked once, without comparing strings.
-- The min/max pair of the hash tells whether the copies agree; transactions whose copies do
-- not are settled by ledger_disputed.sql.
per_txn AS (
    SELECT
        txn_key,
        count(*)                AS copies,
        min(ingest_time)        AS first_ingest_time,
        min(payload)            AS payload_min,
        max(payload)            AS payload_max,
        any_copy(named_struct(
            'txn_id',     txn_id,
            'partner_id', partner_id,
            'event_time', event_time,
            'amount',     amount,
            'currency',   currency,
            'status',     status
        ))                      AS one_copy
    FROM arrivals
    GROUP BY txn_key
)

-- Step 3. The ledger row: the payload, the UTC day it bills on (D: step 1 kept only events
-- of D), when it first arrived, and how many raw copies were collapsed into it.
SELECT
    txn_key,
    one_copy['txn_id']      AS txn_id,
    one_copy['partner_id']  AS partner_id,
    one_copy['event_time']  AS event_time,
    $1                      AS event_date,
    one_copy['amount']      AS amount,
    one_copy['currency']    AS currency,
    one_copy['status']      AS status,
    first_ingest_time,
    copies,
    payload_min = payload_max AS agree
FROM per_txn
