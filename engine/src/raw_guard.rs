//! Raw data is never modified (SPEC), not even with `--allow-write`: a plan that would write
//! under the lake's `raw/` folder is refused before it runs, however the target is spelled.
//!
//! The targets are taken from the plan DataFusion will execute: `COPY … TO` its output
//! location, `INSERT`/`DELETE`/`UPDATE` the table they change (`raw_payments` by name, and any
//! listing table, such as a `CREATE EXTERNAL TABLE`, by its location). Locations are resolved
//! as the store will see them: relative paths against the working directory, `.`, `..` and
//! repeated slashes folded, symbolic links followed on local disk, `s3a://` as `s3://`.

use crate::error::{Result, TallyError};
use crate::lake::Lake;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::listing::ListingTable;
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::LogicalPlan;
use std::path::{Component, Path, PathBuf};
use url::Url;

/// The lake's folder of raw data: every dataset under it is read-only.
const RAW: &str = "raw";

/// Refuses `plan` when it writes under `lake`'s `raw/` folder.
pub fn check(lake: &Lake, plan: &LogicalPlan) -> Result<()> {
    let mut refused = None;
    let _ = plan.apply_with_subqueries(|node| {
        for (statement, target) in write_targets(node) {
            if target == TargetRef::RawTable || under_raw(lake, &target) {
                refused = Some(TallyError::RawWrite {
                    statement,
                    target: target.to_string(),
                });
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    refused.map_or(Ok(()), Err)
}

/// What a write node writes to.
#[derive(Debug, PartialEq, Eq)]
enum TargetRef {
    /// The `raw_payments` table itself (a Delta raw table would take an insert).
    RawTable,
    /// A location as the statement or the table names it.
    Location(String),
}

impl std::fmt::Display for TargetRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetRef::RawTable => f.write_str("raw_payments"),
            TargetRef::Location(l) => f.write_str(l),
        }
    }
}

fn write_targets(node: &LogicalPlan) -> Vec<(String, TargetRef)> {
    match node {
        LogicalPlan::Copy(copy) => vec![(
            "COPY TO".to_string(),
            TargetRef::Location(copy.output_url.clone()),
        )],
        LogicalPlan::Dml(dml) => {
            let op = dml.op.to_string().to_ascii_uppercase();
            if dml.table_name.table() == "raw_payments" {
                return vec![(op, TargetRef::RawTable)];
            }
            let Ok(provider) = source_as_provider(&dml.target) else {
                return Vec::new();
            };
            let any: &dyn std::any::Any = provider.as_ref();
            match any.downcast_ref::<ListingTable>() {
                Some(listing) => listing
                    .table_paths()
                    .iter()
                    .map(|u| (op.clone(), TargetRef::Location(u.as_str().to_string())))
                    .collect(),
                None => Vec::new(),
            }
        }
        _ => Vec::new(),
    }
}

fn under_raw(lake: &Lake, target: &TargetRef) -> bool {
    let TargetRef::Location(location) = target else {
        return true;
    };
    let Ok(raw) = lake.url_of(RAW) else {
        return false;
    };
    match (resolve(raw.as_str()), resolve(location)) {
        (Some(raw), Some(target)) => {
            raw.0 == target.0 && target.1.len() >= raw.1.len() && target.1[..raw.1.len()] == raw.1
        }
        // A location that cannot be resolved cannot be shown to be outside raw.
        (Some(_), None) => true,
        _ => false,
    }
}

/// A location as (store, path segments): `("file", …)` for local disk after following links,
/// `("s3://bucket", …)` for a bucket.
fn resolve(location: &str) -> Option<(String, Vec<String>)> {
    let local = |path: &Path| {
        let absolute = std::path::absolute(path).ok()?;
        Some(("file".to_string(), segments_of(&follow_links(&absolute))))
    };
    match Url::parse(location) {
        Ok(url) if url.scheme() == "file" => local(&url.to_file_path().ok()?),
        Ok(url) if url.scheme().len() > 1 => {
            let scheme = match url.scheme() {
                "s3a" => "s3",
                other => other,
            };
            let store = format!("{scheme}://{}", url.host_str().unwrap_or_default());
            let path = percent_encoding::percent_decode_str(url.path()).decode_utf8_lossy();
            Some((store, fold(path.split('/'))))
        }
        _ => local(Path::new(location)),
    }
}

/// Path segments with empty ones and `.` dropped and `..` applied.
fn fold<'a>(parts: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in parts {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p.to_string()),
        }
    }
    out
}

fn segments_of(path: &Path) -> Vec<String> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_string_lossy().to_string()),
            _ => None,
        })
        .collect()
}

/// `path` (absolute) with `.`/`..` folded and the links of its longest existing ancestor
/// followed, as the file system will resolve it when the write creates the rest.
fn follow_links(path: &Path) -> PathBuf {
    let folded: PathBuf = std::iter::once("/".to_string())
        .chain(fold(path.components().filter_map(|c| match c {
            Component::Normal(p) => p.to_str(),
            Component::ParentDir => Some(".."),
            _ => None,
        })))
        .collect();
    let mut existing = folded.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            return rest.iter().rev().fold(real, |p, name| p.join(name));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return folded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::S3Options;

    #[test]
    fn every_spelling_of_a_raw_location_is_under_raw() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("lake");
        std::fs::create_dir_all(root.join("raw/payments")).unwrap();
        std::fs::create_dir_all(root.join("ledger")).unwrap();
        std::os::unix::fs::symlink(root.join("raw"), dir.path().join("alias")).unwrap();
        let lake = Lake::open(&root.to_string_lossy(), &S3Options::default()).unwrap();
        let at = |s: &str| TargetRef::Location(s.to_string());
        let d = dir.path().display();
        for raw in [
            format!("{d}/lake/raw/payments/x.parquet"),
            format!("{d}/lake//raw/new/"),
            format!("{d}/lake/./raw/x.parquet"),
            format!("{d}/lake/ledger/../raw/x.parquet"),
            format!("file://{d}/lake/raw/x.parquet"),
            format!("{d}/alias/payments/x.parquet"),
            format!("{d}/lake/raw"),
        ] {
            assert!(under_raw(&lake, &at(&raw)), "{raw}");
        }
        for other in [
            format!("{d}/lake/ledger/x.parquet"),
            format!("{d}/lake/rawish/x.parquet"),
            format!("{d}/lake/raw/../out.parquet"),
            format!("{d}/out/raw/x.parquet"),
            "s3://bucket/lake/raw/x.parquet".to_string(),
        ] {
            assert!(!under_raw(&lake, &at(&other)), "{other}");
        }
    }

    #[test]
    fn a_bucket_lake_compares_bucket_and_key() {
        let lake = Lake::open("s3://bucket/lake", &S3Options::default()).unwrap();
        let at = |s: &str| TargetRef::Location(s.to_string());
        for raw in [
            "s3://bucket/lake/raw/payments/x.parquet",
            "s3a://bucket/lake/raw/x.parquet",
            "s3://bucket/lake//raw/./x.parquet",
            "s3://bucket/lake/ledger/../raw/x.parquet",
            "s3://bucket/lake/r%61w/x.parquet",
        ] {
            assert!(under_raw(&lake, &at(raw)), "{raw}");
        }
        for other in [
            "s3://bucket/lake/ledger/x.parquet",
            "s3://other/lake/raw/x.parquet",
            "s3://bucket/raw/x.parquet",
            "/tmp/lake/raw/x.parquet",
        ] {
            assert!(!under_raw(&lake, &at(other)), "{other}");
        }
    }
}
