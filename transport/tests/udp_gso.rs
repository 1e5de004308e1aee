//! UDP GSO on a shard socket: equal datagrams to one destination go out as few messages and
//! arrive intact, in order and on the socket their steering byte names; a refused GSO
//! message turns GSO off and the same datagrams go out one per message.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use net_transport::pool::PacketPool;
use net_transport::udp::{BATCH_DATAGRAMS_MAX, RecvBatch, SendBatch, ShardSocket, bind_group};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("literal")
}

fn one_socket() -> ShardSocket {
    let mut group = bind_group(loopback(), 1, 4 << 20).expect("bind_group");
    group.pop().expect("one socket")
}

/// Datagram `seq`: `len` bytes, the steering byte (offset 4) `steer`, the sequence number at
/// 8..12 and a pattern that depends on both after it.
fn datagram(seq: u32, steer: u8, len: usize) -> Vec<u8> {
    let seed = seq.to_le_bytes()[0];
    let mut d: Vec<u8> = (0..=u8::MAX)
        .cycle()
        .take(len)
        .map(|i| i.wrapping_mul(31).wrapping_add(seed))
        .collect();
    d[4] = steer;
    d[8..12].copy_from_slice(&seq.to_le_bytes());
    d
}

/// Sends `datagrams` through `batch`, refilling it as it drains; returns the messages the
/// kernel took.
fn send(sender: &ShardSocket, datagrams: &[(Vec<u8>, SocketAddr)]) -> u64 {
    let mut pool = PacketPool::new(BATCH_DATAGRAMS_MAX, 2048);
    let mut batch = SendBatch::new();
    let mut next = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while next < datagrams.len() || !batch.is_empty() {
        while next < datagrams.len() && !batch.is_full() {
            let (bytes, to) = &datagrams[next];
            let buf = pool.alloc().expect("free buffer");
            pool.buf_mut(&buf)[..bytes.len()].copy_from_slice(bytes);
            batch.push(&pool, buf, bytes.len(), *to).expect("room");
            next += 1;
        }
        if sender
            .send_batch(&mut batch, &mut pool)
            .expect("send_batch")
            == 0
        {
            assert!(Instant::now() < deadline, "the socket stayed full");
            thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(pool.available(), pool.capacity(), "every buffer went back");
    batch.messages_sent()
}

/// Receives on every socket until `want` datagrams arrived in all; per socket, in order.
fn receive(sockets: &[ShardSocket], want: usize) -> Vec<Vec<Vec<u8>>> {
    let mut pool = PacketPool::new(BATCH_DATAGRAMS_MAX, 2048);
    let mut batch = RecvBatch::new();
    let mut got = vec![Vec::new(); sockets.len()];
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.iter().map(Vec::len).sum::<usize>() < want {
        let mut any = 0;
        for (s, socket) in sockets.iter().enumerate() {
            any += socket
                .recv_batch(&mut batch, &mut pool, |bytes, _, truncated| {
                    assert!(!truncated);
                    got[s].push(bytes.to_vec());
                })
                .expect("recv_batch");
        }
        if any == 0 {
            assert!(Instant::now() < deadline, "datagrams missing");
            thread::sleep(Duration::from_millis(1));
        }
    }
    got
}

#[test]
fn equal_datagrams_to_one_destination_go_out_in_few_messages_and_arrive_in_order() {
    let sender = one_socket();
    let receiver = one_socket();
    let to = receiver.local_addr();
    // 64 x 1000 bytes fits one GSO message; 200 go in batches of 64, 64, 64, 8.
    let datagrams: Vec<(Vec<u8>, SocketAddr)> =
        (0..200).map(|seq| (datagram(seq, 0, 1000), to)).collect();
    let messages = send(&sender, &datagrams);
    if sender.gso() {
        assert!(messages <= 4, "{messages} messages for 200 datagrams");
    } else {
        eprintln!("note: no UDP GSO on this kernel; {messages} messages");
        assert_eq!(messages, 200);
    }
    let got = receive(std::slice::from_ref(&receiver), 200);
    assert_eq!(got[0].len(), 200, "nothing duplicated");
    for (seq, bytes) in got[0].iter().enumerate() {
        assert_eq!(
            *bytes, datagrams[seq].0,
            "datagram {seq} intact and in order"
        );
    }
}

#[test]
fn a_run_keeps_its_short_last_segment_and_mixed_destinations_each_get_theirs() {
    let sender = one_socket();
    let receivers = [one_socket(), one_socket()];
    let (a, b) = (receivers[0].local_addr(), receivers[1].local_addr());
    let layout: [(usize, usize, SocketAddr); 6] = [
        (10, 1200, a),
        (1, 700, a), // short last segment of the run before
        (5, 300, b),
        (3, 1200, a),
        (2, 20, b),
        (1, 12, b),
    ];
    let mut datagrams = Vec::new();
    let mut seq = 0u32;
    for (count, len, to) in layout {
        for _ in 0..count {
            datagrams.push((datagram(seq, 0, len), to));
            seq += 1;
        }
    }
    let messages = send(&sender, &datagrams);
    if sender.gso() {
        // [11 to a] [5 to b] [3 to a] [3 to b: 20, 20, 12]
        assert_eq!(messages, 4);
    }
    let got = receive(&receivers, datagrams.len());
    for (r, to) in [a, b].into_iter().enumerate() {
        let want: Vec<&Vec<u8>> = datagrams
            .iter()
            .filter(|(_, t)| *t == to)
            .map(|(d, _)| d)
            .collect();
        let got: Vec<&Vec<u8>> = got[r].iter().collect();
        assert_eq!(got, want, "receiver {r}: every datagram intact, in order");
    }
}

/// On loopback a GSO message reaches the receiving host whole and the reuseport program
/// picks one socket for it: a run must not mix steering bytes.
#[test]
fn gso_runs_respect_reuseport_steering() {
    let sender = one_socket();
    let group = bind_group(loopback(), 2, 4 << 20).expect("bind_group");
    let to = group[0].local_addr();
    let steering = [0u8, 0, 0, 1, 1, 0, 1, 1, 1, 1, 0, 0];
    let datagrams: Vec<(Vec<u8>, SocketAddr)> = steering
        .iter()
        .cycle()
        .take(120)
        .zip(0u32..)
        .map(|(&s, seq)| (datagram(seq, s, 1232), to))
        .collect();
    send(&sender, &datagrams);
    let got = receive(&group, datagrams.len());
    for (s, got) in got.iter().enumerate() {
        let want: Vec<&Vec<u8>> = datagrams
            .iter()
            .map(|(d, _)| d)
            .filter(|d| usize::from(d[4]) == s)
            .collect();
        let got: Vec<&Vec<u8>> = got.iter().collect();
        assert_eq!(got, want, "socket {s} got exactly its datagrams, in order");
    }
}

/// `SO_NO_CHECK` makes the kernel refuse every GSO message with `EINVAL`: the send turns
/// GSO off and sends the same datagrams one per message, losing none.
#[test]
fn a_refused_gso_message_turns_gso_off_and_the_datagrams_still_go() {
    let sender = one_socket();
    if !sender.gso() {
        eprintln!("note: no UDP GSO on this kernel");
        return;
    }
    let one: libc::c_int = 1;
    // SAFETY: the kernel reads one c_int from `one`, live for the call, on a socket we own.
    let r = unsafe {
        libc::setsockopt(
            sender.fd(),
            libc::SOL_SOCKET,
            libc::SO_NO_CHECK,
            (&raw const one).cast(),
            libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("fits"),
        )
    };
    assert_eq!(r, 0, "setsockopt(SO_NO_CHECK)");
    let receiver = one_socket();
    let to = receiver.local_addr();
    let datagrams: Vec<(Vec<u8>, SocketAddr)> =
        (0..40).map(|seq| (datagram(seq, 0, 500), to)).collect();
    let messages = send(&sender, &datagrams);
    assert!(!sender.gso(), "GSO turned off after the refusal");
    assert_eq!(messages, 40, "one message per datagram after the fallback");
    let got = receive(std::slice::from_ref(&receiver), 40);
    for (seq, bytes) in got[0].iter().enumerate() {
        assert_eq!(
            *bytes, datagrams[seq].0,
            "datagram {seq} intact and in order"
        );
    }
    assert!(
        !sender.set_gso(false) && sender.set_gso(true),
        "can be turned back on"
    );
}

/// A GSO send to a socket with `UDP_GRO` arrives coalesced (the kernel does not split it);
/// `recv_batch` hands back every datagram, intact and in order, and more than one batch's
/// worth from one call.
#[test]
fn coalesced_receives_are_split_back_into_the_datagrams_sent() {
    let sender = one_socket();
    let receiver = one_socket();
    if !receiver.gro() {
        eprintln!("SKIPPED: this kernel has no UDP_GRO");
        return;
    }
    let to = receiver.local_addr();
    let sent: Vec<(Vec<u8>, SocketAddr)> =
        (0..300u32).map(|i| (datagram(i, 0, 1000), to)).collect();
    send(&sender, &sent);
    let mut pool = PacketPool::new(BATCH_DATAGRAMS_MAX, 2048);
    let mut batch = RecvBatch::new();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < sent.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} arrived",
            got.len(),
            sent.len()
        );
        let n = receiver
            .recv_batch(&mut batch, &mut pool, |b, _, truncated| {
                assert!(!truncated);
                got.push(b.to_vec());
            })
            .expect("recv_batch");
        most = most.max(n);
    }
    assert_eq!(got, sent.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>());
    assert!(
        most > BATCH_DATAGRAMS_MAX,
        "coalesced: {most} datagrams in one call"
    );
    // A datagram longer than the pool's buffers is cut and flagged, as without GRO.
    send(&sender, &[(datagram(9, 0, 1500), to)]);
    let mut flagged = None;
    while flagged.is_none() {
        assert!(Instant::now() < deadline);
        receiver
            .recv_batch(&mut batch, &mut PacketPool::new(4, 1200), |b, _, t| {
                flagged = Some((b.len(), t))
            })
            .expect("recv_batch");
    }
    assert_eq!(flagged, Some((1200, true)));
}
