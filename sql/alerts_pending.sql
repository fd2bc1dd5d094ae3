-- Alerts the webhook had not accepted when their live loop stopped (`pending`), and that no
-- later row delivered or refused: a restarted loop sends them again, oldest first. All rows of
-- one alert_id carry the same alert; only `delivery`, `delivered_at` and `attempts` differ.
SELECT state, partner_id, window_start, events, errors, error_rate, threshold, detected_at
FROM alerts
GROUP BY alert_id, state, partner_id, window_start, events, errors, error_rate, threshold, detected_at
HAVING bool_and(delivery = 'pending')
ORDER BY detected_at, alert_id
