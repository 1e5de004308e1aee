//! A bad destination never stops a shard's mesh for its other peers. Port 0, unspecified,
//! broadcast and multicast addresses (and a family the socket cannot reach) are refused by
//! `Bus::connect` with the address named. A destination the kernel refuses per datagram (a
//! non-loopback address from a loopback-bound socket: `EINVAL`; no route; a firewall) costs
//! only its own datagrams, counted in `send_errors`; the healthy session keeps delivering.

mod common;

use std::time::{Duration, Instant};

use net_engine::Bus;

#[test]
fn a_bad_destination_costs_only_its_own_datagrams() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Bus::start(common::mesh_config(da.path(), 1)).unwrap();
    let b = Bus::start(common::mesh_config(db.path(), 1)).unwrap();
    let (_, b_key) = b.mesh_identity().unwrap();
    let mut inbox_b = b.mesh_inbox().unwrap();

    // A healthy session first.
    let mut to_b = a.connect(b.mesh_addr().unwrap(), b_key).unwrap();
    to_b.send_timeout(b"before", Duration::from_secs(10))
        .unwrap();
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while got == 0 && Instant::now() < deadline {
        got += inbox_b.recv_wait(1, Duration::from_millis(100), |_| {});
    }
    assert_eq!(got, 1, "the healthy session works");

    // Addresses no datagram can go to are refused by name.
    for bad in [
        "127.0.0.1:0",
        "0.0.0.0:7440",
        "255.255.255.255:7440",
        "224.0.0.1:7440",
        "[::1]:7440",
    ] {
        match a.connect(bad.parse().unwrap(), [0x42; 32]) {
            Err(net_engine::Error::Mesh { what }) => assert!(
                what.contains(bad.trim_start_matches('[').split(']').next().unwrap()),
                "{what}"
            ),
            other => panic!("{bad}: {other:?}"),
        }
    }
    // An address the kernel refuses for this socket (loopback-bound, non-loopback peer).
    let mut far = a
        .connect("10.255.0.1:7440".parse().unwrap(), [0x43; 32])
        .unwrap();
    far.send(b"into the void").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.mesh_stats().unwrap().shards[0].send_errors == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }

    // The healthy peer on the same shard still works, and the socket never failed.
    let stats = a.mesh_stats().unwrap();
    assert!(stats.shards[0].send_errors >= 1, "{:?}", stats.shards[0]);
    assert_eq!(stats.shards[0].socket_failed, None);
    to_b.send(b"after").unwrap();
    let mut after = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while after == 0 && Instant::now() < deadline {
        after += inbox_b.recv_wait(1, Duration::from_millis(100), |_| {});
    }
    assert_eq!(after, 1, "the healthy session still delivers");
    drop((far, to_b));
    a.shutdown(Duration::from_secs(5));
    b.shutdown(Duration::from_secs(5));
}
