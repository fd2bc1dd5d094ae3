//! The lake: where tally's tables live, and the object store that reaches them.
//!
//! A lake is a root location (a local directory or `s3://bucket/prefix`) under which the SPEC's
//! tables sit at fixed relative paths (`raw/payments/`, `ledger/`, …). This module turns the
//! root into an [`ObjectStore`] plus the URLs DataFusion and delta-rs need, with S3 settings
//! from the config layered over the standard `AWS_*` variables and timeouts short enough that
//! an unreachable endpoint fails in seconds, not minutes.

use crate::config::S3Options;
use crate::error::{Result, TallyError};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use std::collections::HashMap;
use std::sync::Arc;
use url::Url;

/// Relative locations of the SPEC's tables under the lake root.
pub mod layout {
    /// Raw payment events, hive-partitioned by `ingest_date`.
    pub const RAW_PAYMENTS: &str = "raw/payments";
    /// The daily ledger (Delta).
    pub const LEDGER: &str = "ledger";
    /// Conflicting copies found by the ledger (Delta).
    pub const LEDGER_CONFLICTS: &str = "ledger_conflicts";
    /// The live view (Delta).
    pub const LIVE_VIEW: &str = "live_view";
    /// Events behind the live watermark (Delta).
    pub const LIVE_LATE: &str = "live_late";
    /// Raw files the live mode quarantined, with why (Delta).
    pub const LIVE_QUARANTINE: &str = "live_quarantine";
    /// Reconciliation history (Delta).
    pub const RECONCILIATIONS: &str = "reconciliations";
    /// Ledger run log (Delta).
    pub const RUNS: &str = "runs";
    /// Alerts the live mode sent (Delta).
    pub const ALERTS: &str = "alerts";

    /// Every Delta table tally writes, in the order sessions register them.
    pub const DELTA_TABLES: [&str; 8] = [
        LEDGER,
        LEDGER_CONFLICTS,
        LIVE_VIEW,
        LIVE_LATE,
        LIVE_QUARANTINE,
        RECONCILIATIONS,
        RUNS,
        ALERTS,
    ];
}

/// A resolved lake root with its object store.
#[derive(Debug, Clone)]
pub struct Lake {
    /// Root URL, always ending in `/` (`file:///abs/lake/` or `s3://bucket/prefix/`).
    root: Url,
    /// The store for the root's scheme and authority (the whole filesystem, or one bucket).
    store: Arc<dyn ObjectStore>,
    /// Options delta-rs needs to build its own store for the same location.
    storage_options: HashMap<String, String>,
    /// Where requests go, for messages: the S3 endpoint URL, or `local disk`.
    endpoint: String,
}

impl Lake {
    /// Resolves `location` (path or URL) with S3 settings. Does not touch the network.
    pub fn open(location: &str, s3: &S3Options) -> Result<Self> {
        let root = location_to_url(location)?;
        let (store, storage_options): (Arc<dyn ObjectStore>, HashMap<String, String>) =
            match root.scheme() {
                "file" => (Arc::new(LocalFileSystem::new()), HashMap::new()),
                "s3" | "s3a" => {
                    let (store, opts) = build_s3(&root, s3)?;
                    (Arc::new(store), opts)
                }
                other => {
                    return Err(TallyError::Lake {
                        location: location.to_string(),
                        message: format!("unsupported scheme {other}: use a local path or s3://"),
                    })
                }
            };
        // Tests of a flaky store (see `flaky_store`): dev builds only.
        #[cfg(debug_assertions)]
        let store = crate::flaky_store::wrap(store);
        let endpoint = match root.scheme() {
            "file" => "local disk".to_string(),
            _ => storage_options
                .get("AWS_ENDPOINT_URL")
                .cloned()
                .unwrap_or_else(|| {
                    let region = storage_options
                        .get("AWS_REGION")
                        .map_or("us-east-1", String::as_str);
                    format!("https://s3.{region}.amazonaws.com")
                }),
        };
        Ok(Self {
            root,
            store,
            storage_options,
            endpoint,
        })
    }

    /// The root URL (ends in `/`).
    pub fn root(&self) -> &Url {
        &self.root
    }

    /// True for a lake on local disk.
    pub fn is_local(&self) -> bool {
        self.root.scheme() == "file"
    }

    /// The object store serving this lake's URL scheme and authority.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store)
    }

    /// The URL to register the store under in a DataFusion session (`file://` or `s3://bucket`).
    pub fn store_url(&self) -> Url {
        let mut u = self.root.clone();
        u.set_path("");
        u
    }

    /// Options for delta-rs to reach the same storage (endpoint, credentials, retries).
    pub fn storage_options(&self) -> &HashMap<String, String> {
        &self.storage_options
    }

    /// URL of a directory under the root, ending in `/`.
    pub fn url_of(&self, relative: &str) -> Result<Url> {
        let rel = relative.trim_matches('/');
        if rel.is_empty() {
            return Ok(self.root.clone());
        }
        self.root
            .join(&format!("{rel}/"))
            .map_err(|e| TallyError::Lake {
                location: self.root.to_string(),
                message: format!("cannot address {relative}: {e}"),
            })
    }

    /// Object-store path of something under the root (for direct reads and writes).
    pub fn path_of(&self, relative: &str) -> Result<StorePath> {
        url_to_store_path(&self.url_of(relative)?)
    }

    /// Object-store path of a file under the root (`relative` uses `/` separators).
    pub fn file_path(&self, relative: &str) -> Result<StorePath> {
        let mut path = self.path_of("")?;
        for part in relative.split('/').filter(|s| !s.is_empty()) {
            path = path.join(part);
        }
        Ok(path)
    }

    /// A store location as a path relative to the root (what jobs record and errors name).
    pub fn relative_path(&self, location: &StorePath) -> String {
        let Ok(root) = self.path_of("") else {
            return location.to_string();
        };
        location
            .prefix_match(&root)
            .map(|parts| {
                parts
                    .map(|p| p.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .unwrap_or_else(|| location.to_string())
    }

    /// Lists the immediate children (directory names) of a directory under the root.
    /// A missing directory lists as empty.
    pub async fn list_dirs(&self, relative: &str) -> Result<Vec<String>> {
        let prefix = self.path_of(relative)?;
        let listing = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| self.storage_error(e))?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    /// The directories at the root (which tables exist), after checking the root can be
    /// reached and exists; a clear error otherwise. One LIST on S3.
    pub async fn top_level_dirs(&self) -> Result<Vec<String>> {
        if self.is_local() {
            let path = self.root.to_file_path().map_err(|_| TallyError::Lake {
                location: self.root.to_string(),
                message: "not a local path".into(),
            })?;
            if !path.is_dir() {
                return Err(TallyError::Lake {
                    location: path.display().to_string(),
                    message: "no such directory (create one with `tally generate` or `tally demo`, or pass --lake)".into(),
                });
            }
        }
        self.list_dirs("").await
    }

    /// Where the lake's requests go (the S3 endpoint URL, or `local disk`), for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Wraps a storage error with the lake location, keeping it on one line. Anything but a
    /// missing object is the store failing, not the data being bad: the message names the
    /// endpoint and says that retrying is the remedy, so a scheduler (and its operator) can
    /// tell an outage from bad input.
    pub fn storage_error(&self, e: object_store::Error) -> TallyError {
        let message = match e {
            object_store::Error::NotFound { .. } => one_line(&e.to_string()),
            other => format!(
                "the store at {} failed ({}); the data is not at fault: retry when it is reachable",
                self.endpoint,
                one_line(&other.to_string())
            ),
        };
        TallyError::Lake {
            location: self.root.to_string(),
            message,
        }
    }
}

/// Collapses a multi-line error chain into one line, without a backtrace some errors carry
/// in their text (delta-kernel's: `0: buoyant_kernel::error::Error::with_backtrace 1: …`).
pub fn one_line(s: &str) -> String {
    let line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.find(" 0: ") {
        Some(at)
            if line[at + 4..]
                .split(' ')
                .next()
                .is_some_and(|f| f.contains("::")) =>
        {
            line[..at].trim_end_matches([':', ' ']).to_string()
        }
        _ => line,
    }
}

/// Turns a path or URL into a directory URL ending in `/`.
pub fn location_to_url(location: &str) -> Result<Url> {
    let bad = |message: String| TallyError::Lake {
        location: location.to_string(),
        message,
    };
    let mut url = if location.contains("://") {
        Url::parse(location).map_err(|e| bad(e.to_string()))?
    } else {
        // Resolve `..` and symlinks when the directory exists (object-store paths refuse `..`).
        let abs = std::fs::canonicalize(location)
            .or_else(|_| std::path::absolute(location))
            .map_err(|e| bad(e.to_string()))?;
        Url::from_directory_path(&abs).map_err(|_| bad("not an absolute path".into()))?
    };
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}

/// The object-store path of a URL (the part after the authority), percent-decoded.
pub fn url_to_store_path(url: &Url) -> Result<StorePath> {
    StorePath::from_url_path(url.path()).map_err(|e| TallyError::Lake {
        location: url.to_string(),
        message: e.to_string(),
    })
}

fn build_s3(root: &Url, s3: &S3Options) -> Result<(impl ObjectStore, HashMap<String, String>)> {
    let bucket = root.host_str().unwrap_or_default();
    if bucket.is_empty() {
        return Err(TallyError::Lake {
            location: root.to_string(),
            message: "an s3:// lake needs a bucket: s3://bucket/prefix".into(),
        });
    }
    // Explicit settings win over AWS_* variables (which from_env already applied).
    let mut opts: HashMap<String, String> = HashMap::new();
    let mut set = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            opts.insert(k.to_string(), v.clone());
        }
    };
    set("AWS_ENDPOINT_URL", &s3.endpoint);
    set("AWS_REGION", &s3.region);
    set("AWS_ACCESS_KEY_ID", &s3.access_key_id);
    set("AWS_SECRET_ACCESS_KEY", &s3.secret_access_key);
    set("AWS_SESSION_TOKEN", &s3.session_token);
    set("AWS_ALLOW_HTTP", &s3.allow_http.map(|b| b.to_string()));
    // Fill from the environment what the config left unset, so delta-rs sees the same values.
    for key in [
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_ALLOW_HTTP",
    ] {
        if !opts.contains_key(key) {
            if let Ok(v) = std::env::var(key) {
                opts.insert(key.to_string(), v);
            }
        }
    }
    opts.entry("AWS_REGION".into())
        .or_insert_with(|| "us-east-1".into());

    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    for (k, v) in &opts {
        if let Ok(key) = k.to_ascii_lowercase().parse() {
            builder = builder.with_config(key, v);
        }
    }
    let retry = RetryConfig {
        max_retries: s3.max_retries,
        retry_timeout: s3.retry_timeout,
        ..Default::default()
    };
    let client = ClientOptions::new()
        .with_timeout(s3.timeout)
        .with_connect_timeout(s3.connect_timeout)
        .with_allow_http(opts.get("AWS_ALLOW_HTTP").is_some_and(|v| v == "true"));
    let store = builder
        .with_retry(retry)
        .with_client_options(client)
        .build()
        .map_err(|e| TallyError::Lake {
            location: root.to_string(),
            message: one_line(&e.to_string()),
        })?;
    opts.insert("max_retries".into(), s3.max_retries.to_string());
    opts.insert(
        "retry_timeout".into(),
        format!("{}s", s3.retry_timeout.as_secs().max(1)),
    );
    opts.insert(
        "timeout".into(),
        format!("{}s", s3.timeout.as_secs().max(1)),
    );
    opts.insert(
        "connect_timeout".into(),
        format!("{}s", s3.connect_timeout.as_secs().max(1)),
    );
    Ok((store, opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_drops_a_backtrace() {
        assert_eq!(
            one_line("delta: Json error: bad\n 0: buoyant_kernel::error::Error::with_backtrace\n 1: x::y"),
            "delta: Json error: bad"
        );
        assert_eq!(one_line("a\n b 0: c"), "a b 0: c");
    }

    #[test]
    fn relative_path_becomes_absolute_directory_url() {
        let u = location_to_url("lake").unwrap();
        assert_eq!(u.scheme(), "file");
        assert!(u.path().ends_with("/lake/"));
    }

    #[test]
    fn s3_url_keeps_prefix() {
        let lake = Lake::open("s3://bucket/some/prefix", &S3Options::default()).unwrap();
        assert_eq!(
            lake.url_of("raw/payments").unwrap().as_str(),
            "s3://bucket/some/prefix/raw/payments/"
        );
        assert_eq!(lake.store_url().as_str(), "s3://bucket");
        assert_eq!(
            lake.path_of("ledger").unwrap().as_ref(),
            "some/prefix/ledger"
        );
    }

    #[test]
    fn unknown_scheme_is_refused() {
        let e = Lake::open("gopher://x/y", &S3Options::default()).unwrap_err();
        assert!(e.to_string().contains("unsupported scheme"), "{e}");
    }
}
