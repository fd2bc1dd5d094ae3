-- Settles the transactions of day D whose copies disagree (table `disputed_txns`: the txn_key
-- of each, filled by tally from ledger.sql's output): ranks every copy and reports each
-- distinct payload. Copies are matched by key but ranked per txn_id, so two ids sharing a key
-- are settled apart.
--
-- Parameters: $1 D, $2 D + lateness horizon, $3 / $4 the UTC bounds of D (as in ledger.sql).
--
-- Output: one row per distinct payload of each disputed transaction, with
--   variants   how many distinct payloads the transaction has (1 = only event_time differed)
--   is_winner  the payload of the copy that arrived first; a tie on arrival time goes to
--              the smallest (partner_id, amount, currency, status), so the winner depends
--              on content only, never on file order.

WITH
-- Step 1. The copies of the disputed transactions, from the same arrival window as the ledger.
copies_of_disputed AS (
    SELECT a.txn_id, a.partner_id, a.event_time, a.ingest_time, a.amount, a.currency, a.status
    FROM raw_payments a
    JOIN disputed_txns d ON txn_key(a.txn_id) = d.txn_key
    WHERE a.ingest_date BETWEEN $1 AND $2
      AND a.event_time >= $3
      AND a.event_time < $4
),

-- Step 2. Rank copies: earliest arrival first, then the content tie-break.
ranked AS (
    SELECT *,
        ROW_NUMBER() OVER (
            PARTITION BY txn_id
            ORDER BY ingest_time, partner_id, amount, currency, status, event_time
        ) AS arrival_rank
    FROM copies_of_disputed
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
    count(*)                                              AS copies,
    bool_or(arrival_rank = 1)                             AS is_winner,
    count(*) OVER (PARTITION BY txn_id)                   AS variants,
    sum(count(*)) OVER (PARTITION BY txn_id)              AS txn_copies,
    min(min(ingest_time)) OVER (PARTITION BY txn_id)      AS txn_first_ingest_time
FROM ranked
GROUP BY txn_id, partner_id, amount, currency, status
