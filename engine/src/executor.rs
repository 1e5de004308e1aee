//! Starting shard threads: one OS thread per shard, pinned to its core, with start-up checks
//! that turn the usual failures into errors a user can act on.
//!
//! The shard owns its io_uring and runs its own loop (`reactor.rs`, `shard.rs`), so a thread
//! and an affinity mask are all it needs: no executor runtime sits in between (glommio did, in
//! the first version, and contributed nothing but a locked-memory requirement; see the README).
//!
//! Checks, before any thread starts: a pinned core must be one this process may run on
//! (`sched_getaffinity`). io_uring being unavailable (old kernel, `kernel.io_uring_disabled`,
//! seccomp) surfaces when the shard sets up its ring, with a message naming the cause.

use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::error::Error;

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

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> Result<(), String> {
    if core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        Ok(())
    } else {
        Err(format!(
            "cannot pin to core {cpu}: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// A shard's thread; it returns the shard's final error, if any.
pub(crate) type ShardThread<E> = JoinHandle<Result<(), E>>;
/// Receives how a shard's start went.
pub(crate) type StartSignal<S> = mpsc::Receiver<Result<S, Error>>;

/// Spawns a shard thread, pinned to `cpu` if given. `open` runs on the new thread and returns
/// what the starter needs (sent back) and the shard's run function, or a start error.
pub(crate) fn spawn_shard<S, R, O, E>(
    shard: u16,
    cpu: Option<usize>,
    open: O,
) -> Result<(ShardThread<E>, StartSignal<S>), Error>
where
    O: FnOnce() -> Result<(S, R), Error> + Send + 'static,
    R: FnOnce() -> Result<(), E>,
    S: Send + 'static,
    E: Send + 'static,
{
    let (started_tx, started_rx) = mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name(format!("net-shard-{shard}"))
        .spawn(move || {
            if let Some(cpu) = cpu
                && let Err(what) = pin(cpu)
            {
                let _ = started_tx.send(Err(Error::Start { shard, what }));
                return Ok(());
            }
            match open() {
                Ok((started, run)) => {
                    let _ = started_tx.send(Ok(started));
                    run()
                }
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    Ok(())
                }
            }
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
    fn cores_outside_the_allowed_set_are_named() {
        let err = check_cores(&[0, 9], &[0, 1]).unwrap_err().to_string();
        assert!(err.contains("core 9") && err.contains("[0, 1]"), "{err}");
        assert!(check_cores(&[1, 0], &[0, 1]).is_ok());
    }
}
