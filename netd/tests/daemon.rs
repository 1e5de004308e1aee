//! netd as a process: two client processes publish over the socket, the metrics endpoint
//! counts what they sent, SIGTERM gives a clean report and every acknowledged event is in
//! the log; bad configs are refused naming the field; bad frames close only their connection;
//! SIGHUP reopens the log file; a second netd on the same socket is refused.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Netd, config, logged_payloads, netd_bin};
use netd::client::{Client, ClientError};
use netd::metrics::value;
use serde_json::json;

const EVENTS_PER_CLIENT: usize = 20_000;

fn publish_process(socket: &std::path::Path, prefix: &str) -> std::process::Child {
    let mut child = Command::new(netd_bin())
        .args(["publish", "--batch", "500", "--key", prefix, "--socket"])
        .arg(socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: String = (0..EVENTS_PER_CLIENT)
        .map(|i| format!("{prefix}-{i}\n"))
        .collect();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(lines.as_bytes()).unwrap();
    });
    child
}

#[test]
fn two_client_processes_publish_the_metrics_count_them_and_sigterm_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let netd = Netd::start(dir.path(), &config(dir.path(), 2, json!({})));
    let a = publish_process(&netd.socket(), "a");
    let b = publish_process(&netd.socket(), "b");
    for (name, child) in [("a", a), ("b", b)] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "client {name}: {out:?}");
        let said = String::from_utf8(out.stdout).unwrap();
        assert!(
            said.contains(&format!("durable through event {EVENTS_PER_CLIENT} ")),
            "client {name} said {said:?}"
        );
    }
    // Reading back over the socket, from the beginning.
    let mut c = Client::connect(&netd.socket()).unwrap();
    let (mut cursor, mut read) = (String::new(), 0);
    loop {
        let (events, next) = c.read(&cursor, 5_000, 0).unwrap();
        if events.is_empty() {
            break;
        }
        read += events.len();
        cursor = next;
    }
    assert_eq!(read, 2 * EVENTS_PER_CLIENT);

    let m = netd.metrics();
    let total = 2.0 * EVENTS_PER_CLIENT as f64;
    assert_eq!(value(&m, "net_socket_events_in_total", ""), Some(total));
    assert_eq!(value(&m, "net_socket_events_out_total", ""), Some(total));
    let ingested: f64 = m
        .iter()
        .filter(|s| s.name == "net_shard_ingested_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(ingested, total);
    let persisted: f64 = m
        .iter()
        .filter(|s| s.name == "net_shard_persisted_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(persisted, total);
    assert_eq!(value(&m, "net_socket_acks_total", ""), Some(2.0));
    assert_eq!(value(&m, "net_socket_connections_total", ""), Some(3.0));
    // Histograms are there and count every batch.
    let batches: f64 = m
        .iter()
        .filter(|s| s.name == "net_shard_batches_total")
        .map(|s| s.value)
        .sum();
    let hist: f64 = m
        .iter()
        .filter(|s| s.name == "net_shard_batch_events_count")
        .map(|s| s.value)
        .sum();
    assert!(batches > 0.0);
    assert_eq!(hist, batches);
    let table = netd::metrics::table(
        &netd::metrics::scrape(netd.metrics_addr(), Duration::from_secs(5)).unwrap(),
    );
    assert!(table.contains("net_socket_events_in_total"), "{table}");

    let (code, report) = netd.terminate();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["lossy"], false, "{report}");
    assert_eq!(report["persisted"], 2 * EVENTS_PER_CLIENT, "{report}");
    assert_eq!(report["signal"], "SIGTERM");
    assert!(
        !dir.path().join("netd.sock").exists(),
        "the socket file is removed at stop"
    );

    let logged: Vec<Vec<u8>> = logged_payloads(&dir.path().join("data"), 2);
    assert_eq!(logged.len(), 2 * EVENTS_PER_CLIENT);
    let set: HashSet<&[u8]> = logged.iter().map(|p| p.as_slice()).collect();
    for prefix in ["a", "b"] {
        for i in 0..EVENTS_PER_CLIENT {
            assert!(
                set.contains(format!("{prefix}-{i}").as_bytes()),
                "{prefix}-{i} missing"
            );
        }
    }
    // Each client's events keep their order (one key, one shard, one connection).
    let a_order: Vec<usize> = logged
        .iter()
        .filter_map(|p| {
            std::str::from_utf8(p)
                .ok()?
                .strip_prefix("a-")?
                .parse()
                .ok()
        })
        .collect();
    assert!(a_order.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn bad_configs_are_refused_with_the_field_named_and_exit_code_3() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            json!({"bus": {"data_dir": "/x", "shards": 0}}),
            "bus.shards",
        ),
        (
            json!({"bus": {"data_dir": "/x"}, "socket": {"connections_max": 0}}),
            "socket.connections_max",
        ),
        (
            json!({"bus": {"data_dir": "/x"}, "colour": "blue"}),
            "colour",
        ),
        (
            json!({"bus": {"data_dir": "/x"}, "metrics": {"listen": "10.0.0.1:9464"}}),
            "metrics.listen",
        ),
    ];
    for (doc, field) in cases {
        let path = dir.path().join("bad.json");
        std::fs::write(&path, doc.to_string()).unwrap();
        for flag in ["--check-config", "--config"] {
            let out = Command::new(netd_bin())
                .arg(flag)
                .arg(&path)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(3), "{flag} {doc}: {out:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(&format!("`{field}`")), "{flag} {doc}: {err}");
        }
    }
    let path = dir.path().join("good.json");
    std::fs::write(&path, r#"{"bus": {"data_dir": "/x"}}"#).unwrap();
    let out = Command::new(netd_bin())
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let effective: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(effective["socket"]["connections_max"], 64);
    assert_eq!(effective["bus"]["data_dir"], "/x");
    let out = Command::new(netd_bin()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

fn refused(r: Result<Vec<u8>, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Refused { code, message }) => (code, message),
        other => panic!("expected an ERROR frame, got {other:?}"),
    }
}

#[test]
fn bad_frames_close_only_their_connection_and_ingest_nothing_of_the_frame() {
    let dir = tempfile::tempdir().unwrap();
    let netd = Netd::start(
        dir.path(),
        &config(
            dir.path(),
            1,
            json!({"socket": {"frame_bytes_max": 1 << 20, "connections_max": 8}}),
        ),
    );
    let sock = netd.socket();
    let mut good = Client::connect(&sock).unwrap();
    good.publish([(&b"k"[..], &b"before"[..])], false).unwrap();

    // Oversized length prefix.
    let mut c = Client::connect(&sock).unwrap();
    c.send_raw(&(2u32 << 20).to_le_bytes()).unwrap();
    let (code, msg) = refused(c.next_frame());
    assert_eq!(code, 2, "{msg}");
    assert!(msg.contains("frame_bytes_max"), "{msg}");

    // Garbage kind.
    let mut c = Client::connect(&sock).unwrap();
    c.send_raw(b"\x04\x00\x00\x00\xeeabc").unwrap();
    let (code, msg) = refused(c.next_frame());
    assert_eq!(code, 1);
    assert!(msg.contains("unknown frame kind 0xee"), "{msg}");

    // A PUBLISH whose second event is truncated: its first event is not ingested either.
    let mut frame = Vec::new();
    netd::frame::encode_publish(
        &mut frame,
        true,
        [(&b""[..], &b"whole"[..]), (&b""[..], &b"cut"[..])],
    );
    let cut = frame.len() - 2;
    let body_len = u32::try_from(cut - 4).unwrap();
    frame[..4].copy_from_slice(&body_len.to_le_bytes());
    let mut c = Client::connect(&sock).unwrap();
    c.send_raw(&frame[..cut]).unwrap();
    let (code, msg) = refused(c.next_frame());
    assert_eq!(code, 1);
    assert!(msg.contains("event 1 truncated"), "{msg}");

    // A connection that ends in the middle of a frame.
    let mut c = Client::connect(&sock).unwrap();
    c.send_raw(&[100, 0, 0, 0, 1, 0]).unwrap();
    drop(c);

    // A cursor of another bus.
    let mut c = Client::connect(&sock).unwrap();
    let err = c.read("net1.zz", 10, 0).unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { code: 6, .. }),
        "{err:?}"
    );

    // The good connection is untouched, and only its events are in.
    good.publish([(&b"k"[..], &b"after"[..])], true).unwrap();
    assert_eq!(good.wait_ack().unwrap(), (2, 0));
    let mut r = Client::connect(&sock).unwrap();
    let (events, _) = r.read("", 100, 0).unwrap();
    let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload.as_slice()).collect();
    assert_eq!(payloads, vec![&b"before"[..], &b"after"[..]]);

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = netd.metrics();
        let closed = |reason: &str| {
            value(
                &m,
                "net_socket_closed_total",
                &format!("reason=\"{reason}\""),
            )
            .unwrap()
        };
        if closed("truncated") == 1.0 {
            assert_eq!(closed("malformed"), 2.0);
            assert_eq!(closed("too_large"), 1.0);
            assert_eq!(closed("bad_cursor"), 1.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the truncated connection was not counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(dir.path().join("netd.log")).unwrap();
    assert!(log.contains("unknown frame kind 0xee"), "{log}");
    let (code, report) = netd.terminate();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["persisted"], 2);
}

#[test]
fn too_many_connections_are_told_busy_and_the_rest_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let netd = Netd::start(
        dir.path(),
        &config(dir.path(), 1, json!({"socket": {"connections_max": 2}})),
    );
    let sock = netd.socket();
    let mut a = Client::connect(&sock).unwrap();
    let mut b = Client::connect(&sock).unwrap();
    a.publish([(&b""[..], &b"1"[..])], true).unwrap();
    assert_eq!(a.wait_ack().unwrap(), (1, 0));
    b.publish([(&b""[..], &b"2"[..])], true).unwrap();
    assert_eq!(b.wait_ack().unwrap(), (1, 0));
    let mut c = Client::connect(&sock).unwrap();
    let (code, msg) = refused(c.next_frame());
    assert_eq!(code, 7, "{msg}");
    drop(a);
    // Once a slot is free, a new connection is served.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut d = Client::connect(&sock).unwrap();
        match d.sync() {
            Ok(ack) => {
                assert_eq!(ack, (0, 0));
                break;
            }
            Err(ClientError::Refused { code: 7, .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    }
    let (code, _) = netd.terminate();
    assert_eq!(code, 0);
}

#[test]
fn sighup_reopens_the_log_file_and_a_second_netd_on_the_same_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let netd = Netd::start(dir.path(), &config(dir.path(), 1, json!({})));
    let log = dir.path().join("netd.log");
    let rotated = dir.path().join("netd.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    netd.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains("log file reopened")) {
        assert!(Instant::now() < deadline, "no new log file after SIGHUP");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        std::fs::read_to_string(&rotated)
            .unwrap()
            .contains("netd is ready")
    );

    // Another netd on the same socket (its own data dir): refused at start, exit 4, and the
    // running one keeps serving.
    let other = tempfile::tempdir().unwrap();
    let mut doc = config(other.path(), 1, json!({}));
    doc["socket"]["path"] = json!(netd.socket());
    let path = other.path().join("netd.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    let out = Command::new(netd_bin())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another process listens"),
        "{out:?}"
    );
    let mut c = Client::connect(&netd.socket()).unwrap();
    c.publish([(&b""[..], &b"still here"[..])], true).unwrap();
    assert_eq!(c.wait_ack().unwrap(), (1, 0));
    let (code, report) = netd.terminate();
    assert_eq!(code, 0, "{report}");
}

#[test]
fn the_example_config_under_deploy_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/netd.json");
    let c = netd::config::Checked::from_file(&path).unwrap();
    assert_eq!(
        c.doc.socket.path,
        std::path::Path::new("/run/net/netd.sock")
    );
}

#[test]
fn half_a_frame_cannot_hold_a_connection_slot_but_an_idle_connection_stays() {
    let dir = tempfile::tempdir().unwrap();
    let netd = Netd::start(
        dir.path(),
        &config(
            dir.path(),
            1,
            json!({"socket": {"frame_timeout_ms": 300, "connections_max": 2}}),
        ),
    );
    let sock = netd.socket();
    let mut idle = Client::connect(&sock).unwrap();
    let mut slow = Client::connect(&sock).unwrap();
    // A length prefix of 100 bytes, then 5 of them, then nothing.
    slow.send_raw(&[100, 0, 0, 0, 1, 0, 0, 0, 0]).unwrap();
    let (code, msg) = refused(slow.next_frame());
    assert_eq!(code, 8, "{msg}");
    assert!(msg.contains("frame_timeout_ms"), "{msg}");
    // The idle connection, silent for longer than the frame timeout, still works.
    std::thread::sleep(Duration::from_millis(500));
    idle.publish([(&b""[..], &b"late but fine"[..])], true)
        .unwrap();
    assert_eq!(idle.wait_ack().unwrap(), (1, 0));
    let m = netd.metrics();
    assert_eq!(
        value(&m, "net_socket_closed_total", "reason=\"slow_frame\""),
        Some(1.0)
    );
    let (code, _) = netd.terminate();
    assert_eq!(code, 0);
}

#[test]
fn a_client_that_never_reads_its_replies_does_not_stall_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let netd = Netd::start(
        dir.path(),
        &config(
            dir.path(),
            1,
            // A long frame timeout: the shutdown, not the write timeout, must free the thread.
            json!({"socket": {"frame_timeout_ms": 600000}, "shutdown_deadline_ms": 2000}),
        ),
    );
    let sock = netd.socket();
    let mut writer = Client::connect(&sock).unwrap();
    let payload = vec![7u8; 1000];
    for _ in 0..20 {
        writer
            .publish((0..1000).map(|_| (&b""[..], payload.as_slice())), false)
            .unwrap();
    }
    assert_eq!(writer.sync().unwrap(), (20_000, 0));
    // Ask for the whole log again and again, and never read a byte of the answers: netd's
    // thread for this connection ends up blocked writing.
    let mut hostile = Client::connect(&sock).unwrap();
    let mut frames = Vec::new();
    for _ in 0..64 {
        netd::frame::encode_read(&mut frames, 10_000, 0, "");
    }
    hostile.send_raw(&frames).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let (code, report) = netd.terminate();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["lossy"], false, "{report}");
    assert_eq!(report["persisted"], 20_000, "{report}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    drop(hostile);
}
