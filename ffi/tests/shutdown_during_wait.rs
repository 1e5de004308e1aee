//! A shutdown never waits behind a flush or a wait-durable that could run for ever: the waits
//! hold the bus's read lock only in 10 ms slices and return `NET_ERR_CLOSED` once a shutdown
//! began (found by review: a `net_wait_durable` on a sequence number not yet written, with no
//! timeout, held the lock the shutdown needed, and both hung).

use std::time::{Duration, Instant};

use net::{
    net_bus, net_bus_free, net_bus_new, net_bus_shutdown, net_event_id, net_result,
    net_wait_durable,
};

/// The handle as a number, to move it into the waiting thread (the API is thread-safe).
#[derive(Clone, Copy)]
struct Handle(usize);

#[test]
fn a_shutdown_is_not_held_up_by_an_endless_wait() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{{"data_dir": "{}", "shards": 1, "pin": false}}"#,
        dir.path().display()
    );
    let mut bus: *mut net_bus = std::ptr::null_mut();
    // SAFETY: a valid config buffer and out pointer.
    let r = unsafe { net_bus_new(config.as_ptr().cast(), config.len(), &mut bus) };
    assert_eq!(r, net_result::NET_OK);
    let h = Handle(bus as usize);
    let waiter = std::thread::spawn(move || {
        let h = h;
        let never = net_event_id {
            seq: 1 << 40,
            shard: 0,
            reserved: [0; 3],
        };
        // SAFETY: a live handle and one readable id.
        unsafe { net_wait_durable(h.0 as *const net_bus, &never, 1, u64::MAX) }
    });
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let mut report = std::mem::MaybeUninit::zeroed();
    // SAFETY: a live handle and a writable report.
    let r = unsafe { net_bus_shutdown(bus, 5000, report.as_mut_ptr()) };
    assert_eq!(r, net_result::NET_OK);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the shutdown waited behind the wait"
    );
    assert_eq!(waiter.join().unwrap(), net_result::NET_ERR_CLOSED);
    // SAFETY: a handle from net_bus_new, freed once.
    assert_eq!(unsafe { net_bus_free(bus) }, net_result::NET_OK);
}
