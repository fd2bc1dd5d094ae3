-- Settles the transactions of day D whose copies disagree. Table `disputed_txns` (filled by
-- tally from ledger.sql's output) has one row per such transaction, with its `variants`: each
-- distinct payload (`copy`), how many copies carried it and when the first of them arrived.
-- Variants are ranked per txn_id, so two ids that happen to share a txn_key are settled apart.
--
-- Output: one row per distinct payload of each disputed transaction, with
--   variants   how many distinct payloads the transaction has (1 = only event_time differed)
--   is_winner  the payload of the copy that arrived first; a tie on arrival time goes to
--              the smallest (partner_id, amount, currency, status), so the winner depends
--              on content only, never on file order.

WITH
-- Step 1. One row per variant: the payload's columns, its copies and its first arrival.
variants AS (
    SELECT
        v['copy']['txn_id']      AS txn_id,
        v['copy']['partner_id']  AS partner_id,
        v['copy']['event_time']  AS event_time,
        v['copy']['amount']      AS amount,
        v['copy']['currency']    AS currency,
        v['copy']['status']      AS status,
        v['first_arrival']       AS ingest_time,
        v['copies']              AS copies
    FROM (SELECT unnest(variants) AS v FROM disputed_txns)
),

-- Step 2. Rank the variants: earliest arrival first, then the content tie-break. A variant's
-- first arrival is its earliest copy's, so rank 1 is the payload of the copy that arrived
-- first, exactly as ranking every copy would give.
ranked AS (
    SELECT *,
        ROW_NUMBER() OVER (
            PARTITION BY txn_id
            ORDER BY ingest_time, partner_id, amount, currency, status, event_time
        ) AS arrival_rank
    FROM variants
)

-- Step 3. One row per distinct payload: its first arrival, its copies, whether it won; and,
-- for the ledger row, the transaction's totals over all its payloads.
SELECT
    txn_id,
    partner_id,
    amount,
    currency,
    status,
    max(CASE WHEN arrival_rank = 1 THEN event_time END)   AS event_time,
    min(ingest_time)                                      AS first_ingest_time,
    sum(copies)                                           AS copies,
    bool_or(arrival_rank = 1)                             AS is_winner,
    count(*) OVER (PARTITION BY txn_id)                   AS variants,
    sum(sum(copies)) OVER (PARTITION BY txn_id)           AS txn_copies,
    min(min(ingest_time)) OVER (PARTITION BY txn_id)      AS txn_first_ingest_time
FROM ranked
GROUP BY txn_id, partner_id, amount, currency, status
