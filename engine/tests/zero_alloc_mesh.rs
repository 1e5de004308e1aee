//! After warm-up, messages over the mesh allocate nothing on any thread: the sender's handle
//! writes into its ring, the shard seals into pool buffers and sends with `sendmmsg`, the
//! other shard receives with `recvmmsg` into pool buffers, decrypts in place and writes into
//! the inbox ring, and the application reads it. Counted by a global allocator.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use net_engine::{Bus, MeshMessage};

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

/// The counter is global: the tests of this file run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn mesh_messages_allocate_nothing_after_warm_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Bus::start(common::mesh_config(da.path(), 1)).unwrap();
    let b = Bus::start(common::mesh_config(db.path(), 1)).unwrap();
    let (_, key) = b.mesh_identity().unwrap();
    let mut inbox = b.mesh_inbox().unwrap();
    let mut peer = a.connect(b.mesh_addr().unwrap(), key).unwrap();
    let payload = [5u8; 1200];
    let mut received = 0u64;
    let mut exchange = |n: u64, received: &mut u64| {
        let target = *received + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut sent = 0;
        while *received < target {
            assert!(
                Instant::now() < deadline,
                "messages did not arrive: {received}/{target}"
            );
            // A window, as any datagram sender needs: with GSO the sending shard outruns the
            // receiving one, and a blast overflows the receiving socket (the kernel drops).
            while sent < n && sent + target - n < *received + 4096 && peer.send(&payload).is_ok() {
                sent += 1;
            }
            inbox.recv_wait(1024, Duration::from_millis(1), |m: MeshMessage<'_>| {
                assert_eq!(m.payload.len(), 1200);
                *received += 1;
            });
        }
    };
    exchange(20_000, &mut received);
    let before = common::ALLOCS.load(Ordering::SeqCst);
    exchange(100_000, &mut received);
    let allocs = common::ALLOCS.load(Ordering::SeqCst) - before;
    assert_eq!(allocs, 0, "{allocs} allocations for 100 000 messages");
    let s = b.mesh_stats().unwrap();
    assert_eq!(s.total.messages_in, 120_000, "{:?}", s.total);
    drop(peer);
    a.shutdown(Duration::from_secs(5));
    b.shutdown(Duration::from_secs(5));
}
