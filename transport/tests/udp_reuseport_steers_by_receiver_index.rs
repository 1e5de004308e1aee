//! `bind_group` steers each datagram to the socket named by payload byte 4 (the low byte of
//! the receiver index), and still delivers datagrams that name no socket.

use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use net_transport::pool::PacketPool;
use net_transport::udp::{BATCH_DATAGRAMS_MAX, RecvBatch, ShardSocket, bind_group};

/// Distinct source ports, so that the kernel's flow hash alone would spread the datagrams.
const SENDERS: usize = 4;
const PER_SHARD_PER_SENDER: usize = 8;

/// Receives from every socket until `want` datagrams arrived in total; returns each socket's
/// payloads. Fails after 10 s.
fn receive(sockets: &[ShardSocket], want: usize) -> Vec<Vec<Vec<u8>>> {
    let mut pool = PacketPool::new(2 * BATCH_DATAGRAMS_MAX, 256);
    let mut batch = RecvBatch::new();
    let mut got = vec![Vec::new(); sockets.len()];
    let mut total = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while total < want {
        let mut moved = 0;
        for (i, socket) in sockets.iter().enumerate() {
            let n = socket
                .recv_batch(&mut batch, &mut pool, |bytes, _, truncated| {
                    assert!(!truncated);
                    got[i].push(bytes.to_vec());
                })
                .expect("recv_batch");
            assert!(n <= BATCH_DATAGRAMS_MAX);
            moved += n;
        }
        total += moved;
        if moved == 0 {
            assert!(
                Instant::now() < deadline,
                "only {total} of {want} datagrams arrived"
            );
            thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(total, want, "more datagrams than sent");
    assert_eq!(
        pool.available(),
        pool.capacity(),
        "recv_batch returned every buffer"
    );
    got
}

fn senders(addr: SocketAddr) -> Vec<UdpSocket> {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => "127.0.0.1:0".parse().expect("literal"),
        SocketAddr::V6(_) => "[::1]:0".parse().expect("literal"),
    };
    (0..SENDERS)
        .map(|_| UdpSocket::bind(local).expect("bind sender"))
        .collect()
}

/// Sends datagrams naming every shard from every sender and checks each socket got exactly
/// the ones naming it.
fn check_steering(addr: SocketAddr, n: usize) {
    let sockets = bind_group(addr, n, 1 << 20).expect("bind_group");
    let to = sockets[0].local_addr();
    for s in &sockets {
        assert_eq!(s.local_addr(), to, "one group, one address");
    }
    for (sender_index, sender) in senders(to).iter().enumerate() {
        for shard in 0..n {
            for seq in 0..PER_SHARD_PER_SENDER {
                let shard = u8::try_from(shard).expect("small group");
                let id = u8::try_from(sender_index * 16 + seq).expect("small");
                // type, 3 reserved bytes, receiver index (LE u32), then a marker.
                let datagram = [1, 0, 0, 0, shard, 0x5a, 0x5a, 0x5a, id];
                sender.send_to(&datagram, to).expect("send_to");
            }
        }
    }
    let got = receive(&sockets, SENDERS * n * PER_SHARD_PER_SENDER);
    for (shard, datagrams) in got.iter().enumerate() {
        assert_eq!(
            datagrams.len(),
            SENDERS * PER_SHARD_PER_SENDER,
            "socket {shard}"
        );
        for d in datagrams {
            assert_eq!(
                usize::from(d[4]),
                shard,
                "datagram {d:?} reached socket {shard}"
            );
        }
    }
}

#[test]
fn group_of_two_steers_by_byte_four() {
    check_steering("127.0.0.1:0".parse().expect("literal"), 2);
}

#[test]
fn group_of_four_steers_by_byte_four() {
    check_steering("127.0.0.1:0".parse().expect("literal"), 4);
}

#[test]
fn ipv6_group_steers_by_byte_four() {
    let addr: SocketAddr = "[::1]:0".parse().expect("literal");
    if let Err(e) = UdpSocket::bind(addr) {
        eprintln!("note: skipping, no IPv6 loopback here: {e}");
        return;
    }
    check_steering(addr, 3);
}

#[test]
fn datagrams_naming_no_socket_or_too_short_still_arrive() {
    let n = 3;
    let sockets = bind_group("127.0.0.1:0".parse().expect("literal"), n, 1 << 20).expect("bind");
    let to = sockets[0].local_addr();
    let mut sent = 0;
    for sender in senders(to) {
        for index in [3u8, 4, 200, 255] {
            sender
                .send_to(&[1, 0, 0, 0, index, 0, 0, 0], to)
                .expect("send_to");
            sent += 1;
        }
        for len in 0..5 {
            sender.send_to(&[0u8; 5][..len], to).expect("send_to");
            sent += 1;
        }
    }
    let got = receive(&sockets, sent);
    assert_eq!(got.iter().map(Vec::len).sum::<usize>(), sent);
}

#[test]
fn a_second_group_cannot_join_the_port() {
    let sockets = bind_group("127.0.0.1:0".parse().expect("literal"), 2, 0).expect("bind");
    let addr = sockets[0].local_addr();
    let e = bind_group(addr, 2, 0).expect_err("the port is taken");
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    assert!(
        e.to_string().contains(&format!("bind({addr})")),
        "error names the address: {e}"
    );
}

#[test]
fn a_group_cannot_take_a_port_held_by_a_plain_socket() {
    let plain = UdpSocket::bind("127.0.0.1:0").expect("bind plain");
    let addr = plain.local_addr().expect("local_addr");
    let e = bind_group(addr, 1, 0).expect_err("the port is taken");
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
}

/// A classic BPF load past the payload's end would return 0 and pile every short datagram
/// onto socket 0; the program checks the length and leaves them to the kernel's flow hash.
/// With 32 flows over 3 sockets, all hashing to socket 0 has probability 3^-32.
#[test]
fn short_datagrams_are_spread_by_the_flow_hash() {
    let sockets = bind_group("127.0.0.1:0".parse().expect("literal"), 3, 1 << 20).expect("bind");
    let to = sockets[0].local_addr();
    let flows = 32;
    for _ in 0..flows {
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
        sender.send_to(&[1, 0, 0, 0], to).expect("send_to");
    }
    let got = receive(&sockets, flows);
    assert!(
        got[0].len() < flows,
        "every short datagram went to socket 0"
    );
}

#[test]
fn group_size_must_be_addressable_by_the_steering_byte() {
    use net_transport::udp::STEER_SHARDS_MAX;
    for n in [0, STEER_SHARDS_MAX + 1] {
        let e = bind_group("127.0.0.1:0".parse().expect("literal"), n, 0).expect_err("bad n");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
    }
}
