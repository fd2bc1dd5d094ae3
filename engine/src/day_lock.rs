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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    fence: Fence,
}

/// Whether a lease is still ours. A holder that stalled past the expiry (a paused VM, a long
/// GC of the host) may find its lease taken over; the heartbeat notices on its next renewal
/// and stops renewing, and the holder must not commit after that. Cheap to clone and check.
#[derive(Debug, Clone)]
pub struct Fence {
    what: Arc<str>,
    lost: Arc<AtomicBool>,
}

impl Fence {
    fn new(what: &str) -> Self {
        Self {
            what: what.into(),
            lost: Arc::new(AtomicBool::new(false)),
        }
    }

    /// `Err(Busy)` once the lease was taken over by another run: commit nothing more.
    pub fn check(&self) -> Result<()> {
        if self.lost.load(Ordering::Acquire) {
            return Err(TallyError::Busy {
                message: format!(
                    "the lease of {} was taken over by another run; stopping without committing",
                    self.what
                ),
            });
        }
        Ok(())
    }

    /// A fence already lost, for tests of what its holder must not do.
    #[cfg(test)]
    pub(crate) fn lost(what: &str) -> Self {
        let fence = Self::new(what);
        fence.set_lost();
        fence
    }

    fn set_lost(&self) {
        self.lost.store(true, Ordering::Release);
    }
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
                let fence = Fence::new(what);
                let heartbeat = tokio::spawn(renew(
                    lake.clone(),
                    path.clone(),
                    owner.to_string(),
                    fence.clone(),
                ));
                return Ok(DayLock {
                    lake: lake.clone(),
                    path,
                    heartbeat,
                    fence,
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

async fn renew(lake: Lake, path: object_store::path::Path, owner: String, fence: Fence) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        match renew_once(&lake, &path, &owner).await {
            Renewal::Renewed => {}
            Renewal::Failed(e) => tracing::warn!(error = %e, "could not renew a lease"),
            Renewal::Lost(holder) => {
                tracing::error!(lease = %fence.what, %holder, "lost the lease to another run");
                fence.set_lost();
                return;
            }
        }
    }
}

/// What one heartbeat found.
#[derive(Debug, PartialEq, Eq)]
enum Renewal {
    Renewed,
    /// The store failed; the lease may still be ours (it is retried on the next beat).
    Failed(String),
    /// Another run holds the lease now (named), or it is gone.
    Lost(String),
}

/// Pushes the expiry forward, unless the lease is no longer ours: overwriting another
/// holder's lease would let two runs believe they hold it.
async fn renew_once(lake: &Lake, path: &object_store::path::Path, owner: &str) -> Renewal {
    let store = lake.store();
    let holder = match store.get(path).await {
        Ok(got) => match got.bytes().await {
            Ok(bytes) => serde_json::from_slice::<Lease>(&bytes).ok(),
            Err(e) => return Renewal::Failed(e.to_string()),
        },
        Err(object_store::Error::NotFound { .. }) => return Renewal::Lost("nobody".into()),
        Err(e) => return Renewal::Failed(e.to_string()),
    };
    match holder {
        Some(h) if h.owner != owner => return Renewal::Lost(h.owner),
        None => return Renewal::Lost("an unreadable lease".into()),
        Some(_) => {}
    }
    let Ok(body) = serde_json::to_vec(&Lease::new(owner)) else {
        return Renewal::Failed("cannot encode the lease".into());
    };
    match store.put(path, PutPayload::from(body)).await {
        Ok(_) => Renewal::Renewed,
        Err(e) => Renewal::Failed(e.to_string()),
    }
}

impl DayLock {
    /// The lease's fence, to check right before each commit.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Gives the day back.
    pub async fn release(self) {
        self.heartbeat.abort();
        if let Err(e) = self.lake.store().delete(&self.path).await {
            tracing::warn!(error = %e, "could not delete a day lease (it will expire)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::S3Options;

    fn local_lake(dir: &tempfile::TempDir) -> Lake {
        Lake::open(&dir.path().to_string_lossy(), &S3Options::default()).unwrap()
    }

    #[tokio::test]
    async fn a_holder_keeps_renewing_its_own_lease() {
        let dir = tempfile::tempdir().unwrap();
        let lake = local_lake(&dir);
        let lock = acquire_live(&lake, "a").await.unwrap();
        assert_eq!(renew_once(&lake, &lock.path, "a").await, Renewal::Renewed);
        assert!(lock.fence().check().is_ok());
        lock.release().await;
    }

    #[tokio::test]
    async fn a_lease_taken_over_is_not_overwritten_and_fences_its_old_holder() {
        let dir = tempfile::tempdir().unwrap();
        let lake = local_lake(&dir);
        let lock = acquire_live(&lake, "a").await.unwrap();
        // Another run took the lease over while this one stalled past the expiry.
        let body = serde_json::to_vec(&Lease::new("b")).unwrap();
        lake.store()
            .put(&lock.path, PutPayload::from(body))
            .await
            .unwrap();
        assert_eq!(
            renew_once(&lake, &lock.path, "a").await,
            Renewal::Lost("b".into())
        );
        let got = lake.store().get(&lock.path).await.unwrap();
        let holder: Lease = serde_json::from_slice(&got.bytes().await.unwrap()).unwrap();
        assert_eq!(holder.owner, "b", "the new holder's lease must survive");

        let fence = lock.fence();
        assert!(fence.check().is_ok());
        fence.set_lost();
        let e = lock.fence().check().unwrap_err();
        assert!(e.to_string().contains("taken over"), "{e}");
    }

    #[tokio::test]
    async fn a_deleted_lease_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let lake = local_lake(&dir);
        let lock = acquire_live(&lake, "a").await.unwrap();
        lake.store().delete(&lock.path).await.unwrap();
        assert!(matches!(
            renew_once(&lake, &lock.path, "a").await,
            Renewal::Lost(_)
        ));
    }
}
