//! netd mirroring a second node over the mesh: the operator asks netd for its identity
//! (`netd identity`), the publisher issues it a token, netd's config subscribes, and the
//! publisher's events arrive in netd's log (read back over netd's socket), exactly once.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Netd, config, netd_bin};
use net_engine::{Bus, Config, MeshConfig};
use netd::client::Client;
use serde_json::json;

const PSK: &str = "6e6574642d746573742d70736b2d303132333435363738396162636465663031";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn netd_subscribes_to_another_node_and_its_events_arrive_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    // The publisher: a bus with the mesh, in this process.
    let mut pc = Config::for_tests(&dir.path().join("publisher"), 2);
    pc.mesh = Some(MeshConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        psk: Some(PSK.into()),
        ..Default::default()
    });
    let publisher = Bus::start(pc).unwrap();
    let (_, pub_key) = publisher.mesh_identity().unwrap();

    // netd's config, with the mesh; its identity first, for the token.
    let nd = dir.path().join("netd");
    std::fs::create_dir_all(&nd).unwrap();
    let token_file = nd.join("token");
    let mut doc = config(
        &nd,
        2,
        json!({"bus": {"mesh": {"listen": "127.0.0.1:0", "psk": PSK}}}),
    );
    let path = nd.join("netd.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    let out = Command::new(netd_bin())
        .args(["identity", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let id: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let node = u64::from_str_radix(id["node_id"].as_str().unwrap(), 16).unwrap();
    let key = netd::config::parse_hex32(id["public_key"].as_str().unwrap()).unwrap();
    let (_, token) = publisher
        .issue_token(node, key, None, Duration::from_secs(600))
        .unwrap();
    std::fs::write(&token_file, &token).unwrap();
    doc["subscriptions"] = json!([{
        "node": publisher.mesh_addr().unwrap(),
        "key": hex(&pub_key),
        "token_file": token_file,
    }]);

    // Events before netd starts, and after.
    let mut p = publisher.producer().unwrap();
    for i in 0..3000u32 {
        p.send_to((i % 2) as usize, format!("early-{i}").as_bytes())
            .unwrap();
    }
    let netd = Netd::start(&nd, &doc);
    assert_eq!(
        netd.ready["netd_ready"]["node_id"].as_str().unwrap(),
        id["node_id"].as_str().unwrap(),
        "netd runs with the identity it printed"
    );
    for i in 0..3000u32 {
        p.send_to((i % 2) as usize, format!("late-{i}").as_bytes())
            .unwrap();
    }
    publisher.flush().unwrap();

    let mut c = Client::connect(&netd.socket()).unwrap();
    let (mut cursor, mut seen) = (String::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 6000 {
        assert!(
            Instant::now() < deadline,
            "only {} of 6000 mirrored events arrived",
            seen.len()
        );
        let (events, next) = c.read(&cursor, 5000, 500).unwrap();
        seen.extend(events.into_iter().map(|e| e.payload));
        cursor = next;
    }
    let set: HashSet<&Vec<u8>> = seen.iter().collect();
    assert_eq!(set.len(), 6000, "no event twice");
    for i in 0..3000 {
        assert!(set.contains(&format!("early-{i}").into_bytes()));
        assert!(set.contains(&format!("late-{i}").into_bytes()));
    }
    let m = netd.metrics();
    let mirrored: f64 = m
        .iter()
        .filter(|s| s.name == "net_subscription_next_seq")
        .map(|s| s.value)
        .sum();
    assert_eq!(mirrored, 6000.0);
    assert!(
        m.iter()
            .any(|s| s.name == "net_peer_handshakes_total" && s.value >= 1.0)
    );
    let (code, report) = netd.terminate();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["persisted"], 6000);
    let _ = publisher.shutdown(Duration::from_secs(5));
}
