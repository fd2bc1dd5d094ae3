-- Reconcile: the raw files the live mode quarantined (never counted in live_view) that landed
-- in the reconciled day's `ingest_date` folder or the next one ($1, $2: path patterns). Drift on
-- that day may be these files' rows; they are named beside the verdict.
SELECT path, reason
FROM live_quarantine
WHERE path LIKE $1 OR path LIKE $2
ORDER BY path
