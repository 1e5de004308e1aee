//! When one shard's socket closes (its thread panicked or exited with an error and dropped its
//! `Mesh`), the kernel moves the group's last socket into the freed index, so steering would
//! break for a *surviving* shard: datagrams for shard 2 (of 3) would name an index past the
//! group's end and fall back to the flow hash. The bus therefore holds a duplicate of every
//! member's descriptor for its whole life (`engine/src/bus.rs`, `MeshBus::_group`): a member
//! whose `ShardSocket` is dropped stays in the group, and the indices never shift.

use std::net::UdpSocket;
use std::thread;
use std::time::{Duration, Instant};

use net_transport::pool::PacketPool;
use net_transport::udp::{RecvBatch, bind_group};

#[test]
fn closing_one_shards_socket_keeps_the_others_steered() {
    let mut sockets = bind_group("127.0.0.1:0".parse().unwrap(), 3, 1 << 20).unwrap();
    let addr = sockets[0].local_addr();
    // What the bus holds for the group's life.
    let _group: Vec<std::os::fd::OwnedFd> = sockets
        .iter()
        .map(|s| std::os::fd::AsFd::as_fd(s).try_clone_to_owned().unwrap())
        .collect();
    // Shard 0 dies: its socket is dropped.
    drop(sockets.remove(0));
    let (shard1, shard2) = (&sockets[0], &sockets[1]);
    // 16 peers (source ports) send one datagram each to shard 2's sessions.
    let senders: Vec<UdpSocket> = (0..16)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for s in &senders {
        s.send_to(&[1, 3, 0, 0, 2, 0, 0, 0, 9, 9, 9, 9], addr)
            .unwrap();
    }
    let mut pool = PacketPool::new(128, 256);
    let mut batch = RecvBatch::new();
    let (mut at1, mut at2) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while at1 + at2 < 16 && Instant::now() < deadline {
        at1 += shard1
            .recv_batch(&mut batch, &mut pool, |_, _, _| {})
            .unwrap();
        at2 += shard2
            .recv_batch(&mut batch, &mut pool, |_, _, _| {})
            .unwrap();
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        (at1, at2),
        (0, 16),
        "datagrams for shard 2 reached shard 1's socket after shard 0's socket closed"
    );
}
