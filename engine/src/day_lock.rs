//! A lease per ledger day, so two runs (two backfills, or a backfill and a `tally ledger`)
//! never build the same day at once; and one for the live mode, so one `tally live` follows a
//! lake at a time.
//!
//! The lease is an object `runs/_locks/ledger-<day>.json` created with a conditional put
//! (create-if-absent: a local `link`, S3 `If-None-Match: *`), holding the owner, host, pid and
//! an expiry that a heartbeat pushes forward every 15 s. A lease is stale when it expired, or
//! when its owner ran on this host and that pid is gone (a `kill -9`ed run frees its day at
//! once). Taking over a stale lease is delete-then-create; two processes breaking the same
//! stale lease in the same instant could both win — a window of milliseconds after a crash,
//! accepted here and noted in the README.

use crate::error::{Result, TallyError};
use crate::lake::{layout, Lake};
use chrono::NaiveDate;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long a lease lives without a heartbeat.
const LEASE: Duration = Duration::from_secs(60);
/// How often the holder renews it.
const HEARTBEAT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    owner: String,
    host: String,
    pid: u32,
    expires_ms: i64,
}

impl Lease {
    fn new(owner: &str) -> Self {
        Self {
            owner: owner.to_string(),
            host: host(),
            pid: std::process::id(),
            expires_ms: chrono::Utc::now().timestamp_millis() + LEASE.as_millis() as i64,
        }
    }

    fn is_stale(&self) -> bool {
        if self.expires_ms < chrono::Utc::now().timestamp_millis() {
            return true;
        }
        self.host == host()
            && std::path::Path::new("/proc/self").exists()
            && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// A held lease; released on [`DayLock::release`] (or when it expires after a crash).
pub struct DayLock {
    lake: Lake,
    path: object_store::path::Path,
    heartbeat: tokio::task::JoinHandle<()>,
}

/// Takes the lease of `day` for `owner`. When another live run holds it: waits up to `wait`
/// for it to be released, then fails naming the holder.
pub async fn acquire(lake: &Lake, day: NaiveDate, owner: &str, wait: Duration) -> Result<DayLock> {
    acquire_named(
        lake,
        &format!("ledger-{day}"),
        &day.to_string(),
        owner,
        wait,
    )
    .await
}

/// The lease of the live mode: one `tally live` per lake (two would apply batches twice).
pub async fn acquire_live(lake: &Lake, owner: &str) -> Result<DayLock> {
    acquire_named(lake, "live", "the live view", owner, Duration::ZERO).await
}

async fn acquire_named(
    lake: &Lake,
    name: &str,
    what: &str,
    owner: &str,
    wait: Duration,
) -> Result<DayLock> {
    let path = lake.file_path(&format!("{}/_locks/{name}.json", layout::RUNS))?;
    let store = lake.store();
    let started = std::time::Instant::now();
    loop {
        let lease = Lease::new(owner);
        let body = serde_json::to_vec(&lease).map_err(|e| TallyError::Internal(e.to_string()))?;
        let opts = PutOptions::from(PutMode::Create);
        match store.put_opts(&path, PutPayload::from(body), opts).await {
            Ok(_) => {
                let heartbeat = tokio::spawn(renew(lake.clone(), path.clone(), owner.to_string()));
                return Ok(DayLock {
                    lake: lake.clone(),
                    path,
                    heartbeat,
                });
            }
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(lake.storage_error(e)),
        }
        let holder: Option<Lease> = match store.get(&path).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(|e| lake.storage_error(e))?;
                serde_json::from_slice(&bytes).ok()
            }
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(lake.storage_error(e)),
        };
        match holder {
            Some(h) if !h.is_stale() => {
                if started.elapsed() >= wait {
                    return Err(TallyError::Busy {
                        message: format!(
                            "{what} is being built by another run ({} on {}, pid {}); try again when it finishes",
                            h.owner, h.host, h.pid
                        ),
                    });
                }
                tracing::info!(%what, holder = %h.owner, "waiting for another run");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            // Stale or unreadable: break it and try again.
            _ => {
                tracing::warn!(%what, "taking over a stale lease");
                match store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(lake.storage_error(e)),
                }
            }
        }
    }
}

async fn renew(lake: Lake, path: object_store::path::Path, owner: String) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let Ok(body) = serde_json::to_vec(&Lease::new(&owner)) else {
            return;
        };
        if let Err(e) = lake.store().put(&path, PutPayload::from(body)).await {
            tracing::warn!(error = %e, "could not renew a day lease");
        }
    }
}

impl DayLock {
    /// Gives the day back.
    pub async fn release(self) {
        self.heartbeat.abort();
        if let Err(e) = self.lake.store().delete(&self.path).await {
            tracing::warn!(error = %e, "could not delete a day lease (it will expire)");
        }
    }
}
