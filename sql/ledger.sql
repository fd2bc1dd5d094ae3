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
           txn_id, partner_id, event_time, ingest_time, amount, currency, status
    FROM raw_payments
    WHERE ingest_date BETWEEN $1 AND $2
      AND event_time >= $3
      AND event_time < $4
),

-- Step 2. Collapse the copies of each transaction. Grouping starts with txn_bucket, a stable
-- hash of txn_id (XXH3-64 mod $5), so the work is partitioned by transaction, never by
-- partner: a partner sending half the traffic cannot make one worker a straggler.
-- When every copy carries the same payload, min() of each column IS that payload; the
-- min/max pairs tell whether the copies agree.
per_txn AS (
    SELECT
        bucket,
        txn_id,
        count(*)                AS copies,
        min(ingest_time)        AS first_ingest_time,
        min(partner_id)         AS partner_id,
        max(partner_id)         AS partner_id_max,
        min(amount)             AS amount,
        max(amount)             AS amount_max,
        min(currency)           AS currency,
        max(currency)           AS currency_max,
        min(status)             AS status,
        max(status)             AS status_max,
        min(event_time)         AS event_time,
        max(event_time)         AS event_time_max,
        -- A copy with a NULL in a payload column cannot be compared by min/max: count them.
        count(*) - count(partner_id) + count(*) - count(amount)
          + count(*) - count(currency) + count(*) - count(status) AS payload_nulls
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
    (partner_id = partner_id_max
        AND amount = amount_max
        AND currency = currency_max
        AND status = status_max
        AND event_time = event_time_max
        AND (payload_nulls = 0 OR copies = 1)) IS TRUE AS agree
FROM per_txn
