//! Operations: `/api/live` and the Prometheus series against independent counts of the raw
//! files, per-partner error alerts through a real webhook receiver (including an outage), and
//! the dashboard rendered by real headless Chromium (Debian's `chromium`).

use crate::harness::*;
use crate::live::{expected, row, Totals, MINUTE};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DAY: &str = "2026-11-01";

fn t0() -> i64 {
    micros("2026-11-01T10:00:00Z")
}

/// GET with curl: (status, body).
fn get(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap_or(0), body.to_string())
}

/// Every sample of a Prometheus text exposition: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn scrape(url: &str) -> BTreeMap<String, f64> {
    let (code, body) = get(url);
    assert_eq!(code, 200, "{body}");
    samples(&body)
}

fn value(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

/// Polls `url`'s metrics until `done` holds for them.
fn wait_metrics(
    url: &str,
    what: &str,
    done: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = scrape(url);
        if done(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cents_of(s: &str) -> i128 {
    let neg = s.starts_with('-');
    let (int, frac) = s
        .trim_start_matches('-')
        .split_once('.')
        .unwrap_or((s, "0"));
    let frac = format!("{frac:0<2}");
    let c = int.parse::<i128>().unwrap() * 100 + frac[..2].parse::<i128>().unwrap();
    if neg {
        -c
    } else {
        c
    }
}

fn api_live(p: &Proc, minutes: &str) -> Totals {
    let (code, body) = get(&p.url("http", &format!("/api/live?minutes={minutes}")));
    assert_eq!(code, 200, "{body}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    rows.iter()
        .map(|r| {
            (
                (
                    micros(r["window_start"].as_str().unwrap()),
                    r["partner_id"].as_str().unwrap().to_string(),
                    r["currency"].as_str().unwrap().to_string(),
                ),
                (
                    r["events"].as_u64().unwrap(),
                    r["errors"].as_u64().unwrap(),
                    cents_of(r["amount"].as_str().unwrap()),
                ),
            )
        })
        .collect()
}

/// 600 distinct transactions over 7 minutes from 10:00, 5 partners, two currencies, ~7% errors.
fn traffic(prefix: &str, start: i64, n: usize) -> Vec<RawRow> {
    (0..n)
        .map(|i| {
            let t = start + i as i64 * 700_000;
            let mut r = row(
                &format!("{prefix}-{i}"),
                &format!("p{}", i % 5),
                t,
                t + 1_500_000,
                100 + (i as i128 * 37) % 10_000,
                if i % 14 == 3 { "declined" } else { "ok" },
            );
            if i % 3 == 0 {
                r.currency = "JPY".into();
            }
            r
        })
        .collect()
}

#[test]
fn api_live_and_the_metrics_equal_an_independent_count_and_a_relanded_file_is_not_applied() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    let rows = traffic("a", t0(), 600);
    write_raw(&lake, DAY, "f1.parquet", &rows[..300]);
    write_raw(&lake, DAY, "f2.parquet", &rows[300..]);
    let p = Proc::start(
        dir.path(),
        &[
            "serve",
            "--live",
            "--interval",
            "200ms",
            "--http",
            "127.0.0.1:0",
            "--flight-sql",
            "off",
            "--pg",
            "off",
        ],
        &["http"],
    );
    let metrics = p.url("http", "/metrics");
    let m = wait_metrics(&metrics, "600 applied rows", |m| {
        value(m, "tally_live_rows_total{outcome=\"applied\"}") >= 600.0
    });
    assert_eq!(
        value(&m, "tally_live_rows_total{outcome=\"applied\"}"),
        600.0
    );
    assert_eq!(value(&m, "tally_live_rows_total{outcome=\"bad\"}"), 0.0);
    for partner in 0..5 {
        let mine: Vec<&RawRow> = rows
            .iter()
            .filter(|r| r.partner_id == format!("p{partner}"))
            .collect();
        let errors = mine.iter().filter(|r| r.status != "ok").count();
        assert_eq!(
            value(
                &m,
                &format!("tally_live_partner_events_total{{partner_id=\"p{partner}\"}}")
            ),
            mine.len() as f64
        );
        assert_eq!(
            value(
                &m,
                &format!("tally_live_partner_errors_total{{partner_id=\"p{partner}\"}}")
            ),
            errors as f64
        );
    }
    assert!(value(&m, "tally_live_batches_total") >= 1.0);
    assert!(value(&m, "tally_live_batch_duration_seconds_count") >= 1.0);
    // The watermark is the newest event_time less the default 2 min grace (the rows are in the
    // past, so the lag is large).
    let newest = rows.iter().map(|r| r.event_time).max().unwrap();
    assert_eq!(
        value(&m, "tally_live_watermark_seconds"),
        (newest - 120_000_000) as f64 / 1e6
    );
    assert!(value(&m, "tally_live_watermark_lag_seconds") > 0.0);

    // /api/live: every (minute, partner, currency) of the raw rows, exactly.
    let want = expected(&rows);
    assert_eq!(api_live(&p, "60"), want);
    // The last 2 minutes before (and including) the newest window.
    let newest_window = *want.keys().map(|(w, _, _)| w).max().unwrap();
    let last_two: Totals = want
        .iter()
        .filter(|((w, _, _), _)| *w > newest_window - 2 * MINUTE)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(api_live(&p, "2"), last_two);
    for bad in ["0", "abc", "100000"] {
        let (code, body) = get(&p.url("http", &format!("/api/live?minutes={bad}")));
        assert_eq!(code, 400, "minutes={bad}: {body}");
        assert!(body.contains("minutes"), "{body}");
        assert_eq!(body.trim().lines().count(), 1, "{body}");
    }
    let (code, status) = get(&p.url("http", "/api/status"));
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        micros(status["watermark"].as_str().unwrap()),
        newest - 120_000_000,
        "{status}"
    );
    assert!(status["seconds_since_last_commit"].as_f64().unwrap() >= 0.0);

    // A partner re-sends f1 under another name: nothing more is applied, and every row of it
    // is counted as a copy or a late row.
    let before = scrape(&metrics);
    let dropped = |m: &BTreeMap<String, f64>| {
        value(m, "tally_live_rows_total{outcome=\"deduped\"}")
            + value(m, "tally_live_rows_total{outcome=\"late\"}")
    };
    write_raw(&lake, DAY, "f1-resent.parquet", &rows[..300]);
    let after = wait_metrics(&metrics, "the re-sent file", |m| {
        dropped(m) >= dropped(&before) + 300.0
    });
    assert_eq!(
        value(&after, "tally_live_rows_total{outcome=\"applied\"}"),
        600.0
    );
    assert_eq!(dropped(&after), dropped(&before) + 300.0);
    assert_eq!(api_live(&p, "60"), want);
    // The server's own series are in the same exposition.
    assert!(
        value(
            &after,
            "tally_serve_queries_total{endpoint=\"http\",outcome=\"ok\"}"
        ) >= 3.0
    );
    let (code, _) = p.terminate();
    assert_eq!(code, Some(0));
}

/// A webhook receiver on loopback: records each POSTed JSON body with when it arrived.
struct Receiver {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(addr: SocketAddr, got: Arc<Mutex<Vec<(Instant, serde_json::Value)>>>) -> Receiver {
        // The same port again after an outage: the old socket may take a moment to let go.
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() > deadline => panic!("bind {addr}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, got2) = (Arc::clone(&stop), Arc::clone(&got));
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        if let Some(body) = read_request(&s) {
                            got2.lock().unwrap().push((Instant::now(), body));
                            let mut s = s;
                            let _ = s.write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                            );
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Receiver {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops listening: the port refuses connections until the next start.
    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn read_request(s: &std::net::TcpStream) -> Option<serde_json::Value> {
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut r = BufReader::new(s);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

/// `n` events of `partner` in the minute starting at `minute`, `errors` of them failed.
fn minute_rows(partner: &str, minute: i64, n: usize, errors: usize, tag: &str) -> Vec<RawRow> {
    (0..n)
        .map(|i| {
            let t = minute + i as i64 * (MINUTE / n as i64);
            row(
                &format!("{tag}-{partner}-{i}"),
                partner,
                t,
                t + 2_000_000,
                1000 + i as i128,
                if i < errors { "declined" } else { "ok" },
            )
        })
        .collect()
}

fn wait_alerts(got: &Mutex<Vec<(Instant, serde_json::Value)>>, n: usize, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while got.lock().unwrap().len() < n {
        assert!(
            Instant::now() < deadline,
            "expected {n} alerts within {secs} s, got {:?}",
            got.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_alert_fires_within_5_s_once_per_episode_resolves_and_survives_a_webhook_outage() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    let m0 = t0();
    // Something to follow before the loop starts.
    write_raw(
        &lake,
        DAY,
        "000.parquet",
        &minute_rows("good", m0 - MINUTE, 25, 0, "w"),
    );
    let got = Arc::new(Mutex::new(Vec::new()));
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap(), Arc::clone(&got));
    let hook = format!("http://{}/hook", receiver.addr);
    let args = [
        "live",
        "--interval",
        "200ms",
        "--format",
        "json",
        "--metrics",
        "127.0.0.1:0",
        "--alert-webhook",
        &hook,
        "--alert-error-rate",
        "0.5",
        "--alert-min-events",
        "20",
    ];
    let live = Proc::start(dir.path(), &args, &["metrics"]);
    let metrics = live.url("metrics", "/metrics");
    wait_metrics(&metrics, "the first batch", |m| {
        value(m, "tally_live_rows_total{outcome=\"applied\"}") >= 25.0
    });

    // Minute 0: partner "bad" fails 20 of 30; "good" is fine.
    let mut f1 = minute_rows("bad", m0, 30, 20, "a");
    f1.extend(minute_rows("good", m0, 30, 1, "a"));
    let landed = Instant::now();
    write_raw(&lake, DAY, "001.parquet", &f1);
    wait_alerts(&got, 1, 5);
    let (at, first) = got.lock().unwrap()[0].clone();
    assert!(at.duration_since(landed) < Duration::from_secs(5));
    assert_eq!(first["state"], "firing", "{first}");
    assert_eq!(first["partner_id"], "bad");
    assert_eq!(first["window_start"], "2026-11-01T10:00:00Z");
    assert_eq!(first["events"], 30);
    assert_eq!(first["errors"], 20);
    assert!((first["error_rate"].as_f64().unwrap() - 20.0 / 30.0).abs() < 1e-9);
    assert_eq!(first["threshold"], 0.5);

    // Minute 1: still failing, same episode: nothing new is sent.
    let mut f2 = minute_rows("bad", m0 + MINUTE, 30, 25, "b");
    f2.extend(minute_rows("good", m0 + MINUTE, 30, 0, "b"));
    write_raw(&lake, DAY, "002.parquet", &f2);
    // Minute 2: "bad" is healthy again, but the minute is still the newest (filling).
    write_raw(
        &lake,
        DAY,
        "003.parquet",
        &minute_rows("bad", m0 + 2 * MINUTE, 30, 0, "c"),
    );
    wait_metrics(&metrics, "minutes 1 and 2", |m| {
        value(m, "tally_live_rows_total{outcome=\"applied\"}") >= (25 + 60 + 60 + 30) as f64
    });
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(got.lock().unwrap().len(), 1, "{:?}", got.lock().unwrap());
    // Minute 3 arrives: minute 2 is closed and healthy: resolved.
    write_raw(
        &lake,
        DAY,
        "004.parquet",
        &minute_rows("good", m0 + 3 * MINUTE, 30, 0, "d"),
    );
    wait_alerts(&got, 2, 5);
    let resolved = got.lock().unwrap()[1].1.clone();
    assert_eq!(resolved["state"], "resolved", "{resolved}");
    assert_eq!(resolved["partner_id"], "bad");
    assert_eq!(resolved["window_start"], "2026-11-01T10:02:00Z");
    assert_eq!(resolved["errors"], 0);

    // The receiver goes down; "bad" fails again (a new episode) and batches go on.
    receiver.stop();
    let mut f5 = minute_rows("bad", m0 + 4 * MINUTE, 30, 30, "e");
    f5.extend(minute_rows("good", m0 + 4 * MINUTE, 30, 0, "e"));
    write_raw(&lake, DAY, "005.parquet", &f5);
    let down = wait_metrics(&metrics, "a failed delivery", |m| {
        value(m, "tally_live_alert_delivery_failures_total") >= 1.0
    });
    let applied = value(&down, "tally_live_rows_total{outcome=\"applied\"}");
    write_raw(
        &lake,
        DAY,
        "006.parquet",
        &minute_rows("good", m0 + 5 * MINUTE, 30, 0, "f"),
    );
    wait_metrics(&metrics, "a batch while the webhook is down", |m| {
        value(m, "tally_live_rows_total{outcome=\"applied\"}") >= applied + 30.0
    });
    assert_eq!(got.lock().unwrap().len(), 2);
    // It comes back on the same port: the queued alert arrives (backoff ≤ 10 s).
    let receiver = Receiver::start(receiver_addr(&hook), Arc::clone(&got));
    wait_alerts(&got, 3, 30);
    let again = got.lock().unwrap()[2].1.clone();
    assert_eq!(again["state"], "firing", "{again}");
    assert_eq!(again["window_start"], "2026-11-01T10:04:00Z");
    assert_eq!(again["errors"], 30);
    let m = scrape(&metrics);
    assert_eq!(value(&m, "tally_live_alerts_total{state=\"firing\"}"), 2.0);
    assert_eq!(
        value(&m, "tally_live_alerts_total{state=\"resolved\"}"),
        1.0
    );
    assert_eq!(value(&m, "tally_live_alerts_firing"), 1.0);
    assert_eq!(value(&m, "tally_live_alerts_dropped_total"), 0.0);
    let (code, _) = live.terminate();
    assert_eq!(code, Some(0));

    // Every alert sent is in `alerts`, delivered.
    let out = tally_ok(
        dir.path(),
        &[
            "sql",
            "SELECT state, partner_id, CAST(window_start AS VARCHAR) AS w, delivery = 'delivered' AND delivered_at IS NOT NULL FROM alerts ORDER BY detected_at, w",
            "--format",
            "csv",
        ],
    );
    let recorded: Vec<Vec<String>> = csv_rows(&out);
    let states: Vec<(&str, &str)> = recorded
        .iter()
        .map(|r| (r[0].as_str(), r[2].as_str()))
        .collect();
    assert_eq!(states.len(), 3, "{out}");
    assert_eq!(states[0].0, "firing");
    assert!(states[0].1.contains("10:00:00"), "{out}");
    assert_eq!(states[1].0, "resolved");
    assert!(states[2].1.contains("10:04:00"), "{out}");
    assert!(
        recorded.iter().all(|r| r[1] == "bad" && r[3] == "true"),
        "{out}"
    );

    // A restart continues the episode: another failing minute sends nothing.
    let live = Proc::start(dir.path(), &args, &["metrics"]);
    let metrics = live.url("metrics", "/metrics");
    write_raw(
        &lake,
        DAY,
        "007.parquet",
        &minute_rows("bad", m0 + 6 * MINUTE, 30, 30, "g"),
    );
    wait_metrics(&metrics, "the batch after the restart", |m| {
        value(m, "tally_live_rows_total{outcome=\"applied\"}") >= 30.0
    });
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(got.lock().unwrap().len(), 3, "{:?}", got.lock().unwrap());

    // The webhook goes down again, "bad" recovers, and the loop is stopped before the receiver
    // is back: the resolved alert is recorded `pending` and the next start delivers it.
    let hook_addr = receiver_addr(&hook);
    receiver.stop();
    write_raw(
        &lake,
        DAY,
        "008.parquet",
        &minute_rows("bad", m0 + 7 * MINUTE, 30, 0, "h"),
    );
    write_raw(
        &lake,
        DAY,
        "009.parquet",
        &minute_rows("good", m0 + 8 * MINUTE, 30, 0, "i"),
    );
    wait_metrics(&metrics, "a failed delivery of the resolution", |m| {
        value(m, "tally_live_alert_delivery_failures_total") >= 1.0
    });
    let (code, _) = live.terminate();
    assert_eq!(code, Some(0));
    let pending = |dir: &Path| {
        tally_ok(
            dir,
            &[
                "sql",
                "SELECT state, CAST(window_start AS VARCHAR) AS w, delivery FROM alerts WHERE delivery <> 'delivered' ORDER BY w",
                "--format",
                "csv",
            ],
        )
    };
    let owed = csv_rows(&pending(dir.path()));
    assert_eq!(owed.len(), 1, "{owed:?}");
    assert_eq!(owed[0][0], "resolved");
    assert!(owed[0][1].contains("10:07:00"), "{owed:?}");
    assert_eq!(owed[0][2], "pending");
    let receiver = Receiver::start(hook_addr, Arc::clone(&got));
    let live = Proc::start(dir.path(), &args, &["metrics"]);
    wait_alerts(&got, 4, 10);
    let late = got.lock().unwrap()[3].1.clone();
    assert_eq!(late["state"], "resolved", "{late}");
    assert_eq!(late["window_start"], "2026-11-01T10:07:00Z");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(got.lock().unwrap().len(), 4, "sent once");
    let (code, _) = live.terminate();
    assert_eq!(code, Some(0));
    // Delivered now: a third start owes nothing.
    let live = Proc::start(dir.path(), &args, &["metrics"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(got.lock().unwrap().len(), 4, "nothing owed after delivery");
    let (code, _) = live.terminate();
    assert_eq!(code, Some(0));
    receiver.stop();
}

fn receiver_addr(hook: &str) -> SocketAddr {
    hook.trim_start_matches("http://")
        .trim_end_matches("/hook")
        .parse()
        .unwrap()
}

#[test]
fn alert_and_metrics_flags_are_checked_before_anything_runs() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    write_raw(
        &lake,
        DAY,
        "000.parquet",
        &minute_rows("good", t0(), 5, 0, "w"),
    );
    let cases: [(&[&str], &str); 4] = [
        (&["--alert-error-rate", "1.5"], "--alert-error-rate"),
        (
            &["--alert-webhook", "http://127.0.0.1:9/x"],
            "--alert-error-rate",
        ),
        (
            &["--alert-webhook", "ftp://x", "--alert-error-rate", "0.1"],
            "--alert-webhook",
        ),
        (&["--metrics", "0.0.0.0:0"], "TALLY_TOKEN"),
    ];
    for (extra, named) in cases {
        let mut args = vec!["live", "--once"];
        args.extend_from_slice(extra);
        let err = tally_fails(dir.path(), &args, 2);
        assert!(err.contains(named), "{extra:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    assert!(!lake.join("live_view").exists(), "nothing ran");
}

/// Chromium as the probe of this machine runs it: headless, as root, no background traffic.
fn chromium(profile: &Path, args: &[&str]) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium runs (scripts/test installs Debian's chromium)")
}

#[test]
fn the_dashboard_renders_in_headless_chromium_from_tally_alone() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    // Partners of very different sizes, so the top partners are known.
    let mut rows = Vec::new();
    for (partner, per_minute) in [("big", 40usize), ("mid", 20), ("small", 6)] {
        for minute in 0..5 {
            rows.extend(minute_rows(
                partner,
                t0() + minute * MINUTE,
                per_minute,
                per_minute / 10,
                &format!("m{minute}"),
            ));
        }
    }
    write_raw(&lake, DAY, "f1.parquet", &rows);
    tally_ok(dir.path(), &["live", "--once"]);
    let p = Proc::start(
        dir.path(),
        &[
            "serve",
            "--http",
            "127.0.0.1:0",
            "--flight-sql",
            "off",
            "--pg",
            "off",
        ],
        &["http"],
    );
    let url = p.url("http", "/");

    // Server-rendered: the figures are in the page without any script.
    let (code, html) = get(&url);
    assert_eq!(code, 200);
    for (partner, events) in [("big", "200"), ("mid", "100"), ("small", "30")] {
        let at = html
            .find(&format!("data-partner=\"{partner}\""))
            .unwrap_or_else(|| panic!("{partner} in {html}"));
        assert!(html[at..].contains(&format!(">{events}<")), "{partner}");
    }
    for external in ["https://", "http://", "//cdn", "fonts.g"] {
        let outside = html
            .match_indices(external)
            .any(|(i, _)| !html[i..].starts_with(&format!("http://{}", p.addrs["http"])));
        assert!(!outside, "the page references {external}: {html}");
    }

    // Rendered by Chromium with its scripts: charts drawn, table refreshed from /api/live,
    // and no request leaves loopback.
    let profile = dir.path().join("chromium");
    let netlog = dir.path().join("netlog.json");
    let out = chromium(
        &profile,
        &[
            "--virtual-time-budget=6000",
            &format!("--log-net-log={}", netlog.display()),
            "--dump-dom",
            &url,
        ],
    );
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        dom.contains("<canvas"),
        "uPlot drew no chart: {dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dom.contains("updated "), "the poll did not complete: {dom}");
    assert!(!dom.contains("disconnected"), "{dom}");
    for (partner, events) in [("big", "200"), ("mid", "100"), ("small", "30")] {
        let at = dom
            .find(&format!("data-partner=\"{partner}\""))
            .unwrap_or_else(|| panic!("{partner} in {dom}"));
        assert!(dom[at..].contains(&format!(">{events}<")), "{partner}");
    }
    // Top partners in the chart legend.
    for partner in ["total", "big", "mid", "small"] {
        assert!(dom.contains(&format!(">{partner}<")), "legend {partner}");
    }
    // Chromium itself talks to Google (network time, spelling dictionaries) with no initiator;
    // everything the page asks for carries the page's origin as its initiator.
    let log: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&netlog).unwrap()).unwrap();
    let start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].clone();
    let origin = format!("http://{}", p.addrs["http"]);
    let mut urls = 0;
    for e in log["events"].as_array().unwrap() {
        if e["type"] != start_job || e["params"]["initiator"] != origin.as_str() {
            continue;
        }
        let u = e["params"]["url"].as_str().unwrap();
        urls += 1;
        assert!(
            u.starts_with(&format!("{origin}/")),
            "the dashboard loaded {u}"
        );
    }
    assert!(
        urls >= 4,
        "the net log saw the page's assets and polls: {urls}"
    );

    // Screenshots at a laptop's and a phone's width, for people to look at.
    for (name, size) in [("laptop", "1366,900"), ("phone", "390,1400")] {
        let png = std::env::temp_dir().join(format!("tally-dashboard-{name}.png"));
        let out = chromium(
            &profile,
            &[
                "--virtual-time-budget=4000",
                &format!("--window-size={size}"),
                &format!("--screenshot={}", png.display()),
                &url,
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(std::fs::metadata(&png).unwrap().len() > 10_000);
    }
    let (code, _) = p.terminate();
    assert_eq!(code, Some(0));
}

/// A real Prometheus (Debian's 2.42, started by hand) scrapes `tally live --metrics` and
/// answers PromQL over what it stored: the applied rows and one partner's events equal the
/// raw rows, and the histogram's `_count` is a counter Prometheus can take a rate of.
#[test]
fn prometheus_scrapes_the_live_metrics_and_answers_promql_over_them() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    let rows = traffic("prom", t0(), 400);
    write_raw(&lake, DAY, "f1.parquet", &rows);
    let live = Proc::start(
        dir.path(),
        &["live", "--interval", "200ms", "--metrics", "127.0.0.1:0"],
        &["metrics"],
    );
    let target = live.addrs["metrics"].clone();
    wait_metrics(&live.url("metrics", "/metrics"), "400 applied rows", |m| {
        value(m, "tally_live_rows_total{outcome=\"applied\"}") >= 400.0
    });
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tally\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus (scripts/test installs Debian's package)");
    let query = |q: &str| -> Option<f64> {
        let out = Command::new("curl")
            .args([
                "-s",
                "--get",
                "--data-urlencode",
                &format!("query={q}"),
                &format!("http://127.0.0.1:{port}/api/v1/query"),
            ])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let mine = rows.iter().filter(|r| r.partner_id == "p1").count() as f64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let answered = loop {
        let got = (
            query("tally_live_rows_total{outcome=\"applied\"}"),
            query("tally_live_partner_events_total{partner_id=\"p1\"}"),
            query("up{job=\"tally\"}"),
        );
        if got.0 == Some(400.0) && got.1 == Some(mine) && got.2 == Some(1.0) {
            break true;
        }
        if Instant::now() > deadline {
            eprintln!("prometheus answered {got:?}");
            break false;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // A histogram Prometheus accepts as one: its count takes rate() once two scrapes are in.
    let mut rate = None;
    while answered && rate.is_none() && Instant::now() < deadline {
        rate = query("rate(tally_live_batch_duration_seconds_count[1m])");
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert!(answered, "Prometheus never stored the live metrics");
    assert!(rate.is_some_and(|r| r >= 0.0), "{rate:?}");
}
