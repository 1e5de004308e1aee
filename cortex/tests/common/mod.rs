//! Helpers shared by the cortex's integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use net_cortex::{CortexConfig, DecodeError, FoldError, FoldEvent, FoldState, SnapshotConfig};
use net_engine::{Bus, Config};

/// Long enough for anything a test waits for on a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(30);

/// A small, unpinned bus configuration for tests.
pub fn bus_config(dir: &Path, shards: usize) -> Config {
    Config::for_tests(dir, shards)
}

pub fn start_bus(dir: &Path, shards: usize) -> Bus {
    Bus::start(bus_config(&dir.join("bus"), shards)).expect("bus starts")
}

/// A cortex config with snapshots in `dir/snapshots` (no cadence).
pub fn with_snapshots(name: &str, dir: &Path) -> CortexConfig {
    let mut c = CortexConfig::new(name);
    c.snapshot = Some(SnapshotConfig {
        every_events: 0,
        ..SnapshotConfig::in_dir(dir.join("snapshots"))
    });
    c
}

pub fn shut(bus: Bus) {
    let report = bus.shutdown(WAIT);
    assert!(!report.lossy, "{report:?}");
}

/// A state listing every payload it folded with its seq: what a fold saw, exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen(pub Vec<(u64, Vec<u8>)>);

impl FoldState for Seen {
    fn encode(&self, out: &mut Vec<u8>) {
        net_cortex::put_u64(out, self.0.len() as u64);
        for (seq, p) in &self.0 {
            net_cortex::put_u64(out, *seq);
            net_cortex::put_bytes(out, p);
        }
    }
    fn decode(bytes: &[u8]) -> Result<Seen, DecodeError> {
        let mut r = net_cortex::ByteReader::new(bytes);
        let n = r.count("entries", 16)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let seq = r.u64("seq")?;
            v.push((seq, r.bytes("payload")?.to_vec()));
        }
        r.finish()?;
        Ok(Seen(v))
    }
}

/// Records every event; refuses payloads starting with `bad`.
pub fn record(state: &mut Seen, e: &FoldEvent<'_>) -> Result<(), FoldError> {
    if e.payload.starts_with(b"bad") {
        return Err(FoldError::new(format!("event {} is bad", e.id)));
    }
    state.0.push((e.seq(), e.payload.to_vec()));
    Ok(())
}
