-- Optimize: one ledger day's rows in the ledger's file order (partner, then transaction), to be
-- written again in fewer, larger files. $1: the day. `ledger_day` is the ledger at the version
-- the optimize read and will commit against. The columns come in the files' order with the
-- partition column last: the order the ledger run's fingerprint hashed them in.
SELECT txn_id, partner_id, event_time, amount, currency, status, first_ingest_time, copies,
       event_date
FROM ledger_day
WHERE event_date = $1
ORDER BY partner_id, txn_id
