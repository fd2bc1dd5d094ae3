//! The lease is a compare-and-swap, not read-then-write: eight processes racing to break one
//! stale lease, fifty rounds, on local disk and on the S3 test server; exactly one wins each
//! round. The racers are this test binary re-run as children (`racer` below), each calling the
//! engine's one lease attempt at the same instant.

use crate::harness::*;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tally_engine::config::S3Options;
use tally_engine::day_lock;
use tally_engine::lake::Lake;
use tally_engine::object_store::ObjectStore;

const RACERS: usize = 8;
const ROUNDS: usize = 50;
const LAKE_VAR: &str = "TALLY_TEST_RACE_LAKE";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A racer (only when run as a child): waits for the start instant, tries once to take the
/// lease, prints `won` or `lost`, and stays alive until the parent closes its stdin: a lease
/// whose holder's process is gone may be taken over, so a winner that exited early would let
/// a slower racer win too.
#[test]
fn racer() {
    let Ok(lake) = std::env::var(LAKE_VAR) else {
        return;
    };
    let name = std::env::var("TALLY_TEST_RACE_NAME").unwrap();
    let owner = std::env::var("TALLY_TEST_RACE_OWNER").unwrap();
    let start: u64 = std::env::var("TALLY_TEST_RACE_AT")
        .unwrap()
        .parse()
        .unwrap();
    let lake = Lake::open(&lake, &S3Options::default()).unwrap();
    let rt = runtime();
    // Warm the connection first, so the race is on the swap, not on TLS or process start.
    rt.block_on(async {
        let _ = lake.store().list_with_delimiter(None).await;
    });
    std::thread::sleep(Duration::from_millis(start.saturating_sub(now_ms())));
    let won = rt
        .block_on(day_lock::try_take_once(&lake, &name, &owner))
        .unwrap();
    println!("RACE {}", if won { "won" } else { "lost" });
    use std::io::{Read, Write};
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// Runs `ROUNDS` rounds of `RACERS` processes against `lake`; `env` points them at the store.
fn race(lake_location: &str, s3: &S3Options, env: &[(&str, &str)]) {
    let lake = Lake::open(lake_location, s3).unwrap();
    let rt = runtime();
    let exe = std::env::current_exe().unwrap();
    for round in 0..ROUNDS {
        let name = "race-day";
        rt.block_on(day_lock::plant_stale_lease(&lake, name))
            .unwrap();
        let at = now_ms() + 300;
        let children: Vec<_> = (0..RACERS)
            .map(|i| {
                let mut c = Command::new(&exe);
                c.args([
                    "--exact",
                    "lease_race::racer",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(LAKE_VAR, lake_location)
                .env("TALLY_TEST_RACE_NAME", name)
                .env("TALLY_TEST_RACE_OWNER", format!("racer-{round}-{i}"))
                .env("TALLY_TEST_RACE_AT", at.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
                for (k, v) in env {
                    c.env(k, v);
                }
                c.spawn().unwrap()
            })
            .collect();
        // Every racer's answer first (all still alive), then let them go.
        let mut won = 0;
        let mut children = children;
        for child in &mut children {
            use std::io::BufRead;
            let out = std::io::BufReader::new(child.stdout.as_mut().unwrap());
            let answer = out
                .lines()
                .map_while(|l| l.ok())
                .find(|l| l.contains("RACE "))
                .unwrap_or_else(|| panic!("a racer gave no answer in round {round}"));
            // libtest prints `test lease_race::racer ... ` before the answer, on its line.
            won += usize::from(answer.ends_with("RACE won"));
        }
        for mut child in children {
            drop(child.stdin.take());
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "racer failed in round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(
            won, 1,
            "round {round}: {won} racers took the one stale lease"
        );
    }
}

#[test]
fn eight_processes_break_one_stale_lease_exactly_one_wins_each_round_on_disk() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    std::fs::create_dir_all(&lake).unwrap();
    race(&lake.to_string_lossy(), &S3Options::default(), &[]);
}

#[test]
fn eight_processes_break_one_stale_lease_exactly_one_wins_each_round_on_s3() {
    let s3 = s3();
    let bucket = s3.bucket("lease-race");
    let env = s3.env();
    let options = S3Options {
        endpoint: Some(s3.endpoint.clone()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing-secret".into()),
        region: Some("us-east-1".into()),
        allow_http: Some(true),
        ..S3Options::default()
    };
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    race(&format!("s3://{bucket}/lake"), &options, &pairs);
}
