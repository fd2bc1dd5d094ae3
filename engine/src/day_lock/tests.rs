//! Unit tests of the lease: renewal, takeover and the compare-and-swap.

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
    assert_eq!(
        renew_once(&lock.object, "a", 0, &lock.version).await,
        Renewal::Renewed
    );
    assert!(lock.fence().confirm().await.is_ok());
    lock.release().await;
    // Released: the next run takes it at once.
    let again = acquire_live(&lake, "b").await.unwrap();
    again.release().await;
}

#[tokio::test]
async fn a_held_lease_is_listed_with_when_it_was_taken_across_renewals() {
    let dir = tempfile::tempdir().unwrap();
    let lake = local_lake(&dir);
    assert!(held(&lake).await.unwrap().is_empty());
    let lock = acquire(
        &lake,
        chrono::NaiveDate::from_ymd_opt(2026, 11, 3).unwrap(),
        "ledger",
        Duration::ZERO,
    )
    .await
    .unwrap();
    let first = held(&lake).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].name, "ledger-2026-11-03");
    let since = first[0].since_ms.expect("a start time");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (lease, _) = lock.object.read().await.unwrap().unwrap();
    assert_eq!(lease.unwrap().since_ms, since);
    assert_eq!(
        renew_once(&lock.object, "ledger", since, &lock.version).await,
        Renewal::Renewed
    );
    assert_eq!(held(&lake).await.unwrap()[0].since_ms, Some(since));
    lock.release().await;
    assert!(
        held(&lake).await.unwrap().is_empty(),
        "a released lease is not held"
    );
}

#[tokio::test]
async fn a_lease_taken_over_is_not_overwritten_and_fences_its_old_holder() {
    let dir = tempfile::tempdir().unwrap();
    let lake = local_lake(&dir);
    let lock = acquire_live(&lake, "a").await.unwrap();
    // Another run took the lease over while this one stalled past the expiry.
    let (_, v) = lock.object.read().await.unwrap().unwrap();
    assert!(lock
        .object
        .swap(Some(&v), &Lease::new("b"))
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        renew_once(&lock.object, "a", 0, &lock.version).await,
        Renewal::Lost
    );
    let (holder, _) = lock.object.read().await.unwrap().unwrap();
    assert_eq!(
        holder.unwrap().owner,
        "b",
        "the new holder's lease must survive"
    );
    let e = lock.fence().confirm().await.unwrap_err();
    assert!(e.to_string().contains("taken over"), "{e}");
    assert!(lock.fence().check().is_err());
}

#[tokio::test]
async fn of_two_swaps_from_one_version_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let lake = local_lake(&dir);
    plant_stale_lease(&lake, "x").await.unwrap();
    let object = LeaseObject {
        lake: lake.clone(),
        path: lake.file_path("runs/_locks/x.json").unwrap(),
    };
    let (_, v) = object.read().await.unwrap().unwrap();
    let a = object.swap(Some(&v), &Lease::new("a")).await.unwrap();
    let b = object.swap(Some(&v), &Lease::new("b")).await.unwrap();
    assert!(a.is_some() && b.is_none());
}

/// A heartbeat renewing while the holder confirms its lease is the holder's own write: the
/// confirm must never read it as a takeover. The heartbeat renews without pause on another
/// thread while the holder confirms, so renewals land inside confirms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_during_a_confirm_is_not_a_takeover() {
    let dir = tempfile::tempdir().unwrap();
    let lake = local_lake(&dir);
    let lock = std::sync::Arc::new(acquire_live(&lake, "a").await.unwrap());
    let fence = lock.fence();
    let beating = std::sync::Arc::clone(&lock);
    let heartbeat = tokio::spawn(async move {
        for _ in 0..3000 {
            assert_eq!(
                renew_once(&beating.object, "a", 0, &beating.version).await,
                Renewal::Renewed
            );
        }
    });
    let mut confirms = 0;
    while !heartbeat.is_finished() {
        assert!(
            fence.confirm().await.is_ok(),
            "a healthy holder saw a takeover after {confirms} confirms"
        );
        confirms += 1;
    }
    heartbeat.await.unwrap();
    assert!(confirms > 0);
}
