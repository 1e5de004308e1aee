//! Starting and stopping a real `netd` process for the daemon's tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The netd binary cargo built for these tests.
pub fn netd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_netd")
}

/// A running netd.
pub struct Netd {
    pub child: Child,
    pub stdout: BufReader<ChildStdout>,
    pub ready: Value,
    pub dir: PathBuf,
    pub config: PathBuf,
}

/// A config document for a netd under `dir` with `shards` shards; `extra` is merged in.
pub fn config(dir: &Path, shards: usize, extra: Value) -> Value {
    let mut c = serde_json::json!({
        "bus": {
            "data_dir": dir.join("data"),
            "shards": shards,
            "pin": false,
            "lane": {"capacity_bytes": 1 << 20},
            "idle": {"strategy": "park", "spin_us": 10, "park_max_us": 2000},
        },
        "socket": {"path": dir.join("netd.sock")},
        "metrics": {"listen": "127.0.0.1:0"},
        "log": {"level": "info", "file": dir.join("netd.log")},
        "shutdown_deadline_ms": 10000,
    });
    // Objects are merged one level deep (`{"socket": {"connections_max": 2}}` keeps the
    // socket's path); anything else replaces.
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            match (c.get_mut(&k), v) {
                (Some(Value::Object(base)), Value::Object(add)) => base.extend(add),
                (_, v) => c[k] = v,
            }
        }
    }
    c
}

impl Netd {
    /// Writes `config` to `<dir>/netd.json` and starts netd on it; waits for its ready line.
    pub fn start(dir: &Path, config: &Value) -> Netd {
        let path = dir.join("netd.json");
        std::fs::write(&path, serde_json::to_string_pretty(config).unwrap()).unwrap();
        let mut child = Command::new(netd_bin())
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env_remove("RUST_LOG")
            .spawn()
            .expect("start netd");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("netd's ready line");
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("netd did not say it was ready ({e}): {line:?}"));
        assert!(ready.get("netd_ready").is_some(), "{ready}");
        Netd {
            child,
            stdout,
            ready,
            dir: dir.to_path_buf(),
            config: path,
        }
    }

    pub fn socket(&self) -> PathBuf {
        PathBuf::from(self.ready["netd_ready"]["socket"].as_str().unwrap())
    }

    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        self.ready["netd_ready"]["metrics"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The metrics endpoint's samples now.
    pub fn metrics(&self) -> Vec<netd::metrics::Sample> {
        let text = netd::metrics::scrape(self.metrics_addr(), Duration::from_secs(5)).unwrap();
        netd::metrics::parse(&text)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0);
    }

    /// SIGTERM, then the exit code and the shutdown report (the last stdout line).
    pub fn terminate(mut self) -> (i32, Value) {
        self.signal(libc::SIGTERM);
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "netd did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut last = String::new();
        let mut line = String::new();
        while self.stdout.read_line(&mut line).unwrap() > 0 {
            if !line.trim().is_empty() {
                last = line.clone();
            }
            line.clear();
        }
        let report: Value = serde_json::from_str(&last)
            .unwrap_or_else(|e| panic!("no shutdown report ({e}): {last:?}"));
        (
            status.code().expect("exited"),
            report["netd_shutdown"].clone(),
        )
    }
}

impl Drop for Netd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every event in the log at `data_dir` (the bus opened after netd stopped): payloads.
pub fn logged_payloads(data_dir: &Path, shards: usize) -> Vec<Vec<u8>> {
    let bus = net_engine::Bus::start(net_engine::Config::for_tests(data_dir, shards)).unwrap();
    let mut cursor = net_engine::Cursor::start();
    let mut out = Vec::new();
    loop {
        let r = bus.poll(&cursor, 10_000).unwrap();
        assert!(r.failed_shards.is_empty());
        if r.events.is_empty() {
            break;
        }
        out.extend(r.events.iter().map(|e| e.payload.to_vec()));
        cursor = r.next;
    }
    let _ = bus.shutdown(Duration::from_secs(5));
    out
}
