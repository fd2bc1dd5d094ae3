//! `tally.toml`: where the lake is, how to reach S3, extra tables, and job settings.
//!
//! Layering is defaults < file < environment < flags. This module owns the first two and the
//! shape; the CLI applies environment and flags and passes the resolved [`Config`] in, so the
//! engine never reads globals behind the caller's back (the `AWS_*` variables are the one
//! documented exception, read by [`crate::lake`] as every S3 tool does).

use crate::error::{Result, TallyError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// The whole configuration. Every section has defaults, so an empty file is valid.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Lake root: a local path or `s3://bucket/prefix`. `None` means `./lake`.
    pub lake: Option<String>,
    /// How to reach S3-compatible storage; unset fields fall back to `AWS_*` variables.
    pub s3: S3Options,
    /// Extra tables to register by name, beside the lake's own.
    pub tables: BTreeMap<String, TableConfig>,
    /// Settings of the daily ledger job.
    pub ledger: LedgerConfig,
    /// Settings of the live micro-batch mode.
    pub live: LiveConfig,
    /// Settings of `tally reconcile`.
    pub reconcile: ReconcileConfig,
    /// Per-partner error-rate alerts of the live mode.
    pub alerts: AlertsConfig,
    /// Scale-out workers (`[cluster]`).
    pub cluster: ClusterConfig,
}

/// `[cluster]`: the workers `ledger`, `backfill` and `sql` run their plans on when
/// `--workers` / `TALLY_WORKERS` do not say otherwise (see [`crate::cluster`]).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `HOST:PORT` of each `tally worker`.
    pub workers: Vec<String>,
}

/// S3 connection settings. Secrets are redacted from `Debug` output and never logged.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Options {
    /// Endpoint URL of an S3-compatible server (`AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// Region (`AWS_REGION`); S3-compatible servers usually accept any.
    pub region: Option<String>,
    /// Access key id (`AWS_ACCESS_KEY_ID`). Prefer the environment over the file.
    pub access_key_id: Option<String>,
    /// Secret key (`AWS_SECRET_ACCESS_KEY`). Prefer the environment over the file.
    pub secret_access_key: Option<String>,
    /// Session token (`AWS_SESSION_TOKEN`).
    pub session_token: Option<String>,
    /// Allow plain HTTP endpoints (`AWS_ALLOW_HTTP`), e.g. a server on loopback.
    pub allow_http: Option<bool>,
    /// Per-request timeout: an unreachable endpoint fails after this, not after minutes.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Retries of a failed request before giving up.
    pub max_retries: usize,
    /// Total time spent retrying one request.
    #[serde(with = "humantime_serde")]
    pub retry_timeout: Duration,
}

impl Default for S3Options {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            allow_http: None,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_retries: 3,
            retry_timeout: Duration::from_secs(15),
        }
    }
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &redact(&self.access_key_id))
            .field("secret_access_key", &redact(&self.secret_access_key))
            .field("session_token", &redact(&self.session_token))
            .field("allow_http", &self.allow_http)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_timeout", &self.retry_timeout)
            .finish()
    }
}

/// Storage format of an extra table.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    /// A directory of Parquet files (hive partitions are discovered as columns).
    Parquet,
    /// A Delta table.
    Delta,
}

/// An extra table registered by name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Local path or `s3://` URL; relative paths are relative to the working directory.
    pub location: String,
    /// Parquet directory or Delta table.
    pub format: TableFormat,
}

/// Settings of `tally ledger` and `tally backfill`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Days after D whose arrivals still count for D (partner replays land late).
    pub late_days: u32,
    /// Hash buckets of `txn_id` the dedup is split into.
    pub buckets: u32,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            late_days: 3,
            buckets: 16,
        }
    }
}

/// Settings of `tally live`. Durations are strings like `"1s"`, `"10m"`, `"48h"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveConfig {
    /// Time between micro-batches.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long (in event time, behind the watermark) a `txn_id` is remembered for dedup.
    #[serde(with = "humantime_serde")]
    pub dedup_ttl: Duration,
    /// How far behind the newest `event_time` an event may be and still count as on time.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// Windows older than this (behind the newest `event_time`) are dropped from the view.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Most raw files one micro-batch takes (bounds a catch-up batch's memory).
    pub max_files_per_batch: usize,
    /// Every this many batches the view is rolled up, the Delta log checkpointed and vacuumed.
    pub compact_every: u64,
    /// On the first start, follow `ingest_date` partitions from this many days before the
    /// newest (older history is the ledger's and the analysts' business).
    pub start_lookback_days: u64,
    /// Partitions up to this many days before the newest (not future-dated) one are followed:
    /// a file landing in one of them, late or re-copied, is still read (at least
    /// `start_lookback_days`). Older partitions are the ledger's and backfills' business.
    pub track_days: u64,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            dedup_ttl: Duration::from_secs(600),
            grace: Duration::from_secs(120),
            retention: Duration::from_secs(48 * 3600),
            max_files_per_batch: 256,
            compact_every: 60,
            start_lookback_days: 2,
            track_days: 3,
        }
    }
}

/// The live mode's alert rule (`[alerts]`): a partner whose error rate in one minute of event
/// time reaches `error_rate`, over at least `min_events` events, fires an alert to `webhook`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Where alerts are POSTed as JSON; without one they are still evaluated, shown on the
    /// dashboard and recorded in `alerts`.
    pub webhook: Option<String>,
    /// The error rate (0..1] that fires an alert; no rule without it.
    pub error_rate: Option<f64>,
    /// A minute with fewer events neither fires nor resolves (too little to judge).
    pub min_events: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            webhook: None,
            error_rate: None,
            min_events: 20,
        }
    }
}

impl AlertsConfig {
    /// Checks the combination: a webhook needs a rule, and a rate must be in (0, 1].
    pub fn validate(&self) -> Result<()> {
        if let Some(r) = self.error_rate {
            if !(r > 0.0 && r <= 1.0) {
                return Err(TallyError::Usage {
                    message: format!("--alert-error-rate {r} is not in (0, 1], e.g. 0.05 for 5%"),
                });
            }
        } else if self.webhook.is_some() {
            return Err(TallyError::Usage {
                message: "--alert-webhook needs --alert-error-rate (or error_rate under [alerts] in tally.toml)".into(),
            });
        }
        if let Some(w) = &self.webhook {
            let ok = url::Url::parse(w).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !ok {
                return Err(TallyError::Usage {
                    message: format!("--alert-webhook {w:?} is not an http(s) URL"),
                });
            }
        }
        Ok(())
    }
}

/// Settings of `tally reconcile`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Largest acceptable unexplained drift, relative to the ledger (0.001 = 0.1%).
    pub threshold: f64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self { threshold: 0.001 }
    }
}

impl Config {
    /// Parses a `tally.toml` text.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| TallyError::Config {
            message: format!("{origin}: {}", e.to_string().replace('\n', " ")),
        })
    }

    /// Reads `path`; when `required` is false a missing file gives the defaults.
    pub fn load(path: &Path, required: bool) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml(&text, &path.display().to_string()),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(TallyError::Config {
                message: format!("cannot read {}: {e}", path.display()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("", "t").unwrap();
        assert_eq!(c.ledger.late_days, 3);
        assert!(c.lake.is_none());
    }

    #[test]
    fn full_file_parses() {
        let c = Config::from_toml(
            r#"
            lake = "s3://bucket/lake"
            [s3]
            endpoint = "http://127.0.0.1:9000"
            allow_http = true
            timeout = "10s"
            [tables.fx]
            location = "/data/fx"
            format = "delta"
            [ledger]
            late_days = 5
            [live]
            dedup_ttl = "5m"
            "#,
            "t",
        )
        .unwrap();
        assert_eq!(c.s3.timeout, Duration::from_secs(10));
        assert_eq!(c.tables["fx"].format, TableFormat::Delta);
        assert_eq!(c.ledger.late_days, 5);
        assert_eq!(c.live.dedup_ttl, Duration::from_secs(300));
        assert_eq!(c.live.grace, Duration::from_secs(120));
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let e = Config::from_toml("lak = 1", "tally.toml").unwrap_err();
        assert!(e.to_string().contains("lak"), "{e}");
    }

    #[test]
    fn debug_redacts_secrets() {
        let s = S3Options {
            secret_access_key: Some("hunter2".into()),
            ..Default::default()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
