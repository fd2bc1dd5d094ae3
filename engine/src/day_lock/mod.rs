//! A lease per ledger day, so two runs (two backfills, or a backfill and a `tally ledger`)
//! never build the same day at once; and one for the live mode, so one `tally live` follows a
//! lake at a time.
//!
//! The lease is an object `runs/_locks/ledger-<day>.json` holding the owner, host, pid and an
//! expiry that a heartbeat pushes forward every 15 s. A lease is stale when it expired, was
//! released, or its owner ran on this host and that pid is gone (a `kill -9`ed run frees its
//! day at once). Every change is a compare-and-swap against the version last read, so of any
//! number of processes breaking one stale lease exactly one wins, and a holder that stalled
//! past its expiry cannot renew over the run that took the lease:
//! - on S3: create with `If-None-Match: *`, replace with `If-Match: <ETag>`;
//! - on local disk: the same reads and writes under an exclusive `flock` of a sibling
//!   `.lock` file, the lease written to a temporary file and renamed over the old one.
//!
//! A lease is best effort on its own (a holder paused past its expiry still runs on until it
//! checks): what makes a ledger commit safe is that it is made against the table version read
//! when the run started (see [`crate::delta::replace_partition`]). Before committing, a holder
//! also re-reads its lease ([`Fence::confirm`]).

mod lease_object;

use crate::error::{Result, TallyError};
use crate::lake::{layout, Lake};
use chrono::NaiveDate;
use lease_object::{LeaseObject, Version};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// How long a lease lives without a heartbeat, unless `TALLY_LEASE_SECS` says otherwise
/// (tests that pause a holder past its lease use a few seconds).
const LEASE: Duration = Duration::from_secs(60);

pub(crate) fn lease_duration() -> Duration {
    std::env::var("TALLY_LEASE_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(LEASE, Duration::from_secs)
        .max(Duration::from_secs(1))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Lease {
    owner: String,
    host: String,
    pid: u32,
    expires_ms: i64,
    /// When the holder took the lease (kept across renewals): files it writes are no older,
    /// which is what `tally vacuum` weighs its retention against. 0 from a build before it.
    #[serde(default)]
    since_ms: i64,
}

impl Lease {
    fn new(owner: &str) -> Self {
        let now = chrono::Utc::now().timestamp_millis();
        Self {
            owner: owner.to_string(),
            host: host(),
            pid: std::process::id(),
            expires_ms: now + lease_duration().as_millis() as i64,
            since_ms: now,
        }
    }

    /// The holder's next heartbeat: a later expiry, the same start.
    fn renewed(owner: &str, since_ms: i64) -> Self {
        Self {
            since_ms,
            ..Self::new(owner)
        }
    }

    /// What a holder leaves behind on release: expired, so the next run takes it at once.
    fn released(owner: &str) -> Self {
        Self {
            expires_ms: 0,
            ..Self::new(owner)
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
    object: LeaseObject,
    owner: String,
    /// The version this holder last wrote.
    version: Arc<Mutex<Version>>,
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
    /// The lease to re-read in [`Fence::confirm`] (none for a fence made in a test).
    lease: Option<(LeaseObject, Arc<Mutex<Version>>)>,
}

impl Fence {
    fn new(what: &str) -> Self {
        Self {
            what: what.into(),
            lost: Arc::new(AtomicBool::new(false)),
            lease: None,
        }
    }

    fn lost_error(&self) -> TallyError {
        TallyError::Busy {
            message: format!(
                "the lease of {} was taken over by another run; stopping without committing",
                self.what
            ),
        }
    }

    /// `Err(Busy)` once the heartbeat found the lease taken over: commit nothing more.
    pub fn check(&self) -> Result<()> {
        if self.lost.load(Ordering::Acquire) {
            return Err(self.lost_error());
        }
        Ok(())
    }

    /// Like [`Fence::check`], and re-reads the lease: it must still be the version this
    /// holder wrote. Right before a commit, so a holder that was paused past its expiry finds
    /// out before committing, not at its next heartbeat.
    pub async fn confirm(&self) -> Result<()> {
        self.check()?;
        let Some((object, version)) = &self.lease else {
            return Ok(());
        };
        // Held across the read: a heartbeat renewing in between would otherwise move the
        // lease past the version just taken, and a healthy holder would see it as lost.
        let ours = version.lock().await;
        match object.read().await? {
            Some((_, v)) if v == *ours => Ok(()),
            _ => {
                self.set_lost();
                Err(self.lost_error())
            }
        }
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

/// The outcome of one attempt to take a lease.
enum Attempt {
    /// Taken: the version written and the lease's start.
    Taken(Version, i64),
    Held(Lease),
    /// Someone changed it between our read and our write: read again.
    Raced,
}

async fn try_take(object: &LeaseObject, owner: &str, what: &str) -> Result<Attempt> {
    let lease = Lease::new(owner);
    match object.read().await? {
        None => Ok(match object.swap(None, &lease).await? {
            Some(v) => Attempt::Taken(v, lease.since_ms),
            None => Attempt::Raced,
        }),
        Some((Some(h), _)) if !h.is_stale() => Ok(Attempt::Held(h)),
        Some((holder, version)) => {
            if holder.as_ref().is_some_and(|h| h.expires_ms > 0) {
                tracing::warn!(%what, "taking over a stale lease");
            }
            Ok(match object.swap(Some(&version), &lease).await? {
                Some(v) => Attempt::Taken(v, lease.since_ms),
                None => Attempt::Raced,
            })
        }
    }
}

async fn acquire_named(
    lake: &Lake,
    name: &str,
    what: &str,
    owner: &str,
    wait: Duration,
) -> Result<DayLock> {
    let object = LeaseObject {
        lake: lake.clone(),
        path: lake.file_path(&format!("{}/_locks/{name}.json", layout::RUNS))?,
    };
    let started = std::time::Instant::now();
    loop {
        match try_take(&object, owner, what).await? {
            Attempt::Taken(version, since_ms) => {
                let version = Arc::new(Mutex::new(version));
                let mut fence = Fence::new(what);
                fence.lease = Some((object.clone(), Arc::clone(&version)));
                let heartbeat = tokio::spawn(renew(
                    object.clone(),
                    owner.to_string(),
                    since_ms,
                    Arc::clone(&version),
                    fence.clone(),
                ));
                return Ok(DayLock {
                    object,
                    owner: owner.to_string(),
                    version,
                    heartbeat,
                    fence,
                });
            }
            Attempt::Raced => continue,
            Attempt::Held(h) => {
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
        }
    }
}

async fn renew(
    object: LeaseObject,
    owner: String,
    since_ms: i64,
    version: Arc<Mutex<Version>>,
    fence: Fence,
) {
    let beat = (lease_duration() / 4).max(Duration::from_millis(250));
    loop {
        tokio::time::sleep(beat).await;
        match renew_once(&object, &owner, since_ms, &version).await {
            Renewal::Renewed => {}
            Renewal::Failed(e) => tracing::warn!(error = %e, "could not renew a lease"),
            Renewal::Lost => {
                tracing::error!(lease = %fence.what, "lost the lease to another run");
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
    /// The lease changed since this holder wrote it: another run holds it now.
    Lost,
}

/// Pushes the expiry forward with a compare-and-swap on the version this holder wrote: if
/// anyone else wrote the lease since, the swap fails and the holder knows it lost it.
async fn renew_once(
    object: &LeaseObject,
    owner: &str,
    since_ms: i64,
    version: &Mutex<Version>,
) -> Renewal {
    let mut ours = version.lock().await;
    match object
        .swap(Some(&ours), &Lease::renewed(owner, since_ms))
        .await
    {
        Ok(Some(v)) => {
            *ours = v;
            Renewal::Renewed
        }
        Ok(None) => Renewal::Lost,
        Err(e) => Renewal::Failed(e.to_string()),
    }
}

impl DayLock {
    /// The lease's fence, to check right before each commit.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Gives the day back: marks the lease released, if it is still ours.
    pub async fn release(self) {
        self.heartbeat.abort();
        let ours = self.version.lock().await.clone();
        match self
            .object
            .swap(Some(&ours), &Lease::released(&self.owner))
            .await
        {
            Ok(Some(_)) => {}
            Ok(None) => tracing::warn!("a lease was taken over before it was released"),
            Err(e) => tracing::warn!(error = %e, "could not release a lease (it will expire)"),
        }
    }
}

/// A lease a run holds now (not expired, released, or left by a dead process of this host).
#[derive(Debug, Clone)]
pub struct HeldLease {
    /// `ledger-<day>` or `live`.
    pub name: String,
    pub owner: String,
    pub host: String,
    pub pid: u32,
    /// When it was taken (ms since the epoch); `None` when its holder's build did not say.
    pub since_ms: Option<i64>,
}

/// Every lease held now, for jobs that must not pull files from under a running one.
pub async fn held(lake: &Lake) -> Result<Vec<HeldLease>> {
    let dir = lake.path_of(&format!("{}/_locks", layout::RUNS))?;
    let listing = lake
        .store()
        .list_with_delimiter(Some(&dir))
        .await
        .map_err(|e| lake.storage_error(e))?;
    let mut out = Vec::new();
    for meta in listing.objects {
        let Some(name) = meta
            .location
            .filename()
            .and_then(|f| f.strip_suffix(".json"))
            .map(str::to_string)
        else {
            continue;
        };
        let object = LeaseObject {
            lake: lake.clone(),
            path: meta.location,
        };
        if let Some((Some(lease), _)) = object.read().await? {
            if !lease.is_stale() {
                out.push(HeldLease {
                    name,
                    owner: lease.owner,
                    host: lease.host,
                    pid: lease.pid,
                    since_ms: (lease.since_ms > 0).then_some(lease.since_ms),
                });
            }
        }
    }
    Ok(out)
}

/// Test support: makes the lease `name` stale, as a holder that died on another host leaves
/// it, so racers can break it.
#[doc(hidden)]
pub async fn plant_stale_lease(lake: &Lake, name: &str) -> Result<()> {
    let object = LeaseObject {
        lake: lake.clone(),
        path: lake.file_path(&format!("{}/_locks/{name}.json", layout::RUNS))?,
    };
    let dead = Lease {
        owner: "dead".into(),
        host: "elsewhere".into(),
        pid: 1,
        expires_ms: chrono::Utc::now().timestamp_millis() - 1,
        since_ms: 0,
    };
    loop {
        let current = object.read().await?.map(|(_, v)| v);
        if object.swap(current.as_ref(), &dead).await?.is_some() {
            return Ok(());
        }
    }
}

/// Test support: tries once to take the lease `name` for `owner` (no waiting); `true` when
/// taken. The lease is left held (not released, not renewed), as a run that holds it.
#[doc(hidden)]
pub async fn try_take_once(lake: &Lake, name: &str, owner: &str) -> Result<bool> {
    let object = LeaseObject {
        lake: lake.clone(),
        path: lake.file_path(&format!("{}/_locks/{name}.json", layout::RUNS))?,
    };
    loop {
        match try_take(&object, owner, name).await? {
            Attempt::Taken(..) => return Ok(true),
            Attempt::Held(_) => return Ok(false),
            Attempt::Raced => continue,
        }
    }
}

#[cfg(test)]
mod tests;
