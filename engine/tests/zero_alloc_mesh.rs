//! After warm-up, messages over the mesh allocate nothing on any thread: the sender's handle
//! writes into its ring, the shard seals into pool buffers and sends with `sendmmsg`, the
//! other shard receives with `recvmmsg` into pool buffers, decrypts in place and writes into
//! the inbox ring, and the application reads it. Counted by a global allocator. The same
//! holds for a subscription that keeps up: the publisher seals each completed batch from its
//! bytes, the subscriber delivers in order into its mirror lane, and its shard appends.

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

#[test]
fn a_subscription_that_keeps_up_allocates_nothing_after_warm_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Segments large enough not to roll in the measured window (a roll allocates).
    let big = |dir: &std::path::Path| {
        let mut c = common::mesh_config(dir, 1);
        c.storage.segment_bytes = 256 << 20;
        c
    };
    let a = Bus::start(big(da.path())).unwrap();
    let b = Bus::start(big(db.path())).unwrap();
    let (b_node, b_key) = b.mesh_identity().unwrap();
    let (_, a_key) = a.mesh_identity().unwrap();
    let (_, token) = a
        .issue_token(b_node, b_key, None, Duration::from_secs(600))
        .unwrap();
    b.subscribe(a.mesh_addr().unwrap(), a_key, &token, None)
        .unwrap();
    let mut producer = a.producer().unwrap();
    let payload = [7u8; 100];
    let mirrored = |b: &Bus| {
        common::uncounted(|| {
            b.mesh_stats()
                .unwrap()
                .subscriptions
                .first()
                .map_or(0, |s| s.next_seq)
        })
    };
    let mut sent = 0u64;
    let mut run = |n: u64, sent: &mut u64| {
        let target = *sent + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while *sent < target {
            // Paced a little so the subscription stays live (fed from batches, not reads).
            for _ in 0..1000 {
                producer.send_to(0, &payload).unwrap();
                *sent += 1;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        while mirrored(&b) < target {
            assert!(
                Instant::now() < deadline,
                "the mirror stopped at {}",
                mirrored(&b)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    run(50_000, &mut sent);
    // Times the publication read its log: caught up after falling behind, resent a hole or
    // probed a tail.
    let catchups = || {
        common::uncounted(|| {
            let p = &a.mesh_stats().unwrap().publications[0];
            p.catchups + p.resent_ranges + p.timeouts
        })
    };
    // A window in which the publication kept up throughout (fed from batches only; on a
    // loaded machine the subscriber may fall behind for a moment, and reading the log
    // allocates per read, not per event): the first of a few tries where it did.
    let mut last = (0, 0);
    for _ in 0..5 {
        let (c0, before) = (catchups(), common::ALLOCS.load(Ordering::SeqCst));
        run(100_000, &mut sent);
        let allocs = common::ALLOCS.load(Ordering::SeqCst) - before;
        last = (allocs, catchups() - c0);
        if last.1 == 0 {
            break;
        }
    }
    let (allocs, fell_behind) = last;
    assert_eq!(
        fell_behind, 0,
        "the publication never kept up for a whole window"
    );
    assert_eq!(
        allocs, 0,
        "{allocs} allocations for 100 000 mirrored events"
    );
    a.shutdown(Duration::from_secs(5));
    b.shutdown(Duration::from_secs(5));
}
