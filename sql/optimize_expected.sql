-- Optimize: the fingerprint the newest successful ledger run of day $1 committed (from `runs`);
-- the rewritten files must hold exactly those rows.
SELECT ledger_rows, CAST(ledger_amount AS VARCHAR) AS ledger_amount, row_hash, ledger_version
FROM runs
WHERE day = $1 AND outcome = 'ok' AND ledger_version IS NOT NULL
ORDER BY ledger_version DESC
LIMIT 1
