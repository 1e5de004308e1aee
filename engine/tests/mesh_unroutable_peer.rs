//! One unroutable peer (`EHOSTUNREACH`/`ENETUNREACH`/`EPERM`) must not block its shard's
//! other sends nor spin the shard: such an error is about the datagram at the head of the
//! batch, which is dropped and counted (`send_errors`), and a shard backing off parks until
//! its retry time instead of reporting itself ready.
//!
//! The test runs in a network namespace of its own (root only; it prints `SKIPPED` and
//! returns otherwise) with `unreachable 203.0.113.0/24` routed, so that sending there fails
//! with `EHOSTUNREACH`; nothing outside the namespace is touched.

mod common;

use std::process::Command;
use std::time::Duration;

fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A network namespace that is removed when dropped.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn an_unroutable_peer_neither_blocks_nor_spins_the_shard() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !ip(&["-V"]) {
        eprintln!(
            "SKIPPED: needs root and `ip` to make a network namespace with an unreachable route"
        );
        return;
    }
    let name = format!("netmesh-unr-{}", std::process::id());
    assert!(ip(&["netns", "add", &name]), "ip netns add {name}");
    let ns = Netns(name);
    assert!(ip(&["-n", &ns.0, "link", "set", "lo", "up"]));
    assert!(ip(&[
        "-n",
        &ns.0,
        "route",
        "add",
        "unreachable",
        "203.0.113.0/24"
    ]));
    let path = format!("/var/run/netns/{}", ns.0);
    // The buses (their sockets and shard threads) live in the namespace: start them from a
    // thread that entered it.
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("the namespace's file");
        // SAFETY: a valid namespace descriptor; only this thread changes namespace.
        let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
        in_namespace();
    })
    .join()
    .expect("the test body passed");
    drop(ns);
}

fn in_namespace() {
    // Bound whole: the pair owns the buses' data dirs.
    let common::MeshPair {
        a,
        b: _b,
        mut inbox_b,
        mut to_b,
        _dirs,
    } = common::mesh_pair();
    std::thread::sleep(Duration::from_millis(500));
    let idle_cpu = {
        let c = cpu_ns();
        std::thread::sleep(Duration::from_secs(1));
        cpu_ns() - c
    };

    let mut bad = a
        .connect("203.0.113.5:7440".parse().unwrap(), [0x42u8; 32])
        .unwrap();
    let _ = bad.send(b"nowhere");
    std::thread::sleep(Duration::from_millis(200));
    let busy_cpu = {
        let c = cpu_ns();
        std::thread::sleep(Duration::from_secs(1));
        cpu_ns() - c
    };
    to_b.send(b"after").unwrap();
    let after = common::recv_one(&mut inbox_b, Duration::from_secs(5));
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
