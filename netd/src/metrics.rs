//! The Prometheus endpoint: `/metrics` in the text exposition format, served by `tiny_http`
//! on its own thread. Shards only publish counters; this thread reads them when scraped.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use net_adapters::{SinkStats, SinkStatus};
use net_cortex::{FoldStats, FoldStatus};
use net_engine::{BUCKETS, Buckets, Bus, DropCause, Stats};

use crate::server::ServerStats;

/// Where the figures come from.
pub struct Sources {
    /// The bus.
    pub bus: Arc<Bus>,
    /// The socket's counters.
    pub socket: Option<Arc<ServerStats>>,
    /// Reads every sink's and fold's figures (they live on the daemon's thread).
    pub components: Arc<dyn Fn() -> (Vec<SinkStats>, Vec<FoldStats>) + Send + Sync>,
    /// When netd started.
    pub started: Instant,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

/// A running endpoint.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// Binds `listen` and serves.
    pub fn start(listen: SocketAddr, sources: Sources) -> Result<Endpoint, String> {
        let server = tiny_http::Server::http(listen)
            .map_err(|e| format!("metrics.listen {listen}: cannot listen: {e}"))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| format!("metrics.listen {listen}: not an IP address"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let sources = Mutex::new(sources);
        let thread = std::thread::Builder::new()
            .name("netd-metrics".into())
            .spawn(move || serve(&server, &sources, &s))
            .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
        Ok(Endpoint {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(server: &tiny_http::Server, sources: &Mutex<Sources>, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let req = match server.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                continue;
            }
        };
        let path = req.url().split('?').next().unwrap_or("");
        let resp = match (req.method(), path) {
            (tiny_http::Method::Get, "/metrics") => {
                let body = render(&sources.lock().unwrap_or_else(|e| e.into_inner()));
                let ct = tiny_http::Header::from_bytes(
                    &b"Content-Type"[..],
                    &b"text/plain; version=0.0.4; charset=utf-8"[..],
                )
                .expect("static header");
                tiny_http::Response::from_string(body).with_header(ct)
            }
            (tiny_http::Method::Get, "/") => {
                tiny_http::Response::from_string("netd: metrics at /metrics\n")
            }
            _ => tiny_http::Response::from_string("not found\n").with_status_code(404),
        };
        let _ = req.respond(resp);
    }
}

/// A metric family being written.
struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A family with one sample per item.
    fn each<T>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        items: &[T],
        mut f: impl FnMut(&T, &mut dyn FnMut(&[(&str, &str)], f64)),
    ) {
        self.family(name, kind, help);
        for item in items {
            f(item, &mut |labels, v| self.sample(name, labels, v));
        }
    }

    /// A histogram from log2 buckets; `scale` turns a bucket bound into the unit's value.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], b: &Buckets, scale: f64) {
        let mut cumulative = 0u64;
        for i in 0..BUCKETS {
            cumulative += b.counts[i];
            let le = match Buckets::upper_bound(i) {
                Some(ub) => format!("{}", ub as f64 * scale),
                None => "+Inf".into(),
            };
            let mut l: Vec<(&str, &str)> = labels.to_vec();
            l.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &l, cumulative);
        }
        self.sample(&format!("{name}_sum"), labels, b.sum as f64 * scale);
        self.sample(&format!("{name}_count"), labels, b.count());
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole exposition.
pub fn render(s: &Sources) -> String {
    let mut o = Out {
        text: String::with_capacity(16 << 10),
    };
    o.family("netd_up", "gauge", "1 while netd runs.");
    o.sample("netd_up", &[], 1);
    o.family(
        "netd_uptime_seconds",
        "gauge",
        "Seconds since netd started.",
    );
    o.sample(
        "netd_uptime_seconds",
        &[],
        s.started.elapsed().as_secs_f64(),
    );
    let stats = s.bus.stats();
    shards(&mut o, &stats);
    mesh(&mut o, &s.bus);
    if let Some(sock) = &s.socket {
        socket(&mut o, sock);
    }
    let (sinks_stats, folds_stats) = (s.components)();
    sinks(&mut o, &sinks_stats);
    folds(&mut o, &folds_stats);
    o.text
}

fn shards(o: &mut Out, stats: &Stats) {
    let sh = &stats.shards;
    let label = |s: &net_engine::ShardStats| s.shard.0.to_string();
    macro_rules! per_shard {
        ($name:literal, $kind:literal, $help:literal, |$s:ident| $value:expr) => {
            o.each($name, $kind, $help, sh, |$s, put| {
                let l = label($s);
                put(&[("shard", &l)], $value as f64)
            })
        };
    }
    per_shard!(
        "net_shard_ingested_total",
        "counter",
        "Events the bus took responsibility for.",
        |s| s.totals.ingested
    );
    per_shard!(
        "net_shard_persisted_total",
        "counter",
        "Events written to the shard's log.",
        |s| s.totals.persisted
    );
    o.family(
        "net_shard_dropped_total",
        "counter",
        "Events dropped, by cause: backpressure (the lane's mode) or shard (log failure, death, shutdown deadline).",
    );
    for s in sh {
        let l = label(s);
        o.sample(
            "net_shard_dropped_total",
            &[("shard", &l), ("cause", "backpressure")],
            s.dropped_backpressure,
        );
        o.sample(
            "net_shard_dropped_total",
            &[("shard", &l), ("cause", "shard")],
            s.dropped_shard,
        );
    }
    per_shard!(
        "net_shard_rejected_total",
        "counter",
        "Sends refused as full (backpressure fail); not ingested.",
        |s| s.totals.rejected
    );
    per_shard!(
        "net_shard_in_flight",
        "gauge",
        "Events in lanes or batches, not yet persisted.",
        |s| s.totals.in_flight
    );
    per_shard!(
        "net_shard_durable_lag_events",
        "gauge",
        "Events written but not yet durable (fdatasync pending) under the fsync policy.",
        |s| s.persisted_end.saturating_sub(s.durable_end)
    );
    per_shard!(
        "net_shard_batches_total",
        "counter",
        "Batches written.",
        |s| s.batches
    );
    per_shard!(
        "net_shard_lane_fill_bytes",
        "gauge",
        "Bytes waiting in the shard's lanes.",
        |s| s.lane_fill_bytes
    );
    per_shard!(
        "net_shard_lane_capacity_bytes",
        "gauge",
        "Capacity of the shard's live lanes.",
        |s| s.lane_capacity_bytes
    );
    per_shard!(
        "net_shard_lane_fill_ratio_max",
        "gauge",
        "The fullest lane's fill, 0 to 1.",
        |s| s.lane_fill_max
    );
    per_shard!("net_shard_lanes", "gauge", "Live lanes.", |s| s.lanes);
    per_shard!(
        "net_shard_failed",
        "gauge",
        "1 if the shard's log failed or its thread died.",
        |s| u8::from(s.failed)
    );
    let histograms: [(&str, &str, f64, PickBuckets); 3] = [
        (
            "net_shard_batch_events",
            "Events per completed batch.",
            1.0,
            |s| &s.batch_events,
        ),
        (
            "net_shard_write_seconds",
            "Batch write latency without an fdatasync, submit to completion.",
            1e-6,
            |s| &s.write_latency_us,
        ),
        (
            "net_shard_sync_seconds",
            "Batch write latency with its fdatasync, and stand-alone syncs.",
            1e-6,
            |s| &s.sync_latency_us,
        ),
    ];
    for (name, help, scale, pick) in histograms {
        o.family(name, "histogram", help);
        for s in sh {
            let l = label(s);
            o.histogram(name, &[("shard", &l)], pick(s), scale);
        }
    }
}

/// Which of a shard's histograms.
type PickBuckets = fn(&net_engine::ShardStats) -> &Buckets;

/// A node id as a metric label.
fn node_label(n: u64) -> String {
    format!("{n:016x}")
}

fn mesh(o: &mut Out, bus: &Bus) {
    let Some(m) = bus.mesh_stats() else { return };
    let peers = &m.peers;
    let node = |p: &net_engine::PeerStats| p.node.map(node_label).unwrap_or_default();
    macro_rules! per_peer {
        ($name:literal, $help:literal, |$t:ident| $value:expr) => {
            o.each($name, "counter", $help, peers, |p, put| {
                let (n, s) = (node(p), p.shard.0.to_string());
                let $t = &p.traffic;
                put(&[("node", &n), ("shard", &s)], $value as f64)
            })
        };
    }
    per_peer!(
        "net_peer_packets_in_total",
        "Datagrams received from the peer.",
        |t| t.packets_in
    );
    per_peer!(
        "net_peer_packets_out_total",
        "Datagrams sent to the peer.",
        |t| t.packets_out
    );
    per_peer!(
        "net_peer_bytes_in_total",
        "Bytes received from the peer.",
        |t| t.bytes_in
    );
    per_peer!("net_peer_bytes_out_total", "Bytes sent to the peer.", |t| t
        .bytes_out);
    per_peer!(
        "net_peer_handshakes_total",
        "Sessions established with the peer (the first and every reconnect).",
        |t| t.handshakes
    );
    per_peer!(
        "net_peer_session_timeouts_total",
        "Sessions with the peer that timed out.",
        |t| t.session_timeouts
    );
    o.family(
        "net_peer_dropped_total",
        "counter",
        "Datagrams from the peer the mesh dropped, by cause (causes never seen are left out).",
    );
    for p in peers {
        let (n, s) = (node(p), p.shard.0.to_string());
        for cause in DropCause::ALL {
            let v = p.traffic.dropped(cause);
            if v > 0 {
                o.sample(
                    "net_peer_dropped_total",
                    &[("node", &n), ("shard", &s), ("cause", cause.name())],
                    v,
                );
            }
        }
    }
    o.family(
        "net_mesh_dropped_total",
        "counter",
        "Datagrams dropped by the mesh, by shard and cause.",
    );
    for s in &m.shards {
        let shard = s.shard.0.to_string();
        for cause in DropCause::ALL {
            o.sample(
                "net_mesh_dropped_total",
                &[("shard", &shard), ("cause", cause.name())],
                s.traffic.dropped(cause),
            );
        }
    }
    let per_stream = |o: &mut Out,
                      (name, kind, help): (&str, &str, &str),
                      list: &[net_engine::StreamStats],
                      value: fn(&net_engine::StreamStats) -> u64| {
        o.each(name, kind, help, list, |st, put| {
            let (n, s) = (node_label(st.node), st.shard.to_string());
            put(&[("node", &n), ("shard", &s)], value(st) as f64)
        });
    };
    per_stream(
        o,
        (
            "net_publication_lag_events",
            "gauge",
            "Events of this node's log a subscriber has not confirmed.",
        ),
        &m.publications,
        |st| st.lag_events,
    );
    per_stream(
        o,
        (
            "net_subscription_next_seq",
            "gauge",
            "The next sequence number a subscription waits for from its publisher.",
        ),
        &m.subscriptions,
        |st| st.next_seq,
    );
    per_stream(
        o,
        (
            "net_subscription_skipped_events_total",
            "counter",
            "Events a publisher reported it no longer had (retention removed them unmirrored).",
        ),
        &m.subscriptions,
        |st| st.skipped_events,
    );
}

fn socket(o: &mut Out, s: &ServerStats) {
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let simple: [(&str, &str, &str, u64); 9] = [
        (
            "net_socket_connections",
            "gauge",
            "Connections open.",
            get(&s.connections_open),
        ),
        (
            "net_socket_connections_total",
            "counter",
            "Connections accepted.",
            get(&s.connections_total),
        ),
        (
            "net_socket_frames_total",
            "counter",
            "Frames read.",
            get(&s.frames),
        ),
        (
            "net_socket_events_in_total",
            "counter",
            "Events ingested through the socket.",
            get(&s.events_in),
        ),
        (
            "net_socket_bytes_in_total",
            "counter",
            "Payload bytes ingested through the socket.",
            get(&s.bytes_in),
        ),
        (
            "net_socket_events_dropped_total",
            "counter",
            "Socket events dropped by the backpressure mode.",
            get(&s.events_dropped),
        ),
        (
            "net_socket_acks_total",
            "counter",
            "ACK frames sent.",
            get(&s.acks),
        ),
        (
            "net_socket_reads_total",
            "counter",
            "READ frames answered.",
            get(&s.reads),
        ),
        (
            "net_socket_events_out_total",
            "counter",
            "Events returned by READ.",
            get(&s.events_out),
        ),
    ];
    for (name, kind, help, v) in simple {
        o.family(name, kind, help);
        o.sample(name, &[], v);
    }
    o.family(
        "net_socket_closed_total",
        "counter",
        "Connections closed by netd, by reason.",
    );
    for (reason, v) in [
        ("malformed", get(&s.closed_malformed)),
        ("too_large", get(&s.closed_too_large)),
        ("bad_cursor", get(&s.closed_bad_cursor)),
        ("timeout", get(&s.closed_timeout)),
        ("slow_frame", get(&s.closed_slow_frame)),
        ("unavailable", get(&s.closed_unavailable)),
        ("busy", get(&s.connections_refused)),
        ("truncated", get(&s.truncated_at_close)),
    ] {
        o.sample("net_socket_closed_total", &[("reason", reason)], v);
    }
}

fn sinks(o: &mut Out, list: &[SinkStats]) {
    o.family(
        "net_sink_up",
        "gauge",
        "1 while the sink runs (0: failed or stopped).",
    );
    for s in list {
        let up = u8::from(matches!(s.status, SinkStatus::Running));
        o.sample(
            "net_sink_up",
            &[("sink", &s.name), ("backend", s.backend)],
            up,
        );
    }
    o.family(
        "net_sink_health_errors_total",
        "counter",
        "Failed health checks of the sink's backend.",
    );
    for s in list {
        o.sample(
            "net_sink_health_errors_total",
            &[("sink", &s.name)],
            s.health_errors,
        );
    }
    let rows: Vec<(&str, &net_adapters::SinkShardStats)> = list
        .iter()
        .flat_map(|s| s.shards.iter().map(move |sh| (s.name.as_str(), sh)))
        .collect();
    macro_rules! per_sink_shard {
        ($name:literal, $kind:literal, $help:literal, |$x:ident| $value:expr) => {
            o.each($name, $kind, $help, &rows, |(sink, $x), put| {
                let s = $x.shard.to_string();
                put(&[("sink", sink), ("shard", &s)], $value as f64)
            })
        };
    }
    per_sink_shard!(
        "net_sink_written_total",
        "counter",
        "Events the backend confirmed.",
        |x| x.written
    );
    per_sink_shard!(
        "net_sink_lag_events",
        "gauge",
        "Events stored on the shard beyond what the backend confirmed.",
        |x| x.lag
    );
    per_sink_shard!(
        "net_sink_retries_total",
        "counter",
        "Writes retried after a transient error (reconnects included).",
        |x| x.retries
    );
    o.family(
        "net_sink_errors_total",
        "counter",
        "Backend errors, by class.",
    );
    for (sink, x) in &rows {
        let s = x.shard.to_string();
        o.sample(
            "net_sink_errors_total",
            &[("sink", sink), ("shard", &s), ("class", "transient")],
            x.transient_errors,
        );
        o.sample(
            "net_sink_errors_total",
            &[("sink", sink), ("shard", &s), ("class", "fatal")],
            x.fatal_errors,
        );
    }
    per_sink_shard!(
        "net_sink_resent_total",
        "counter",
        "Events the backend lost after confirming them, sent again from the log.",
        |x| x.resent
    );
    per_sink_shard!(
        "net_sink_skipped_total",
        "counter",
        "Events retention removed before the sink sent them (retention: skip).",
        |x| x.skipped
    );
}

fn folds(o: &mut Out, list: &[FoldStats]) {
    let rows: Vec<(&str, &net_cortex::FoldShardStats)> = list
        .iter()
        .flat_map(|f| f.shards.iter().map(move |sh| (f.name.as_str(), sh)))
        .collect();
    macro_rules! per_fold_shard {
        ($name:literal, $kind:literal, $help:literal, |$x:ident| $value:expr) => {
            o.each($name, $kind, $help, &rows, |(fold, $x), put| {
                let s = $x.shard.to_string();
                put(&[("fold", fold), ("shard", &s)], $value as f64)
            })
        };
    }
    per_fold_shard!(
        "net_fold_up",
        "gauge",
        "1 while the fold runs (0: stopped at an error, panicked, closed).",
        |x| u8::from(matches!(x.status, FoldStatus::Running))
    );
    per_fold_shard!(
        "net_fold_applied_total",
        "counter",
        "Events applied.",
        |x| x.applied
    );
    per_fold_shard!(
        "net_fold_skipped_total",
        "counter",
        "Events skipped under on_error: skip.",
        |x| x.skipped
    );
    per_fold_shard!(
        "net_fold_lag_events",
        "gauge",
        "Events in the log not folded yet.",
        |x| x.lag
    );
    per_fold_shard!(
        "net_fold_apply_seconds_total",
        "counter",
        "Time spent applying events.",
        |x| x.apply_ns as f64 / 1e9
    );
    per_fold_shard!(
        "net_fold_snapshots_total",
        "counter",
        "Snapshots written.",
        |x| x.snapshots_written
    );
    per_fold_shard!(
        "net_fold_errors",
        "gauge",
        "1 if the last snapshot write or log read failed.",
        |x| u8::from(x.snapshot_error.is_some() || x.log_error.is_some())
    );
}

/// Reads `/metrics` from `addr` (for `netd stats`).
pub fn scrape(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to the metrics endpoint {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(timeout));
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{addr}: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("{addr}: {e}"))?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: not an HTTP response"))?;
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1).is_none_or(|c| c != "200") {
        return Err(format!(
            "{addr}: {}",
            head.lines().next().unwrap_or("no status")
        ));
    }
    Ok(body.to_string())
}

/// One sample of an exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric's name.
    pub name: String,
    /// Its labels as written (`shard="0",cause="shard"`), without braces.
    pub labels: String,
    /// Its value.
    pub value: f64,
}

/// Parses the samples of an exposition (comments skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            Some(Sample {
                name: name.to_string(),
                labels: labels.to_string(),
                value,
            })
        })
        .collect()
}

/// The value of `name` with exactly `labels`, if present.
pub fn value(samples: &[Sample], name: &str, labels: &str) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && s.labels == labels)
        .map(|s| s.value)
}

/// `netd stats`: the exposition as a table, histograms summarised by their count.
pub fn table(text: &str) -> String {
    let mut out = String::new();
    let rows: Vec<Sample> = parse(text)
        .into_iter()
        .filter(|s| !s.name.ends_with("_bucket"))
        .collect();
    let width = rows
        .iter()
        .map(|s| s.name.len() + s.labels.len() + 2)
        .max()
        .unwrap_or(0);
    for s in rows {
        let series = if s.labels.is_empty() {
            s.name.clone()
        } else {
            format!("{}{{{}}}", s.name, s.labels)
        };
        let v = if s.value.fract() == 0.0 && s.value.abs() < 1e15 {
            format!("{:.0}", s.value)
        } else {
            format!("{:.6}", s.value)
        };
        let _ = writeln!(out, "{series:<width$}  {v:>16}");
    }
    out
}
