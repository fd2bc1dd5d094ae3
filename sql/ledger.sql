-- The finance ledger for one event day D: every transaction once, to the cent.
--
-- Parameters (bound by tally, never spliced into the text):
--   $1  D, the event day (DATE)
--   $2  D 00:00:00 UTC (TIMESTAMP)      $3  D+1 00:00:00 UTC (TIMESTAMP)
--
-- Input `day_arrivals`: exactly the raw files tally listed and checked for D's arrival window,
-- ingest_date D-1 .. D + lateness horizon (a partner clock running ahead lands D's first
-- minutes the evening before; replays land days later). Nothing listed after the check is read.
--
-- Output: one row per transaction. Where its copies all agree on the payload (agree = true)
-- the row is the ledger row. Where they disagree, `variants` lists each distinct payload with
-- its copies and first arrival, and tally settles the transaction with ledger_disputed.sql.

WITH
-- Step 1. Every copy that can belong to day D: the checked arrivals whose event happened on D
-- (UTC). Row-group statistics on event_time skip most of D-1's arrivals.
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
    FROM day_arrivals
    WHERE event_time >= $2
      AND event_time < $3
),

-- Step 2. Collapse the copies of each transaction. The grouping key is the hash of txn_id, so
-- DataFusion hash-partitions the work by transaction, never by partner: a partner sending
-- half the traffic cannot make one worker a straggler.
-- collapse_copies() counts the copies, finds the first arrival and keeps one copy of the
-- payload — bundled into a struct so every column comes from the same copy, picked without
-- comparing strings. Copies agree when they carry the same payload_hash; when some do not,
-- it also keeps every distinct payload with its own count and first arrival (`variants`),
-- which ledger_disputed.sql ranks. One pass over the raw copies serves both cases.
per_txn AS (
    SELECT
        txn_key,
        collapse_copies(
            payload,
            ingest_time,
            named_struct(
                'txn_id',     txn_id,
                'partner_id', partner_id,
                'event_time', event_time,
                'amount',     amount,
                'currency',   currency,
                'status',     status
            )
        ) AS collapsed
    FROM arrivals
    GROUP BY txn_key
)

-- Step 3. The ledger row: the payload, the UTC day it bills on (D: step 1 kept only events
-- of D), when it first arrived, and how many raw copies were collapsed into it.
SELECT
    txn_key,
    collapsed['copy']['txn_id']      AS txn_id,
    collapsed['copy']['partner_id']  AS partner_id,
    collapsed['copy']['event_time']  AS event_time,
    $1                               AS event_date,
    collapsed['copy']['amount']      AS amount,
    collapsed['copy']['currency']    AS currency,
    collapsed['copy']['status']      AS status,
    collapsed['first_arrival']       AS first_ingest_time,
    collapsed['copies']              AS copies,
    collapsed['variants'] IS NULL    AS agree,
    collapsed['variants']            AS variants
FROM per_txn
