//! A bad destination never stops a shard's mesh for its other peers. Port 0, unspecified,
//! broadcast and multicast addresses (and a family the socket cannot reach) are refused by
//! `Bus::connect` with the address named. A destination the kernel refuses per datagram (a
//! non-loopback address from a loopback-bound socket: `EINVAL`; no route; a firewall) costs
//! only its own datagrams, counted in `send_errors`; the healthy session keeps delivering.

mod common;

use std::time::{Duration, Instant};

#[test]
fn a_bad_destination_costs_only_its_own_datagrams() {
    // Bound whole: the pair owns the buses' data dirs.
    let common::MeshPair {
        a,
        b,
        mut inbox_b,
        mut to_b,
        _dirs,
    } = common::mesh_pair();

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
    let after = common::recv_one(&mut inbox_b, Duration::from_secs(5));
    assert_eq!(after, 1, "the healthy session still delivers");
    drop((far, to_b));
    a.shutdown(Duration::from_secs(5));
    b.shutdown(Duration::from_secs(5));
}
