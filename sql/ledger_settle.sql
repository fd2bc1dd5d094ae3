-- Settles the transactions of day D that need more than "all copies agree": copies that
-- disagree on the payload, and copies whose event_time names another day.
--
-- Inputs (filled by tally from ledger.sql's output and ledger_neighbours.sql):
--   disputed_txns     D's transactions whose copies disagree, with collapse_copies' `variants`
--                     (each distinct payload, how many copies carried it, its first arrival);
--   day_rows          D's ledger rows of transactions that also have copies on a neighbouring
--                     day (`copies` of them, the first arriving at `first_ingest_time`);
--   neighbour_copies  those neighbouring copies, one row per raw copy.
-- Parameters: $1 D (DATE); $2 the bound: how many days apart one transaction's copies may name.
--
-- The winner is the copy that arrived first; a tie goes to the smallest (partner_id, amount,
-- currency, status, event_time), so the winner depends on content only, never on file order
-- or on which day's run decides. The transaction belongs to the day its winner names.
--
-- Output: one row per distinct payload and day of each settled transaction, with
--   copy_day          the UTC day the payload's copies name
--   is_winner         the payload of the winning copy
--   owned_here        the winning copy names D (D's ledger keeps the transaction)
--   owner_day         the day the winning copy names
--   spans_days        the copies name more than one day
--   beyond_bound      the copies name days further apart than the bound: days that cannot see
--                     each other's copies may disagree on the winner, so it is reported
--   variants          how many distinct (payload, day) rows the transaction has
--   winner_event_time, txn_copies, txn_first_ingest_time: the ledger row's values

WITH
-- Step 1. Every distinct copy, from the three inputs.
settle_copies AS (
    SELECT v['copy']['txn_id']      AS txn_id,
           v['copy']['partner_id']  AS partner_id,
           v['copy']['event_time']  AS event_time,
           v['copy']['amount']      AS amount,
           v['copy']['currency']    AS currency,
           v['copy']['status']      AS status,
           v['first_arrival']       AS first_arrival,
           v['copies']              AS copies
    FROM (SELECT unnest(variants) AS v FROM disputed_txns)
    UNION ALL
    SELECT txn_id, partner_id, event_time, amount, currency, status,
           first_ingest_time AS first_arrival, copies
    FROM day_rows
    UNION ALL
    SELECT txn_id, partner_id, event_time, amount, currency, status,
           ingest_time AS first_arrival, CAST(1 AS BIGINT) AS copies
    FROM neighbour_copies
),

-- Step 2. Merge identical copies (the same payload and event_time from different sources).
copies AS (
    SELECT txn_id, partner_id, event_time, amount, currency, status,
           min(first_arrival) AS first_arrival,
           sum(copies)        AS copies
    FROM settle_copies
    GROUP BY txn_id, partner_id, event_time, amount, currency, status
),

-- Step 3. Rank every copy of a transaction: earliest arrival first, then the content
-- tie-break. Ranked per txn_id, so two ids sharing a txn_key are settled apart.
ranked AS (
    SELECT *,
        CAST(event_time AS DATE) AS copy_day,
        ROW_NUMBER() OVER (
            PARTITION BY txn_id
            ORDER BY first_arrival, partner_id, amount, currency, status, event_time
        ) AS arrival_rank
    FROM copies
),

-- Step 4. Only transactions of D: a neighbouring copy whose key merely collided with one of
-- D's keys has no copy naming D.
of_day AS (
    SELECT * FROM ranked
    WHERE txn_id IN (SELECT txn_id FROM ranked WHERE copy_day = $1)
),

-- Step 5. One row per distinct payload and day: its first arrival, its copies, whether it won.
payloads AS (
    SELECT txn_id, partner_id, amount, currency, status, copy_day,
           max(CASE WHEN arrival_rank = 1 THEN event_time END) AS winner_event_time_here,
           min(first_arrival)                                  AS first_ingest_time,
           sum(copies)                                         AS copies,
           bool_or(arrival_rank = 1)                           AS is_winner
    FROM of_day
    GROUP BY txn_id, partner_id, amount, currency, status, copy_day
)

SELECT
    txn_id, partner_id, amount, currency, status, copy_day,
    first_ingest_time, copies, is_winner,
    max(CASE WHEN is_winner THEN copy_day END) OVER (PARTITION BY txn_id) = $1 AS owned_here,
    max(CASE WHEN is_winner THEN copy_day END) OVER (PARTITION BY txn_id)      AS owner_day,
    min(copy_day) OVER (PARTITION BY txn_id)
        <> max(copy_day) OVER (PARTITION BY txn_id)                           AS spans_days,
    CAST(max(copy_day) OVER (PARTITION BY txn_id) AS INT)
        - CAST(min(copy_day) OVER (PARTITION BY txn_id) AS INT) > $2          AS beyond_bound,
    count(*) OVER (PARTITION BY txn_id)                                       AS variants,
    max(winner_event_time_here) OVER (PARTITION BY txn_id)                    AS winner_event_time,
    sum(copies) OVER (PARTITION BY txn_id)                                    AS txn_copies,
    min(first_ingest_time) OVER (PARTITION BY txn_id)                         AS txn_first_ingest_time
FROM payloads
