-- The days around D whose committed ledger decided a transaction they share with D otherwise
-- than D's run: each must be rebuilt for the transaction to be counted exactly once.
--
-- A run of D settles every transaction whose copies name D and another day X (X within two
-- days of D), and X's own run, reading the same copies, picks the same owner. It does not
-- when X was built before some of those copies landed (a late file in an old ingest_date
-- folder), or by an older tally. Then D's rerun changes the ownership, and X's ledger still
-- holds (or still lacks) the transaction.
--
-- Inputs (filled by tally):
--   shared               one row per transaction of D (within the bound) and other day X one
--                        of its copies names: txn_id, day (X), owner_day (the day D's
--                        settlement gave it to);
--   built_days           the days X with a committed ledger partition (day);
--   neighbour_conflicts  X's committed `ledger_conflicts` rows: how X's run settled the
--                        transactions it saw spanning days or disagreeing.
-- Output: one row per day to rebuild, with how many shared transactions it decided otherwise.

WITH
-- How each X settled the transactions its run saw: the day its winning copy names.
decided AS (
    SELECT txn_id, event_date AS day,
           max(CASE WHEN is_winner THEN copy_event_date END) AS winner_day,
           bool_or(reason = 'spread_beyond_bound')            AS beyond_bound
    FROM neighbour_conflicts
    GROUP BY txn_id, event_date
),

verdicts AS (
    SELECT s.day,
           s.owner_day = s.day AS should_keep,
           -- X's run kept the transaction when its winner named X, or when it saw no copy of
           -- another day at all (then there is no conflict row, and X's own copy won).
           COALESCE(d.winner_day = s.day, true) AS kept,
           COALESCE(d.beyond_bound, false)      AS beyond_bound
    FROM shared s
    JOIN built_days b ON b.day = s.day
    LEFT JOIN decided d ON d.txn_id = s.txn_id AND d.day = s.day
)

SELECT day, count(*) AS transactions
FROM verdicts
WHERE should_keep <> kept
  -- A spread beyond the bound, as X saw it, is already reported: rebuilding X would not
  -- change what X sees.
  AND NOT beyond_bound
GROUP BY day
ORDER BY day
