//! Compare-and-swap storage of one lease object: conditional puts on S3, reads and writes
//! under an exclusive `flock` on local disk.

use super::Lease;
use crate::error::{Result, TallyError};
use crate::lake::Lake;
use object_store::path::Path as StorePath;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

/// The version of a lease object a compare-and-swap must find: the ETag (and object
/// version) on S3, the bytes themselves on local disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Version {
    Remote(UpdateVersion),
    Local(Vec<u8>),
}

/// Compare-and-swap access to one lease object.
#[derive(Debug, Clone)]
pub(super) struct LeaseObject {
    pub(super) lake: Lake,
    pub(super) path: StorePath,
}

impl LeaseObject {
    fn local_path(&self) -> Option<std::path::PathBuf> {
        if !self.lake.is_local() {
            return None;
        }
        Some(std::path::PathBuf::from(format!("/{}", self.path.as_ref())))
    }

    /// The lease and its version; `None` when there is none. An unreadable lease reads as
    /// `Some((None, version))`.
    pub(super) async fn read(&self) -> Result<Option<(Option<Lease>, Version)>> {
        if let Some(file) = self.local_path() {
            let read = tokio::task::spawn_blocking(move || locked(&file, |cur| Ok((cur, None))))
                .await
                .map_err(|e| TallyError::Internal(format!("lease task: {e}")))??;
            return Ok(
                read.map(|bytes| (serde_json::from_slice(&bytes).ok(), Version::Local(bytes)))
            );
        }
        let store = self.lake.store();
        match store.get(&self.path).await {
            Ok(got) => {
                let version = UpdateVersion {
                    e_tag: got.meta.e_tag.clone(),
                    version: got.meta.version.clone(),
                };
                let bytes = got.bytes().await.map_err(|e| self.lake.storage_error(e))?;
                Ok(Some((
                    serde_json::from_slice(&bytes).ok(),
                    Version::Remote(version),
                )))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.lake.storage_error(e)),
        }
    }

    /// Writes `lease` if the object is still at `expected` (`None`: absent). Returns the new
    /// version, or `None` when another process changed it first.
    pub(super) async fn swap(
        &self,
        expected: Option<&Version>,
        lease: &Lease,
    ) -> Result<Option<Version>> {
        let body = serde_json::to_vec(lease).map_err(|e| TallyError::Internal(e.to_string()))?;
        if let Some(file) = self.local_path() {
            let expected = match expected {
                None => None,
                Some(Version::Local(b)) => Some(b.clone()),
                Some(Version::Remote(_)) => {
                    return Err(TallyError::Internal(
                        "remote version of a local lease".into(),
                    ))
                }
            };
            let written = body.clone();
            let swapped = tokio::task::spawn_blocking(move || {
                locked(&file, |cur| {
                    if cur != expected {
                        return Ok((None, None));
                    }
                    Ok((Some(()), Some(written)))
                })
            })
            .await
            .map_err(|e| TallyError::Internal(format!("lease task: {e}")))??;
            return Ok(swapped.map(|_| Version::Local(body)));
        }
        let mode = match expected {
            None => PutMode::Create,
            Some(Version::Remote(v)) => PutMode::Update(v.clone()),
            Some(Version::Local(_)) => {
                return Err(TallyError::Internal(
                    "local version of a remote lease".into(),
                ))
            }
        };
        match self
            .lake
            .store()
            .put_opts(&self.path, PutPayload::from(body), PutOptions::from(mode))
            .await
        {
            Ok(put) => Ok(Some(Version::Remote(UpdateVersion {
                e_tag: put.e_tag,
                version: put.version,
            }))),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.lake.storage_error(e)),
        }
    }
}

/// Runs `f` on the lease file's bytes (`None`: absent) under an exclusive lock of its sibling
/// `.lock` file; writes what `f` returns as the second value (atomically, by rename).
fn locked<T>(
    file: &std::path::Path,
    f: impl FnOnce(Option<Vec<u8>>) -> Result<(T, Option<Vec<u8>>)>,
) -> Result<T> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let lock_path = file.with_extension("json.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    lock.lock()?;
    let current = match std::fs::read(file) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    let (out, write) = f(current)?;
    if let Some(bytes) = write {
        let tmp = file.with_extension(format!("json.{}.tmp", std::process::id()));
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, file)?;
    }
    lock.unlock()?;
    Ok(out)
}
