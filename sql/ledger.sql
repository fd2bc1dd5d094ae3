-- The finance ledger for one event day D: every transaction once, to the cent.
--
-- Parameters (bound by tally, never spliced into the text):
--   $1  D, the event day (DATE)
--   $2  the last arrival day that still counts for D: D + lateness horizon (DATE)
--   $3  D 00:00:00 UTC (TIMESTAMP)      $4  D+1 00:00:00 UTC (TIMESTAMP)
--   $5  number of txn_id hash buckets (BIGINT)
--
-- Output: one row per transaction whose copies all agree on the payload, plus the ids of
-- transactions whose copies disagree (agree = false); tally settles those with
-- ledger_disputed.sql, which ranks their copies one by one.

WITH
-- Step 1. Every copy that can belong to day D. Raw files are partitioned by arrival day,
-- so `ingest_date` skips whole directories: copies of D's events arrive from D on (late
-- partner replays up to the horizon). Only copies whose event happened on D (UTC) count.
arrivals AS (
    SELECT txn_bucket(txn_id, $5) AS bucket,
           txn_id, partner_id, event_time, ingest_time, amount, currency, status,
           -- One 64-bit fingerprint of the copy's payload: equal for identical copies.
           payload_hash(partner_id, amount, currency, status, event_time) AS payload
    FROM raw_payments
    WHERE ingest_date BETWEEN $1 AND $2
      AND event_time >= $3
      AND event_time < $4
),

-- Step 2. Collapse the copies of each transaction. Grouping starts with txn_bucket, a stable
-- hash of txn_id (XXH3-64 mod $5), so the work is partitioned by transaction, never by
-- partner: a partner sending half the traffic cannot make one worker a straggler.
-- When every copy carries the same payload (its payload_hash is the same for all of them),
-- any copy's columns ARE that payload: any_copy() takes one without comparing strings (a
-- min() per string column was most of this step's CPU). The min/max pair of the hash tells
-- whether they agree; transactions whose copies do not are settled by ledger_disputed.sql.
per_txn AS (
    SELECT
        bucket,
        txn_id,
        count(*)                AS copies,
        min(ingest_time)        AS first_ingest_time,
        min(payload)            AS payload_min,
        max(payload)            AS payload_max,
        any_copy(partner_id)    AS partner_id,
        any_copy(amount)        AS amount,
        any_copy(currency)      AS currency,
        any_copy(status)        AS status,
        any_copy(event_time)    AS event_time
    FROM arrivals
    GROUP BY 1, 2
)

-- Step 3. The ledger row: the payload, the UTC day it bills on, when it first arrived, and
-- how many raw copies were collapsed into it.
SELECT
    txn_id,
    partner_id,
    event_time,
    CAST(event_time AS DATE) AS event_date,
    amount,
    currency,
    status,
    first_ingest_time,
    copies,
    payload_min = payload_max AS agree
FROM per_txn
