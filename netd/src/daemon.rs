//! Running netd: start everything the configuration names, serve until SIGTERM or SIGINT,
//! then shut down in order within the deadline and report.
//!
//! Exit codes (also in the README):
//! - `0` clean: everything accepted was persisted and every component ended cleanly;
//! - `2` the command line was wrong;
//! - `3` the configuration was refused (the field is named);
//! - `4` startup failed (data dir in use, socket in use, metrics address taken, ...);
//! - `5` lossy: events the bus had accepted were dropped at shutdown (the deadline passed, a
//!   shard failed or died);
//! - `6` degraded: nothing accepted was lost, but a shard, sink or fold failed during the run,
//!   or a socket connection was still busy at the deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use net_adapters::jetstream::JetStreamSink;
use net_adapters::redis::RedisSink;
use net_adapters::{Sink, SinkStats, SinkStatus};
use net_cortex::memories::Memories;
use net_cortex::watermark::WatermarkFold;
use net_cortex::{Cortex, CortexShutdown, FoldStats, FoldStatus};
use net_engine::Bus;
use serde_json::json;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::config::{Checked, CheckedSink, CheckedSubscription, FoldKind};
use crate::frame::Limits;
use crate::logging::LogHandle;
use crate::metrics::{Endpoint, Sources};
use crate::server::{Server, ServerConfig};

/// Clean exit.
pub const EXIT_OK: u8 = 0;
/// Bad command line.
pub const EXIT_USAGE: u8 = 2;
/// Configuration refused.
pub const EXIT_CONFIG: u8 = 3;
/// Startup failed.
pub const EXIT_STARTUP: u8 = 4;
/// Accepted events were lost at shutdown.
pub const EXIT_LOSSY: u8 = 5;
/// Nothing lost, but something failed during the run.
pub const EXIT_DEGRADED: u8 = 6;

/// A running fold of one of the built-in kinds.
enum FoldRun {
    Memories(Cortex<Memories>),
    Watermarks(Cortex<WatermarkFold>),
}

impl FoldRun {
    fn stats(&self) -> FoldStats {
        match self {
            FoldRun::Memories(c) => c.stats(),
            FoldRun::Watermarks(c) => c.stats(),
        }
    }

    fn shutdown(self, timeout: Duration) -> CortexShutdown {
        match self {
            FoldRun::Memories(c) => c.shutdown(timeout),
            FoldRun::Watermarks(c) => c.shutdown(timeout),
        }
    }
}

/// Sinks and folds: owned by the daemon's thread, read by the metrics thread.
#[derive(Default)]
struct Components {
    sinks: Vec<Sink>,
    folds: Vec<FoldRun>,
}

/// Runs netd until a signal stops it; returns the exit code.
pub fn run(checked: Checked, log: &LogHandle) -> u8 {
    let started = Instant::now();
    // Signals first: a SIGTERM during startup is not lost, it ends the run right after.
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return EXIT_STARTUP;
        }
    };
    let bus = match Bus::start(checked.bus.clone()) {
        Ok(b) => Arc::new(b),
        Err(e) => {
            tracing::error!(error = %e, "the bus did not start");
            eprintln!("netd: the bus did not start: {e}");
            return EXIT_STARTUP;
        }
    };
    let components = Arc::new(Mutex::new(Components::default()));
    let mut startup = Startup {
        bus: Some(bus.clone()),
        components: components.clone(),
        server: None,
        endpoint: None,
        subscriber: None,
    };
    drop(bus);
    if let Err(what) = startup.start_all(&checked, started) {
        tracing::error!(error = %what, "startup failed");
        eprintln!("netd: {what}");
        let report = startup.shutdown(&checked, "startup failure", started);
        println!("{}", report.json);
        return EXIT_STARTUP;
    }
    let bus = startup.bus.as_ref().expect("started");
    let ready = json!({"netd_ready": {
        "pid": std::process::id(),
        "socket": checked.doc.socket.path,
        "metrics": startup.endpoint.as_ref().map(|e| e.addr().to_string()),
        "mesh": bus.mesh_addr().map(|a| a.to_string()),
        "node_id": bus.mesh_identity().map(|(n, _)| format!("{n:016x}")),
        "shards": bus.shards(),
        "data_dir": checked.bus.data_dir,
        "log": log.path(),
    }});
    tracing::info!(ready = %ready, "netd is ready");
    println!("{ready}");
    let signal = loop {
        let Some(sig) = signals.forever().next() else {
            break "signal stream ended";
        };
        match sig {
            SIGHUP => match log.reopen() {
                Ok(()) => tracing::info!("SIGHUP: log file reopened"),
                Err(e) => eprintln!("netd: SIGHUP: cannot reopen the log file: {e}"),
            },
            SIGINT => break "SIGINT",
            _ => break "SIGTERM",
        }
    };
    tracing::info!(signal, "shutting down");
    let report = startup.shutdown(&checked, signal, started);
    if report.exit == EXIT_OK {
        tracing::info!(report = %report.json, "netd stopped");
    } else {
        tracing::warn!(report = %report.json, "netd stopped");
    }
    println!("{}", report.json);
    report.exit
}

/// What is running, in the order it started; `shutdown` takes it down in reverse.
struct Startup {
    bus: Option<Arc<Bus>>,
    components: Arc<Mutex<Components>>,
    server: Option<Server>,
    endpoint: Option<Endpoint>,
    subscriber: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

/// The shutdown's outcome.
struct Report {
    json: serde_json::Value,
    exit: u8,
}

impl Startup {
    fn start_all(&mut self, checked: &Checked, started: Instant) -> Result<(), String> {
        let bus = self.bus.clone().expect("bus");
        {
            let mut c = self.components.lock().unwrap_or_else(|e| e.into_inner());
            for (kind, config) in &checked.folds {
                let name = config.name.clone();
                let run =
                    match kind {
                        FoldKind::Memories => Cortex::start(&bus, Memories::new(), config.clone())
                            .map(FoldRun::Memories),
                        FoldKind::Watermarks => Cortex::start(&bus, WatermarkFold, config.clone())
                            .map(FoldRun::Watermarks),
                    }
                    .map_err(|e| format!("fold {name:?}: {e}"))?;
                tracing::info!(fold = %name, restore = ?run.stats().shards.iter().map(|s| &s.restore).collect::<Vec<_>>(), "fold started");
                c.folds.push(run);
            }
            for sink in &checked.sinks {
                let started = match sink {
                    CheckedSink::Redis(r, s) => {
                        RedisSink::new(r.clone()).and_then(|b| Sink::start(&bus, b, s.clone()))
                    }
                    CheckedSink::JetStream(j, s) => {
                        JetStreamSink::new(j.clone()).and_then(|b| Sink::start(&bus, b, s.clone()))
                    }
                };
                let (CheckedSink::Redis(_, s) | CheckedSink::JetStream(_, s)) = sink;
                // The sink logs its own start.
                c.sinks
                    .push(started.map_err(|e| format!("sink {:?}: {e}", s.name))?);
            }
        }
        if !checked.subscriptions.is_empty() {
            self.subscriber = Some(subscribe_in_background(
                bus.clone(),
                checked.subscriptions.clone(),
            )?);
        }
        let s = &checked.doc.socket;
        let server = Server::start(
            bus.clone(),
            ServerConfig {
                path: s.path.clone(),
                mode: checked.socket_mode,
                connections_max: s.connections_max,
                limits: Limits {
                    frame_bytes_max: s.frame_bytes_max,
                    payload_bytes_max: checked.bus.payload_bytes_max(),
                    read_events_max: s.read_events_max,
                    read_wait_ms_max: s.read_wait_ms_max,
                },
                ack_timeout: Duration::from_millis(s.ack_timeout_ms),
                frame_timeout: Duration::from_millis(s.frame_timeout_ms),
            },
        )
        .map_err(|e| e.to_string())?;
        let socket_stats = server.stats();
        self.server = Some(server);
        if let Some(m) = &checked.doc.metrics {
            let components = self.components.clone();
            let endpoint = Endpoint::start(
                m.listen,
                Sources {
                    bus,
                    socket: Some(socket_stats),
                    components: Arc::new(move || {
                        let c = components.lock().unwrap_or_else(|e| e.into_inner());
                        (
                            c.sinks.iter().map(Sink::stats).collect(),
                            c.folds.iter().map(FoldRun::stats).collect(),
                        )
                    }),
                    started,
                },
            )?;
            tracing::info!(addr = %endpoint.addr(), "metrics endpoint serving /metrics");
            self.endpoint = Some(endpoint);
        }
        Ok(())
    }

    /// Stops everything in order: the socket (no new events; owed acknowledgements go out),
    /// subscriptions, sinks (they checkpoint; they resume from the log at the next start),
    /// folds (fold the rest, snapshot), the metrics endpoint, and the bus (drains its lanes
    /// within what is left of the deadline).
    fn shutdown(&mut self, checked: &Checked, signal: &str, started: Instant) -> Report {
        let t0 = Instant::now();
        let deadline = Duration::from_millis(checked.doc.shutdown_deadline_ms);
        let left = || deadline.saturating_sub(t0.elapsed());
        let mut degraded = Vec::<String>::new();
        let (mut socket_in, mut unfinished) = (0u64, 0usize);
        if let Some(server) = self.server.take() {
            let stats = server.stats();
            unfinished = server.stop(left() / 2);
            socket_in = stats.events_in.load(Ordering::Relaxed);
            if unfinished > 0 {
                degraded.push(format!(
                    "{unfinished} socket connections were still busy at the deadline"
                ));
            }
        }
        if let Some((stop, t)) = self.subscriber.take() {
            stop.store(true, Ordering::Release);
            let _ = t.join();
        }
        let Components { sinks, folds } =
            std::mem::take(&mut *self.components.lock().unwrap_or_else(|e| e.into_inner()));
        let mut sinks_report = Vec::new();
        for sink in sinks {
            let st: SinkStats = sink.stop(left().min(Duration::from_secs(5)));
            if let SinkStatus::Failed(e) = &st.status {
                degraded.push(format!("sink {:?} failed: {e}", st.name));
            }
            sinks_report.push(json!({
                "name": st.name,
                "backend": st.backend,
                "status": format!("{:?}", st.status),
                "lag": st.shards.iter().map(|s| s.lag).sum::<u64>(),
                "written": st.shards.iter().map(|s| s.written).sum::<u64>(),
            }));
        }
        let mut folds_report = Vec::new();
        for fold in folds {
            let stats = fold.stats();
            for s in &stats.shards {
                if !matches!(s.status, FoldStatus::Running) {
                    degraded.push(format!(
                        "fold {:?} shard {}: {:?}",
                        stats.name, s.shard, s.status
                    ));
                }
            }
            let done = fold.shutdown(left() / 2);
            folds_report.push(json!({
                "name": stats.name,
                "caught_up": done.caught_up,
                "folded_end": done.folded_end,
                "snapshots": done.snapshots.len(),
                "snapshot_errors": done.snapshot_errors,
            }));
        }
        if let Some(e) = self.endpoint.take() {
            e.stop();
        }
        let Some(bus) = self.bus.take() else {
            unreachable!("shutdown runs once")
        };
        let bus = match Arc::try_unwrap(bus) {
            Ok(b) => b,
            Err(_) => {
                // A thread still holds the bus (a socket connection past the deadline).
                // Waiting longer would break the deadline: report what is known. The process
                // exits next; events not yet durable are the lanes' (counted as lossy).
                return Report {
                    json: json!({"netd_shutdown": {
                        "signal": signal,
                        "lossy": true,
                        "why": "socket connections were still running at the deadline; the bus was not drained",
                        "exit_code": EXIT_LOSSY,
                    }}),
                    exit: EXIT_LOSSY,
                };
            }
        };
        let r = bus.shutdown(left());
        for (shard, e) in &r.failed_shards {
            degraded.push(format!("shard {shard} failed: {e}"));
        }
        for (shard, m) in &r.panicked_shards {
            degraded.push(format!("shard {shard} panicked: {m}"));
        }
        let exit = if r.lossy {
            EXIT_LOSSY
        } else if !degraded.is_empty() {
            EXIT_DEGRADED
        } else {
            EXIT_OK
        };
        let t = r.stats.total;
        let json = json!({"netd_shutdown": {
            "signal": signal,
            "lossy": r.lossy,
            "dropped_at_shutdown": r.dropped_at_shutdown,
            "ingested": t.ingested,
            "persisted": t.persisted,
            "dropped": t.dropped,
            "rejected": t.rejected,
            "socket_events_in": socket_in,
            "connections_unfinished": unfinished,
            "shards": r.stats.shards.iter().map(|s| json!({
                "shard": s.shard.0,
                "persisted_end": s.persisted_end,
                "durable_end": s.durable_end,
                "dropped": s.totals.dropped,
            })).collect::<Vec<_>>(),
            "sinks": sinks_report,
            "folds": folds_report,
            "problems": degraded,
            "shutdown_ms": u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
            "uptime_s": started.elapsed().as_secs(),
            "exit_code": exit,
        }});
        Report { json, exit }
    }
}

/// Subscribes to each configured publisher on its own thread, retrying every few seconds
/// until it is accepted (a publisher that is down at start is normal on an appliance).
fn subscribe_in_background(
    bus: Arc<Bus>,
    subs: Vec<CheckedSubscription>,
) -> Result<(Arc<AtomicBool>, JoinHandle<()>), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let t = std::thread::Builder::new()
        .name("netd-subscribe".into())
        .spawn(move || {
            let mut pending: Vec<CheckedSubscription> = subs;
            let mut attempt = 0u32;
            while !pending.is_empty() && !s.load(Ordering::Acquire) {
                pending.retain(|sub| {
                    let spec = &sub.spec;
                    match bus.subscribe(spec.node, sub.key, &sub.token, spec.shards.as_deref()) {
                        Ok(started) => {
                            tracing::info!(node = %spec.node, streams = ?started, "subscribed");
                            false
                        }
                        Err(e) => {
                            if attempt % 10 == 0 {
                                tracing::warn!(node = %spec.node, error = %e, attempt, "subscription not accepted yet; retrying");
                            }
                            true
                        }
                    }
                });
                attempt += 1;
                let until = Instant::now() + Duration::from_secs(2);
                while Instant::now() < until && !s.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })
        .map_err(|e| format!("cannot start the subscription thread: {e}"))?;
    Ok((stop, t))
}
