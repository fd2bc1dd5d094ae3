//! A store that fails on purpose, for tests of what a flaky S3 does to long-running modes.
//!
//! With `TALLY_FLAKY_STORE=<n>:<first>-<last>[:<text>]` (builds with debug assertions only,
//! like [`crate::failpoint`]), every `n`-th request tally makes through the lake's own store,
//! from request number `first` to `last`, fails with a generic store error, as a throttling or
//! briefly unreachable S3 does; before and after, every request goes through. With `<text>`,
//! only requests whose path contains it are counted (and can fail): a test aims at one step,
//! e.g. `checkpoint` or `/part-`. Counting requests rather than seconds makes a test's failures
//! land in the same steps on any machine. Delta commits go through delta-rs's own store and are
//! not affected.

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The environment variable that turns the flaky store on.
pub const VAR: &str = "TALLY_FLAKY_STORE";

/// `store`, failing as `TALLY_FLAKY_STORE` says, or `store` itself when it is unset or
/// malformed (a malformed value is reported once on stderr).
pub fn wrap(store: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
    let Ok(spec) = std::env::var(VAR) else {
        return store;
    };
    let mut fields = spec.splitn(3, ':');
    let parsed = (|| {
        let every = fields.next()?.trim().parse::<u64>().ok()?;
        let (first, last) = fields.next()?.split_once('-')?;
        let only = fields.next().map(str::to_string);
        Some((
            every,
            first.trim().parse().ok()?,
            last.trim().parse().ok()?,
            only,
        ))
    })();
    match parsed {
        Some((every, first, last, only)) if every > 0 => Arc::new(FlakyStore {
            inner: store,
            every,
            first,
            last,
            only,
            requests: AtomicU64::new(0),
        }),
        _ => {
            eprintln!(
                "{VAR}={spec}: expected <n>:<first>-<last>[:<text>], e.g. 3:10-100; the store is not flaky"
            );
            store
        }
    }
}

#[derive(Debug)]
struct FlakyStore {
    inner: Arc<dyn ObjectStore>,
    every: u64,
    first: u64,
    last: u64,
    /// Only requests whose path contains this are counted.
    only: Option<String>,
    requests: AtomicU64,
}

impl std::fmt::Display for FlakyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Flaky({})", self.inner)
    }
}

impl FlakyStore {
    /// Counts a request; `Err` when this one is to fail.
    fn request(&self, what: &str, path: Option<&Path>) -> Result<()> {
        let path = path.map(|p| p.to_string()).unwrap_or_default();
        if self
            .only
            .as_ref()
            .is_some_and(|only| !path.contains(only.as_str()))
        {
            return Ok(());
        }
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if (self.first..=self.last).contains(&n) && n.is_multiple_of(self.every) {
            eprintln!("{VAR}: failing request {n} ({what} {path})");
            return Err(object_store::Error::Generic {
                store: "flaky",
                source: format!("{VAR}: request {n} ({what} {path}) failed on purpose").into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for FlakyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.request("put", Some(location))?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.request("put", Some(location))?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.request("get", Some(location))?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.request("get", Some(location))?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        if let Err(e) = self.request("delete", None) {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        if let Err(e) = self.request("list", prefix) {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.request("list", prefix)?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.request("copy", Some(from))?;
        self.inner.copy_opts(from, to, options).await
    }
}
