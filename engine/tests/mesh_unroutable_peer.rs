//! One unroutable peer (`EHOSTUNREACH`/`ENETUNREACH`/`EPERM`) must not block its shard's
//! other sends nor spin the shard: such an error is about the datagram at the head of the
//! batch, which is dropped and counted (`send_errors`), and a shard backing off parks until
//! its retry time instead of reporting itself ready.
//!
//! Needs an unreachable route: `ip route add unreachable 203.0.113.0/24` (root). Ignored by
//! default for that reason.

mod common;

use std::time::{Duration, Instant};

use net_engine::Bus;

fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
#[ignore = "needs `ip route add unreachable 203.0.113.0/24`"]
fn an_unroutable_peer_neither_blocks_nor_spins_the_shard() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Bus::start(common::mesh_config(da.path(), 1)).unwrap();
    let b = Bus::start(common::mesh_config(db.path(), 1)).unwrap();
    let (_, b_key) = b.mesh_identity().unwrap();
    let mut inbox_b = b.mesh_inbox().unwrap();
    let mut to_b = a.connect(b.mesh_addr().unwrap(), b_key).unwrap();
    to_b.send_timeout(b"before", Duration::from_secs(10))
        .unwrap();
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while got == 0 && Instant::now() < deadline {
        got += inbox_b.recv_wait(1, Duration::from_millis(100), |_| {});
    }
    assert_eq!(got, 1);
    std::thread::sleep(Duration::from_millis(500));
    let idle_cpu = {
        let c = cpu_ns();
        std::thread::sleep(Duration::from_secs(1));
        cpu_ns() - c
    };

    let _bad = a
        .connect("203.0.113.5:7440".parse().unwrap(), [0x42u8; 32])
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let c = cpu_ns();
    let mut after = 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    let _ = to_b.send(b"after");
    while after == 0 && Instant::now() < deadline {
        after += inbox_b.recv_wait(1, Duration::from_millis(100), |_| {});
    }
    let busy_cpu = (cpu_ns() - c) / 3;
    eprintln!(
        "cpu/s idle {} ms, with the unroutable peer {} ms; stats {:?}",
        idle_cpu / 1_000_000,
        busy_cpu / 1_000_000,
        a.mesh_stats().unwrap().shards[0]
    );
    assert!(
        after == 1 && busy_cpu < 200_000_000,
        "delivered to the healthy peer after: {after}; CPU per second: {} ms",
        busy_cpu / 1_000_000
    );
}
