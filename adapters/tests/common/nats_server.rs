//! A private nats-server a test can SIGKILL and restart: JetStream on, a free loopback port,
//! its own store directory, and optionally a configuration file (users and permissions). The
//! shared server of `scripts/services.sh` is never killed; tests that kill one start this.
//! Killed (SIGKILL) and its directory removed when dropped.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    port: u16,
    dir: PathBuf,
    config: Option<PathBuf>,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts one, or returns `None` after saying loudly that `test` is skipped (a failure
    /// under CI) when nats-server is not installed.
    pub fn start(test: &str) -> Option<NatsServer> {
        Self::start_with_config(test, None)
    }

    /// Starts one reading `config` (nats-server's configuration syntax) as well.
    pub fn start_with_config(test: &str, config: Option<&str>) -> Option<NatsServer> {
        if !super::have_binary("nats-server", test) {
            return None;
        }
        let dir = std::env::temp_dir().join(super::unique("net-nats-"));
        std::fs::create_dir_all(dir.join("store")).expect("create the server's directory");
        let config = config.map(|text| {
            let path = dir.join("server.conf");
            std::fs::write(&path, text).expect("write the server's configuration");
            path
        });
        // A port another process takes between our probe and the server's bind makes the
        // server exit at once: try a few.
        for _ in 0..5 {
            let mut server = NatsServer {
                port: free_port(),
                dir: dir.clone(),
                config: config.clone(),
                child: None,
            };
            if server.spawn_and_wait() {
                return Some(server);
            }
            // Its Drop would remove the directory the next try uses.
            server.child = None;
            std::mem::forget(server);
        }
        panic!(
            "nats-server did not start (see {})",
            dir.join("nats.log").display()
        );
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// SIGKILL, and wait for it to be gone (its store directory stays).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store directory.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn_and_wait(),
            "nats-server did not restart on port {} (see {})",
            self.port,
            self.dir.join("nats.log").display()
        );
    }

    /// Spawns the server and waits until it greets a connection; `false` if it exited.
    fn spawn_and_wait(&mut self) -> bool {
        let mut command = Command::new("nats-server");
        command
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-js")
            .arg("-sd")
            .arg(self.dir.join("store"))
            .arg("-l")
            .arg(self.dir.join("nats.log"));
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            if greets(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            // The server's side of a failed test.
            if let Ok(log) = std::fs::read_to_string(self.dir.join("nats.log")) {
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- nats-server log (last 40 lines) ----");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

/// Whether a server on `port` accepts a connection and sends its INFO line.
fn greets(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut hello = [0u8; 4];
    stream.read_exact(&mut hello).is_ok() && &hello == b"INFO"
}

// ---- What the JetStream adapter tests share besides a private server. ----

use net_adapters::jetstream::JetStreamConfig;
use net_adapters::{AdapterError, OutBatch, ShardWriter};

/// A configuration for `url` with a stream and a subject prefix of the test's own.
pub fn js_config(url: &str, test: &str) -> JetStreamConfig {
    let name = super::unique(test).replace(['-', '.'], "_");
    let mut config = JetStreamConfig::new(url);
    config.stream = format!("T_{name}");
    config.subject_prefix = format!("t.{name}");
    config.command_timeout_ms = 2000;
    config.connect_timeout_ms = 2000;
    config
}

/// Deletes the test's stream (best effort: a test that deleted it already is fine).
pub async fn delete_stream(config: &JetStreamConfig) {
    if let Ok(client) = connect_plain(config).await {
        let js = async_nats::jetstream::new(client.clone());
        let _ = js.delete_stream(&config.stream).await;
        let _ = client.drain().await;
    }
}

/// A plain client for checks from outside the adapter.
pub async fn connect_plain(config: &JetStreamConfig) -> Result<async_nats::Client, String> {
    let mut options = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(2)));
    if let (Some(u), Some(p)) = (&config.user, &config.password) {
        options = options.user_and_password(u.clone(), p.clone());
    }
    options
        .connect(config.url.as_str())
        .await
        .map_err(|e| e.to_string())
}

/// How many messages the stream holds.
pub async fn stream_messages(config: &JetStreamConfig) -> u64 {
    let client = connect_plain(config)
        .await
        .expect("connect to check the stream");
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js
        .get_stream(&config.stream)
        .await
        .expect("the stream exists");
    let n = stream.info().await.expect("stream info").state.messages;
    let _ = client.drain().await;
    n
}

/// Waits (up to 10 s) until the stream holds `n` messages; returns what it holds then.
pub async fn wait_stream_messages(config: &JetStreamConfig, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = stream_messages(config).await;
        if held == n || Instant::now() > deadline {
            return held;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A batch of `shard` with one event per sequence number, payload `p<seq>`, `ts = seq * 1000`.
pub fn batch(shard: u16, seqs: impl IntoIterator<Item = u64>) -> OutBatch {
    let mut b = OutBatch::new(shard);
    for seq in seqs {
        b.push(seq, seq * 1000, None, format!("p{seq}").as_bytes());
    }
    b
}

/// What a retried write went through.
#[derive(Debug, Default)]
pub struct Retried {
    pub attempts: u32,
    pub transient_errors: Vec<AdapterError>,
}

/// Writes `batch` with the sink driver's retry protocol: on a transient error, back off
/// (capped), ask `last_held`, drop what the backend holds, and write the rest again; a fatal
/// error ends it at once. `on_failure` runs after each failed attempt (a test restarts a
/// server there). Gives up after `max_attempts`.
pub async fn write_with_retry<W: ShardWriter>(
    writer: &mut W,
    batch: &mut OutBatch,
    max_attempts: u32,
    mut on_failure: impl FnMut(u32),
) -> Result<Retried, (AdapterError, Retried)> {
    let mut report = Retried::default();
    let mut backoff = Duration::from_millis(20);
    loop {
        report.attempts += 1;
        let result = writer.write(batch).await;
        let error = match result {
            Ok(()) => return Ok(report),
            Err(e) => e,
        };
        if !error.is_transient() || report.attempts >= max_attempts {
            return Err((error, report));
        }
        report.transient_errors.push(error);
        on_failure(report.attempts);
        // Back off, then find what the backend holds (itself retried while transient).
        loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
            match writer.last_held().await {
                Ok(held) => {
                    // As the sink does: a JetStream stream may hold later events of a
                    // failed batch without earlier ones (the client re-sends what it had
                    // buffered once it reconnects), so the batch is retried whole and
                    // `Nats-Msg-Id` drops what is there.
                    if let (Some(last), true) = (held, writer.holds_a_prefix()) {
                        batch.drop_below(last + 1);
                    }
                    break;
                }
                Err(e) if e.is_transient() && report.attempts < max_attempts => {
                    report.attempts += 1;
                    report.transient_errors.push(e);
                    on_failure(report.attempts);
                }
                Err(e) => return Err((e, report)),
            }
        }
        if batch.is_empty() {
            return Ok(report);
        }
    }
}
