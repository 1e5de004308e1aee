//! CPU time used by the whole process (every thread, live or ended), from `/proc/self/stat`,
//! so that a design that is fast because it burns more cores is seen to do so.
//!
//! The kernel reports `utime` and `stime` in USER_HZ ticks, which Linux fixes at 100 per
//! second for every architecture's userspace ABI: readings are 10 ms coarse, fine for windows
//! of a second or more. Reading allocates, so callers read outside allocation windows.

use std::time::Duration;

/// Pins the calling thread to the CPUs the bus's pinned shards leave free (the first
/// `shards` CPUs this process may use are the shards'), so that a load generator or a
/// consumer competes with the shards for nothing but the disk. Does nothing when no CPU is
/// left (one-CPU machines) or the shards are unpinned; returns whether it pinned.
pub fn pin_off_shards(shards: usize) -> bool {
    let mut cpus: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    cpus.sort_unstable();
    let free = cpus.get(shards..).unwrap_or_default();
    if free.is_empty() {
        return false;
    }
    // SAFETY: an all-zero cpu_set_t is an empty set; CPU_SET indexes within it (the ids come
    // from this process's own affinity mask, below CPU_SETSIZE); sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in free {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Ticks per second of `/proc/<pid>/stat` times (Linux's USER_HZ).
const USER_HZ: u64 = 100;

/// User plus system CPU time of this process so far; `None` where `/proc` is unavailable.
pub fn process_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat(&stat)
}

/// `utime + stime` from the text of `/proc/<pid>/stat`.
fn parse_stat(stat: &str) -> Option<Duration> {
    // The command name (field 2) may hold spaces and parentheses: fields are counted after
    // its closing parenthesis, which is the last one on the line; field 3 comes first.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_millis(ticks * 1000 / USER_HZ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_after_an_awkward_name() {
        let stat = "1234 (a b) (c)) S 1 1 1 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_stat(stat), Some(Duration::from_millis(3000)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        assert!(process_time().is_some());
    }
}
