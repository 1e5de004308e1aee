//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

pub mod relay;

use std::path::Path;
use std::time::{Duration, Instant};

use net_engine::{Bus, Config, Cursor, Event};

/// A small, unpinned configuration for tests.
pub fn config(dir: &Path, shards: usize) -> Config {
    Config::for_tests(dir, shards)
}

/// Polls until `count` events were read (or 30 s pass) and returns them.
pub fn poll_all(bus: &Bus, count: usize) -> Vec<Event> {
    let mut cursor = Cursor::start();
    let mut out = Vec::with_capacity(count);
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < count && Instant::now() < deadline {
        let resp = bus.poll(&cursor, 1000).expect("poll");
        assert!(resp.failed_shards.is_empty(), "{:?}", resp.failed_shards);
        if resp.events.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        out.extend(resp.events);
        cursor = resp.next;
    }
    out
}

/// A payload naming its producer and per-producer counter.
pub fn payload(producer: u32, n: u64, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len.max(12)];
    p[0..4].copy_from_slice(&producer.to_le_bytes());
    p[4..12].copy_from_slice(&n.to_le_bytes());
    for (i, b) in p[12..].iter_mut().enumerate() {
        *b = n.wrapping_add(i as u64).to_le_bytes()[0];
    }
    p
}

pub fn parse(p: &[u8]) -> (u32, u64) {
    (
        u32::from_le_bytes(p[0..4].try_into().unwrap()),
        u64::from_le_bytes(p[4..12].try_into().unwrap()),
    )
}

/// A tmpfs mounted for a test, unmounted on drop (root only).
#[derive(Debug)]
pub struct SmallFs(tempfile::TempDir);

impl SmallFs {
    /// Mounts a tmpfs of `size` (`"2m"`), or prints why the test is skipped.
    pub fn mount(size: &str) -> Option<SmallFs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: this test mounts a tmpfs and needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "running as root but `mount -t tmpfs` failed"
        );
        Some(SmallFs(dir))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// A PSK shared by the mesh tests' nodes.
pub const MESH_PSK: &str = "6d657368207465737420707368206b6579206f662033322062797465732121aa";

/// `config` plus a mesh on 127.0.0.1 (a port the kernel picks) with short timers.
pub fn mesh_config(dir: &Path, shards: usize) -> Config {
    let mut c = config(dir, shards);
    let mut m = net_engine::MeshConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        psk: Some(MESH_PSK.into()),
        ..Default::default()
    };
    m.heartbeat_ms = 200;
    m.session_timeout_ms = 2000;
    m.handshake_retry_ms = 50;
    m.handshake_retry_max_ms = 400;
    m.handshake_timeout_ms = 5000;
    c.mesh = Some(m);
    c
}

/// A global allocator that counts every allocation (`#[global_allocator] static GLOBAL:
/// common::Counting = common::Counting;` in a test binary that proves a path allocates nothing).
pub struct Counting;

pub static ALLOCS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    /// Set while the test's own thread does something it does not measure (reading stats).
    static UNCOUNTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with this thread's allocations left out of [`ALLOCS`] (every other thread's are
/// still counted): for a test that checks progress while it measures other threads.
pub fn uncounted<T>(f: impl FnOnce() -> T) -> T {
    UNCOUNTED.with(|u| u.set(true));
    let r = f();
    UNCOUNTED.with(|u| u.set(false));
    r
}

fn count() {
    if !UNCOUNTED.with(|u| u.get()) {
        ALLOCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

/// Two mesh nodes with one shard each and a working session from `a` to `b` (one message
/// delivered).
pub struct MeshPair {
    pub a: Bus,
    pub b: Bus,
    pub inbox_b: net_engine::Inbox,
    pub to_b: net_engine::Peer,
    pub _dirs: (tempfile::TempDir, tempfile::TempDir),
}

pub fn mesh_pair() -> MeshPair {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Bus::start(mesh_config(da.path(), 1)).unwrap();
    let b = Bus::start(mesh_config(db.path(), 1)).unwrap();
    let (_, b_key) = b.mesh_identity().unwrap();
    let mut inbox_b = b.mesh_inbox().unwrap();
    let mut to_b = a.connect(b.mesh_addr().unwrap(), b_key).unwrap();
    to_b.send_timeout(b"before", Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        recv_one(&mut inbox_b, Duration::from_secs(10)),
        1,
        "the session works"
    );
    MeshPair {
        a,
        b,
        inbox_b,
        to_b,
        _dirs: (da, db),
    }
}

/// Waits up to `timeout` for one message; returns how many arrived (0 or 1).
pub fn recv_one(inbox: &mut net_engine::Inbox, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    let mut got = 0;
    while got == 0 && Instant::now() < deadline {
        got += inbox.recv_wait(1, Duration::from_millis(100), |_| {});
    }
    got
}
