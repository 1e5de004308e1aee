//! Starting shard threads: one glommio `LocalExecutor` per shard, pinned to its core, with
//! start-up checks that turn the usual failures into errors a user can act on.
//!
//! glommio stays behind this module: the rest of the engine sees a thread that runs a shard
//! and reports how it started and how it ended.
//!
//! Checks, before any thread starts:
//! - a pinned core must be one this process may run on (`sched_getaffinity`);
//! - the locked-memory limit must cover the executors' io memory unless the process has
//!   `CAP_IPC_LOCK` (root has it); otherwise the error says what to raise.
//!
//! io_uring being unavailable (old kernel, `kernel.io_uring_disabled`, seccomp) surfaces from
//! the executor or the log with a message naming the cause.

use std::sync::mpsc;
use std::thread::JoinHandle;

use glommio::{LocalExecutorBuilder, Placement};

use crate::error::Error;

/// Memory glommio locks per executor besides `io_memory` (its three rings), measured roughly.
const EXECUTOR_LOCKED_OVERHEAD_BYTES: u64 = 256 << 10;

/// The CPUs this process may run on, ascending.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    let mut cpus: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    cpus.sort_unstable();
    if cpus.is_empty() {
        cpus.push(0);
    }
    cpus
}

/// Checks pinned cores against the allowed set.
pub(crate) fn check_cores(cores: &[usize], allowed: &[usize]) -> Result<(), Error> {
    if let Some(bad) = cores.iter().find(|c| !allowed.contains(c)) {
        return Err(Error::Config {
            field: "cores".into(),
            what: format!(
                "core {bad} does not exist or is not allowed for this process (allowed: {allowed:?})"
            ),
        });
    }
    Ok(())
}

fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

fn memlock_limit_bytes() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return u64::MAX;
    }
    lim.rlim_cur
}

/// Checks that `shards` executors with `io_memory` each can lock their memory.
pub(crate) fn check_memlock(shards: usize, io_memory: usize) -> Result<(), Error> {
    match memlock_shortfall(shards, io_memory, memlock_limit_bytes(), has_cap_ipc_lock()) {
        Some(what) => Err(Error::Start { shard: 0, what }),
        None => Ok(()),
    }
}

/// What to tell the user if `shards` executors cannot lock their io memory under `limit`.
fn memlock_shortfall(
    shards: usize,
    io_memory: usize,
    limit: u64,
    cap_ipc_lock: bool,
) -> Option<String> {
    if cap_ipc_lock {
        return None;
    }
    let per_shard = u64::try_from(io_memory)
        .unwrap_or(u64::MAX)
        .saturating_add(EXECUTOR_LOCKED_OVERHEAD_BYTES);
    let need = per_shard.saturating_mul(u64::try_from(shards).unwrap_or(u64::MAX));
    if need <= limit {
        return None;
    }
    Some(format!(
        "{shards} shard executors need about {} KiB of locked memory but RLIMIT_MEMLOCK is {} KiB; \
         raise it (`ulimit -l {}` or LimitMEMLOCK= in the systemd unit), grant CAP_IPC_LOCK, \
         or lower `executor.io_memory_bytes` or `shards`",
        need / 1024,
        limit / 1024,
        need.div_ceil(1024)
    ))
}

fn explain(err: &glommio::GlommioError<()>) -> String {
    let text = err.to_string();
    let lower = text.to_lowercase();
    if lower.contains("memlock")
        || lower.contains("locked")
        || lower.contains("cannot allocate memory")
    {
        format!(
            "{text}: the executor could not lock its io memory; raise `ulimit -l`, grant \
             CAP_IPC_LOCK, or lower `executor.io_memory_bytes`"
        )
    } else if lower.contains("function not implemented")
        || lower.contains("operation not permitted")
    {
        format!(
            "{text}: io_uring is unavailable; net needs Linux >= 5.10 with io_uring enabled \
             (check /proc/sys/kernel/io_uring_disabled and container seccomp profiles)"
        )
    } else {
        text
    }
}

/// A shard's thread; it returns the shard's final error, if any.
pub(crate) type ShardThread = JoinHandle<Result<(), String>>;
/// Receives how a shard's start went.
pub(crate) type StartSignal = mpsc::Receiver<Result<(), Error>>;

/// Spawns a shard thread. `open` runs on the new thread inside the executor and returns the
/// shard's run function or a start error; the start outcome is sent back before running.
pub(crate) fn spawn_shard<R, O>(
    shard: u16,
    cpu: Option<usize>,
    io_memory: usize,
    open: O,
) -> Result<(ShardThread, StartSignal), Error>
where
    O: FnOnce() -> Result<R, Error> + Send + 'static,
    R: FnOnce() -> Result<(), String>,
{
    let (started_tx, started_rx) = mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name(format!("net-shard-{shard}"))
        .spawn(move || {
            let placement = cpu.map_or(Placement::Unbound, Placement::Fixed);
            let executor = LocalExecutorBuilder::new(placement)
                .name(&format!("net-shard-{shard}"))
                .io_memory(io_memory)
                .make();
            let executor = match executor {
                Ok(ex) => ex,
                Err(e) => {
                    let _ = started_tx.send(Err(Error::Start {
                        shard,
                        what: explain(&e),
                    }));
                    return Ok(());
                }
            };
            executor.run(async move {
                match open() {
                    Ok(run) => {
                        let _ = started_tx.send(Ok(()));
                        run()
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        Ok(())
                    }
                }
            })
        })
        .map_err(|e| Error::Start {
            shard,
            what: format!("cannot spawn thread: {e}"),
        })?;
    Ok((handle, started_rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_shortfall_says_what_to_raise() {
        assert_eq!(memlock_shortfall(2, 512 << 10, 8 << 20, false), None);
        assert_eq!(
            memlock_shortfall(64, 10 << 20, 8 << 20, true),
            None,
            "CAP_IPC_LOCK has no limit"
        );
        let msg = memlock_shortfall(4, 10 << 20, 8 << 20, false).unwrap();
        assert!(msg.contains("RLIMIT_MEMLOCK is 8192 KiB"), "{msg}");
        assert!(
            msg.contains("ulimit -l")
                && msg.contains("CAP_IPC_LOCK")
                && msg.contains("executor.io_memory_bytes")
        );
    }

    #[test]
    fn cores_outside_the_allowed_set_are_named() {
        let err = check_cores(&[0, 9], &[0, 1]).unwrap_err().to_string();
        assert!(err.contains("core 9") && err.contains("[0, 1]"), "{err}");
        assert!(check_cores(&[1, 0], &[0, 1]).is_ok());
    }
}
