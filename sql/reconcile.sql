-- Reconciliation of event day D: the ledger (slow path, exact) against the live view (fast
-- path, approximate), per partner and currency:
-- amounts in different currencies are never added together, so a USD shortfall cannot hide
-- behind a JPY surplus.
--
-- Parameters: $1 = D (DATE), $2 = D 00:00 UTC, $3 = D + 1 day 00:00 UTC (TIMESTAMPTZ).
--
-- Drift is relative to the ledger: |ledger - live| / max(|ledger|, 1 unit), computed for the
-- event count and for the amount (1 unit = 1 event, or 1.00 of money); a partner's drift is
-- the larger of the two. Each (partner, currency) gets its own row and drift. Amounts stay exact decimals; only the drift ratio is a float.
--
-- `raw_drift` compares the ledger with live_view alone. Events that arrived behind the live
-- watermark are not in live_view but in live_late; they are either events the live view
-- missed, or re-sent copies of events it already counted (a replay older than the dedup TTL
-- cannot be recognised as a copy). So the ledger is *explained* when it lies between
-- live_view and live_view + live_late; `unexplained_drift` is its distance from that range.
-- The verdict is on the unexplained drift.
WITH ledger_day AS (
    SELECT partner_id, currency,
           count(*)                                             AS events,
           count(*) FILTER (WHERE coalesce(status, '') <> 'ok') AS errors,
           sum(amount)                                          AS amount
    FROM ledger
    WHERE event_date = $1
    GROUP BY partner_id, currency
),
live_day AS (
    SELECT partner_id, currency, sum(events) AS events, sum(errors) AS errors, sum(amount) AS amount
    FROM live_view
    WHERE window_start >= $2 AND window_start < $3
    GROUP BY partner_id, currency
),
late_day AS (
    SELECT partner_id, currency, sum(events) AS events, sum(amount) AS amount
    FROM live_late
    WHERE window_start >= $2 AND window_start < $3
    GROUP BY partner_id, currency
),
partners AS (
    SELECT partner_id, currency FROM ledger_day
    UNION SELECT partner_id, currency FROM live_day
    UNION SELECT partner_id, currency FROM late_day
),
joined AS (
    SELECT p.partner_id, p.currency,
           coalesce(l.events, 0)                              AS ledger_events,
           coalesce(l.errors, 0)                              AS ledger_errors,
           CAST(coalesce(l.amount, 0) AS DECIMAL(38, 2))      AS ledger_amount,
           coalesce(v.events, 0)                              AS live_events,
           coalesce(v.errors, 0)                              AS live_errors,
           CAST(coalesce(v.amount, 0) AS DECIMAL(38, 2))      AS live_amount,
           coalesce(t.events, 0)                              AS late_events,
           CAST(coalesce(t.amount, 0) AS DECIMAL(38, 2))      AS late_amount
    FROM partners p
    LEFT JOIN ledger_day l ON (l.partner_id IS NOT DISTINCT FROM p.partner_id)
                          AND (l.currency IS NOT DISTINCT FROM p.currency)
    LEFT JOIN live_day v   ON (v.partner_id IS NOT DISTINCT FROM p.partner_id)
                          AND (v.currency IS NOT DISTINCT FROM p.currency)
    LEFT JOIN late_day t   ON (t.partner_id IS NOT DISTINCT FROM p.partner_id)
                          AND (t.currency IS NOT DISTINCT FROM p.currency)
),
gaps AS (
    SELECT *,
           abs(ledger_events - live_events)                   AS events_gap,
           abs(ledger_amount - live_amount)                   AS amount_gap,
           -- Distance of the ledger from [live, live + late] (0 inside the range).
           CASE WHEN ledger_events < live_events THEN live_events - ledger_events
                WHEN ledger_events > live_events + late_events THEN ledger_events - live_events - late_events
                ELSE 0 END                                    AS events_unexplained,
           CASE WHEN ledger_amount < least(live_amount, live_amount + late_amount)
                    THEN least(live_amount, live_amount + late_amount) - ledger_amount
                WHEN ledger_amount > greatest(live_amount, live_amount + late_amount)
                    THEN ledger_amount - greatest(live_amount, live_amount + late_amount)
                ELSE CAST(0 AS DECIMAL(38, 2)) END            AS amount_unexplained
    FROM joined
)
SELECT partner_id, currency,
       ledger_events, ledger_errors, ledger_amount,
       live_events, live_errors, live_amount,
       late_events, late_amount,
       greatest(
           CAST(events_gap AS DOUBLE) / greatest(abs(CAST(ledger_events AS DOUBLE)), 1.0),
           CAST(amount_gap AS DOUBLE) / greatest(abs(CAST(ledger_amount AS DOUBLE)), 1.0)
       ) AS raw_drift,
       greatest(
           CAST(events_unexplained AS DOUBLE) / greatest(abs(CAST(ledger_events AS DOUBLE)), 1.0),
           CAST(amount_unexplained AS DOUBLE) / greatest(abs(CAST(ledger_amount AS DOUBLE)), 1.0)
       ) AS unexplained_drift
FROM gaps
ORDER BY partner_id, currency
