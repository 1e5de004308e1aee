//! Two buses in one process talk over the mesh on loopback: connect, messages both ways,
//! answers on the responder's session, stats per shard and per peer, config refusals.

mod common;

use std::time::{Duration, Instant};

use net_engine::{Bus, DropCause, Error, MeshMessage, PeerSendError};

fn recv_n(inbox: &mut net_engine::Inbox, n: usize) -> Vec<(u64, u16, Vec<u8>)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < n && Instant::now() < deadline {
        inbox.recv_wait(
            n - got.len(),
            Duration::from_millis(100),
            |m: MeshMessage<'_>| got.push((m.from, m.shard.0, m.payload.to_vec())),
        );
    }
    got
}

#[test]
fn two_buses_exchange_messages_both_ways() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Bus::start(common::mesh_config(da.path(), 2)).unwrap();
    let b = Bus::start(common::mesh_config(db.path(), 2)).unwrap();
    let (a_node, _) = a.mesh_identity().unwrap();
    let (b_node, b_key) = b.mesh_identity().unwrap();
    let mut inbox_a = a.mesh_inbox().unwrap();
    let mut inbox_b = b.mesh_inbox().unwrap();
    assert!(matches!(b.mesh_inbox(), Err(Error::Mesh { .. })));

    let mut to_b = a.connect(b.mesh_addr().unwrap(), b_key).unwrap();
    for i in 0..1000u32 {
        to_b.send_timeout(&i.to_le_bytes(), Duration::from_secs(10))
            .unwrap();
    }
    let got = recv_n(&mut inbox_b, 1000);
    assert_eq!(got.len(), 1000);
    assert!(got.iter().all(|(from, _, _)| *from == a_node));
    let mut seen: Vec<u32> = got
        .iter()
        .map(|(_, _, p)| u32::from_le_bytes(p[..4].try_into().unwrap()))
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    assert_eq!(to_b.node_id(), Some(b_node));

    // b answers on the session a opened.
    let shard = got[0].1;
    let mut to_a = b.peer(net_engine::ShardId(shard), a_node).unwrap();
    to_a.send(b"pong").unwrap();
    let back = recv_n(&mut inbox_a, 1);
    assert_eq!(back, vec![(b_node, to_b.shard().0, b"pong".to_vec())]);

    // Stats: one handshake each side, the messages counted per peer, no drops.
    let sa = a.mesh_stats().unwrap();
    let sb = b.mesh_stats().unwrap();
    assert_eq!(sa.total.handshakes, 1);
    assert_eq!(sb.total.handshakes, 1);
    assert_eq!(sb.total.messages_in, 1000);
    assert_eq!(sa.total.messages_out, 1000);
    assert_eq!(sb.total.dropped_total(), 0, "{:?}", sb.total);
    let p = to_b.stats();
    assert_eq!(p.traffic.messages_out, 1000);
    assert_eq!(p.node, Some(b_node));
    assert!(
        sb.peers
            .iter()
            .any(|p| p.node == Some(a_node) && p.traffic.messages_in == 1000)
    );
    assert_eq!(sb.total.dropped(DropCause::Replay), 0);

    let big = vec![0u8; to_b.message_bytes_max() + 1];
    assert!(matches!(
        to_b.send(&big),
        Err(PeerSendError::TooLarge { .. })
    ));
    drop((to_a, to_b));
    assert!(!a.shutdown(Duration::from_secs(5)).lossy);
    assert!(!b.shutdown(Duration::from_secs(5)).lossy);
}

#[test]
fn a_peer_that_never_answers_gives_up_and_counts_what_was_queued() {
    let d = tempfile::tempdir().unwrap();
    let mut c = common::mesh_config(d.path(), 1);
    c.mesh.as_mut().unwrap().handshake_timeout_ms = 300;
    let a = Bus::start(c).unwrap();
    // A socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let key = net_engine::Identity::generate().public_key();
    let mut p = a.connect(silent.local_addr().unwrap(), key).unwrap();
    for i in 0..10u32 {
        p.send(&i.to_le_bytes()).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.stats().unsent_dropped < 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = p.stats();
    assert_eq!(s.unsent_dropped, 10);
    assert!(s.traffic.handshake_timeouts >= 1);
    assert!(
        s.traffic.initiations >= 2,
        "retried before giving up: {s:?}"
    );
    drop(p);
    a.shutdown(Duration::from_secs(5));
}

#[test]
fn mesh_config_zeros_and_conflicts_are_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    for (field, edit) in [
        (
            "mesh.heartbeat_ms",
            Box::new(|m: &mut net_engine::MeshConfig| m.heartbeat_ms = 0)
                as Box<dyn Fn(&mut net_engine::MeshConfig)>,
        ),
        (
            "mesh.session_timeout_ms",
            Box::new(|m| m.session_timeout_ms = 0),
        ),
        ("mesh.rekey_after_ms", Box::new(|m| m.rekey_after_ms = 0)),
        (
            "mesh.handshake_retry_ms",
            Box::new(|m| m.handshake_retry_ms = 0),
        ),
        (
            "mesh.handshake_timeout_ms",
            Box::new(|m| m.handshake_timeout_ms = 0),
        ),
        (
            "mesh.handshakes_per_sec",
            Box::new(|m| m.handshakes_per_sec = 0),
        ),
        (
            "mesh.session_timeout_ms",
            Box::new(|m| m.session_timeout_ms = m.heartbeat_ms),
        ),
        (
            "mesh.handshake_retry_max_ms",
            Box::new(|m| m.handshake_retry_max_ms = 60_000),
        ),
        ("mesh.psk", Box::new(|m| m.psk = None)),
        ("mesh.psk", Box::new(|m| m.psk = Some("beef".into()))),
        ("mesh.inbox_bytes", Box::new(|m| m.inbox_bytes = 3 << 20)),
        (
            "mesh.allow_key_rotation",
            Box::new(|m| m.allow_key_rotation = vec!["xyz".into()]),
        ),
    ] {
        let mut c = common::mesh_config(d.path(), 1);
        edit(c.mesh.as_mut().unwrap());
        match Bus::start(c) {
            Err(Error::Config { field: f, what }) => assert_eq!(f, field, "{what}"),
            other => panic!("{field}: {other:?}"),
        }
    }
    // From JSON too: zero and unknown fields.
    let json = format!(
        r#"{{"data_dir": "{}", "mesh": {{"listen": "127.0.0.1:0", "psk": "{}", "heartbeat_ms": 0}}}}"#,
        d.path().display(),
        common::MESH_PSK
    );
    match net_engine::Config::from_json(&json) {
        Err(Error::Config { field, .. }) => assert_eq!(field, "mesh.heartbeat_ms"),
        other => panic!("{other:?}"),
    }
    let json = r#"{"mesh": {"listen": "127.0.0.1:0", "psk": "00", "heartbeet_ms": 5}}"#;
    match net_engine::Config::from_json(json) {
        Err(Error::Config { field, .. }) => assert!(field.starts_with("mesh"), "{field}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_bus_without_a_mesh_says_so() {
    let d = tempfile::tempdir().unwrap();
    let a = Bus::start(common::config(d.path(), 1)).unwrap();
    assert!(a.mesh_addr().is_none());
    match a.connect("127.0.0.1:9".parse().unwrap(), [1; 32]) {
        Err(Error::Mesh { what }) => assert!(what.contains("no mesh"), "{what}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_handle_with_a_deep_backlog_does_not_starve_another_on_the_same_shard() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Bus::start(common::mesh_config(da.path(), 1)).unwrap();
    let b = Bus::start(common::mesh_config(db.path(), 1)).unwrap();
    let (_, key) = b.mesh_identity().unwrap();
    let addr = b.mesh_addr().unwrap();
    let mut inbox = b.mesh_inbox().unwrap();
    let mut bulk = a.connect(addr, key).unwrap();
    let mut urgent = a.connect(addr, key).unwrap();
    // Establish the session first.
    urgent.send(b"hello").unwrap();
    assert_eq!(recv_n(&mut inbox, 1).len(), 1);
    for i in 0..5000u32 {
        let mut m = [0u8; 100];
        m[..4].copy_from_slice(&i.to_le_bytes());
        bulk.send_timeout(&m, Duration::from_secs(10)).unwrap();
    }
    urgent.send(b"urgent").unwrap();
    let got = recv_n(&mut inbox, 5001);
    assert_eq!(got.len(), 5001);
    let at = got.iter().position(|(_, _, p)| p == b"urgent").unwrap();
    // Round robin: the urgent message goes out within a turn of being queued, not after the
    // whole backlog.
    assert!(at < 4000, "the urgent message came {at}th of 5001");
}

#[test]
fn handles_refuse_after_shutdown_and_the_stats_stay_readable() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Bus::start(common::mesh_config(da.path(), 1)).unwrap();
    let b = Bus::start(common::mesh_config(db.path(), 1)).unwrap();
    let (_, key) = b.mesh_identity().unwrap();
    let mut inbox = b.mesh_inbox().unwrap();
    let mut p = a.connect(b.mesh_addr().unwrap(), key).unwrap();
    p.send(b"before").unwrap();
    assert_eq!(recv_n(&mut inbox, 1).len(), 1);
    assert!(!a.shutdown(Duration::from_secs(5)).lossy);
    assert_eq!(p.send(b"after"), Err(PeerSendError::Closed));
    // The handle's counters outlive the bus.
    assert_eq!(p.stats().traffic.messages_out, 1);
    drop(p);
    b.shutdown(Duration::from_secs(5));
}

#[test]
fn messages_still_queued_at_shutdown_are_counted_as_dropped() {
    let d = tempfile::tempdir().unwrap();
    let a = Bus::start(common::mesh_config(d.path(), 1)).unwrap();
    // A peer that never answers: everything stays queued behind the handshake.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let key = net_engine::Identity::generate().public_key();
    let mut p = a.connect(silent.local_addr().unwrap(), key).unwrap();
    for i in 0..25u32 {
        p.send(&i.to_le_bytes()).unwrap();
    }
    let report = a.shutdown(Duration::from_secs(5));
    assert!(
        !report.lossy,
        "mesh messages are datagrams, not accepted events"
    );
    assert_eq!(p.stats().unsent_dropped, 25);
}
