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

-- Step 3. Number every copy in one order: by transaction, then earliest arrival first, then
-- the content tie-break. A transaction's winner is its lowest number. Numbered per txn_id,
-- so two ids sharing a txn_key are settled apart. (One window over all copies in one order:
-- a window partitioned by txn_id pays its overhead per two-row partition.)
numbered AS (
    SELECT *,
        CAST(event_time AS DATE) AS copy_day,
        ROW_NUMBER() OVER (
            ORDER BY txn_id, first_arrival, partner_id, amount, currency, status, event_time
        ) AS copy_order
    FROM copies
),

-- Step 4. Each transaction's winner, for transactions of D only: a neighbouring copy whose
-- key merely collided with one of D's keys has no copy naming D.
winners AS (
    SELECT txn_id, min(copy_order) AS winner_order
    FROM numbered
    GROUP BY txn_id
    HAVING bool_or(copy_day = $1)
),
of_day AS (
    SELECT n.*, n.copy_order = w.winner_order AS won
    FROM numbered n
    JOIN winners w ON n.txn_id = w.txn_id
),

-- Step 5. One row per distinct payload and day: its first arrival, its copies, whether it won.
payloads AS (
    SELECT txn_id, partner_id, amount, currency, status, copy_day,
           max(CASE WHEN won THEN event_time END)           AS winner_event_time_here,
           min(first_arrival)                                  AS first_ingest_time,
           sum(copies)                                         AS copies,
           bool_or(won)                                        AS is_winner
    FROM of_day
    GROUP BY txn_id, partner_id, amount, currency, status, copy_day
),

-- Step 6. Per transaction: the day its winner names, the days its copies name, its totals.
-- A GROUP BY joined back, not window functions: a window partitioned by txn_id evaluates
-- each two-row partition on its own, which cost most of the settlement's time.
per_txn AS (
    SELECT txn_id,
           max(CASE WHEN is_winner THEN copy_day END) AS owner_day,
           min(copy_day)                               AS first_day,
           max(copy_day)                               AS last_day,
           count(*)                                    AS variants,
           max(winner_event_time_here)                 AS winner_event_time,
           sum(copies)                                 AS txn_copies,
           min(first_ingest_time)                      AS txn_first_ingest_time
    FROM payloads
    GROUP BY txn_id
)

SELECT
    p.txn_id, p.partner_id, p.amount, p.currency, p.status, p.copy_day,
    p.first_ingest_time, p.copies, p.is_winner,
    t.owner_day = $1                                                  AS owned_here,
    t.owner_day,
    t.first_day <> t.last_day                                         AS spans_days,
    CAST(t.last_day AS INT) - CAST(t.first_day AS INT) > $2           AS beyond_bound,
    t.variants,
    t.winner_event_time,
    t.txn_copies,
    t.txn_first_ingest_time
FROM payloads p
JOIN per_txn t ON p.txn_id = t.txn_id
