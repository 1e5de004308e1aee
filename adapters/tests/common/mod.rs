//! What the adapter tests share: finding the servers `scripts/services.sh` started, and saying
//! loudly when a test is skipped because one is missing (a failure under CI, `CI=true`).
#![allow(dead_code)]

pub mod nats_server;
pub mod redis_server;

use std::collections::HashMap;
use std::path::PathBuf;

/// The servers of `scripts/services.sh`: read from `$NET_SERVICES_DIR/env` (default
/// `/tmp/net-services/env`), overridden by `NET_REDIS_URL` / `NET_NATS_URL` in the environment.
#[derive(Debug, Clone, Default)]
pub struct Services {
    pub redis_url: Option<String>,
    pub nats_url: Option<String>,
}

pub fn services_dir() -> PathBuf {
    std::env::var_os("NET_SERVICES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/net-services"))
}

pub fn services() -> Services {
    let mut vars: HashMap<String, String> = HashMap::new();
    if let Ok(text) = std::fs::read_to_string(services_dir().join("env")) {
        for line in text.lines() {
            let line = line.trim().trim_start_matches("export ");
            if let Some((k, v)) = line.split_once('=') {
                vars.insert(k.to_owned(), v.trim_matches(['"', '\'']).to_owned());
            }
        }
    }
    let get = |k: &str| std::env::var(k).ok().or_else(|| vars.get(k).cloned());
    Services {
        redis_url: get("NET_REDIS_URL"),
        nats_url: get("NET_NATS_URL"),
    }
}

fn skipped(what: &str, test: &str) {
    let msg = format!(
        "SKIPPED {test}: no {what} (run `scripts/services.sh start`; scripts/test.sh does)"
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg} -- under CI the servers must run");
    }
    eprintln!("\n!!!!!!!! {msg}\n");
}

/// The URL of the shared redis-server, or `None` after saying loudly that `test` is skipped.
pub fn redis_url(test: &str) -> Option<String> {
    let url = services().redis_url;
    if url.is_none() {
        skipped("redis-server", test);
    }
    url
}

/// The URL of the shared nats-server (JetStream on), or `None` after saying loudly that
/// `test` is skipped.
pub fn nats_url(test: &str) -> Option<String> {
    let url = services().nats_url;
    if url.is_none() {
        skipped("nats-server", test);
    }
    url
}

/// Whether `binary` is on the PATH; otherwise says loudly that `test` is skipped.
pub fn have_binary(binary: &str, test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(binary).is_file()));
    if !found {
        skipped(binary, test);
    }
    found
}

/// A unique name for a test's streams, so tests sharing one server never see each other's data.
pub fn unique(prefix: &str) -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("{prefix}{}x{ns:x}", std::process::id())
}
