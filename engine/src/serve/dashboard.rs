//! The operations dashboard (`/` of `tally serve`): one HTML page whose figures are rendered
//! on the server (so they are in the DOM for a reader, a test or a page without scripts),
//! then kept fresh by `assets/dashboard.js` polling `/api/live` and `/api/status`.
//!
//! Every asset is compiled into the binary: an operations room without internet access gets
//! the whole page. uPlot (MIT, its licence served beside it) draws the charts.

use super::live_api::{DayVerdict, PartnerTotal, Status};
use html_escape::encode_text;
use std::fmt::Write;

const PAGE: &str = include_str!("assets/dashboard.html");

/// A static asset: path under `/assets/`, content type, body.
pub const ASSETS: &[(&str, &str, &str)] = &[
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_str!("assets/dashboard.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("assets/uPlot.min.css"),
    ),
    (
        "uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_str!("assets/uPlot.LICENSE"),
    ),
];

fn count(n: i64) -> String {
    // Thousands separators, as the script renders them.
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn rate(errors: i64, events: i64) -> String {
    if events > 0 {
        format!("{:.2}%", 100.0 * errors as f64 / events as f64)
    } else {
        "–".into()
    }
}

fn partner_rows(partners: &[PartnerTotal], status: &Status) -> String {
    if partners.is_empty() {
        return r#"<tr><td colspan="6" class="empty">no live data yet</td></tr>"#.into();
    }
    let mut out = String::new();
    for p in partners {
        let name = p.partner_id.as_deref().unwrap_or("");
        let firing = status.firing.iter().any(|f| f.partner_id == name);
        let shown = if name.is_empty() { "(none)" } else { name };
        let _ = write!(
            out,
            r#"<tr class="{class}" data-partner="{attr}"><td>{shown}</td><td class="num">{events}</td><td class="num">–</td><td class="num">{errors}</td><td class="num{hi}">{rate}</td><td>{badge}</td></tr>"#,
            class = if firing { "firing" } else { "" },
            attr = html_escape::encode_double_quoted_attribute(name),
            shown = encode_text(shown),
            events = count(p.events),
            errors = count(p.errors),
            hi = if firing { " rate-high" } else { "" },
            rate = rate(p.errors, p.events),
            badge = if firing {
                r#"<span class="badge firing">firing</span>"#
            } else {
                r#"<span class="badge ok">ok</span>"#
            },
        );
    }
    out
}

fn reconciliation_rows(days: &[DayVerdict]) -> String {
    if days.is_empty() {
        return r#"<tr><td colspan="4" class="empty">no reconciliation yet</td></tr>"#.into();
    }
    let mut out = String::new();
    for d in days {
        let _ = write!(
            out,
            r#"<tr><td>{day}</td><td><span class="badge {class}">{verdict}</span></td><td class="num">{drifting} / {partners}</td><td class="num">{drift}</td></tr>"#,
            day = encode_text(&d.day),
            class = if d.verdict == "ok" { "ok" } else { "drift" },
            verdict = encode_text(&d.verdict),
            drifting = d.drifting,
            partners = d.partners,
            drift = d
                .max_unexplained_drift
                .map(|x| format!("{:.3}%", 100.0 * x))
                .unwrap_or_else(|| "–".into()),
        );
    }
    out
}

/// The page with the figures as of now.
pub fn render(partners: &[PartnerTotal], status: &Status) -> String {
    let firing: String = status
        .firing
        .iter()
        .map(|f| {
            format!(
                "<li><b>{}</b> error rate over the threshold since {} UTC</li>",
                encode_text(&f.partner_id),
                encode_text(f.since.get(11..16).unwrap_or(&f.since)),
            )
        })
        .collect();
    let events: i64 = partners.iter().map(|p| p.events).sum();
    let errors: i64 = partners.iter().map(|p| p.errors).sum();
    let freshness = status
        .seconds_since_last_commit
        .map(|s| format!("{s:.1} s ago"))
        .unwrap_or_else(|| "no batches".into());
    let watermark = status
        .watermark
        .as_deref()
        .and_then(|w| w.get(11..19))
        .map(|t| format!("{t} UTC"))
        .unwrap_or_else(|| "–".into());
    let generated = chrono::Utc::now().format("%H:%M:%S UTC").to_string();
    // Each marker is replaced once, by text escaped above.
    PAGE.replace("{{freshness}}", &encode_text(&freshness))
        .replace("{{watermark}}", &encode_text(&watermark))
        .replace("{{rate}}", &count(events))
        .replace("{{error_rate}}", &rate(errors, events))
        .replace("{{firing_count}}", &status.firing.len().to_string())
        .replace("{{quarantined}}", &count(status.quarantined_files))
        .replace(
            "{{alerts_class}}",
            if status.firing.is_empty() {
                " none"
            } else {
                ""
            },
        )
        .replace("{{firing}}", &firing)
        .replace("{{partners}}", &partner_rows(partners, status))
        .replace(
            "{{reconciliations}}",
            &reconciliation_rows(&status.reconciliations),
        )
        .replace("{{generated}}", &generated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_group_thousands() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(-1234567), "-1,234,567");
    }

    #[test]
    fn partner_names_are_escaped() {
        let status = Status {
            watermark: None,
            watermark_lag_seconds: None,
            last_commit: None,
            seconds_since_last_commit: None,
            alert_rule: false,
            firing: Vec::new(),
            reconciliations: Vec::new(),
            quarantined_files: 0,
            quarantine: Vec::new(),
        };
        let page = render(
            &[PartnerTotal {
                partner_id: Some("<script>x</script>".into()),
                events: 10,
                errors: 1,
            }],
            &status,
        );
        assert!(!page.contains("<script>x"), "{page}");
        assert!(page.contains("&lt;script&gt;x"));
        assert!(page.contains("10.00%"));
        assert!(!page.contains("{{"), "a marker was left");
    }
}
