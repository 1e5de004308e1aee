//! Hardening: a second bus on a data dir is refused while the first runs (both would continue
//! the same shards' sequences and one would silently overwrite the other's acknowledged
//! events); the lock goes with the first bus, also when it is dropped without `shutdown`.

mod common;

use std::time::Duration;

use net_engine::{Bus, Error};
use net_storage::StorageError;

#[test]
fn a_second_bus_on_a_data_dir_is_refused_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = Bus::start(common::config(dir.path(), 2)).unwrap();
    let mut p = a.producer().unwrap();
    for i in 0..500u64 {
        p.send(&i.to_le_bytes(), &common::payload(0, i, 40))
            .unwrap();
    }
    a.flush().unwrap();

    match Bus::start(common::config(dir.path(), 2)) {
        Err(Error::DataDir(StorageError::Locked { dir: d, holder })) => {
            assert_eq!(d, dir.path());
            assert_eq!(holder, Some(std::process::id()));
        }
        other => panic!("a second bus on the same dir must be refused, got {other:?}"),
    }
    let text = Bus::start(common::config(dir.path(), 2))
        .unwrap_err()
        .to_string();
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    assert!(text.contains("in use by pid"), "{text}");

    for i in 500..1000u64 {
        p.send(&i.to_le_bytes(), &common::payload(0, i, 40))
            .unwrap();
    }
    drop(p);
    assert!(!a.shutdown(Duration::from_secs(5)).lossy);

    let b = Bus::start(common::config(dir.path(), 2)).unwrap();
    let mut seen: Vec<u64> = common::poll_all(&b, 1000)
        .iter()
        .map(|e| common::parse(&e.payload).1)
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    drop(b);
    // Dropped without shutdown: the lock is released all the same.
    Bus::start(common::config(dir.path(), 2))
        .unwrap()
        .shutdown(Duration::from_secs(5));
}
