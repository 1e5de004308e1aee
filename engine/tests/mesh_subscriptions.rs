//! Subscriptions between two nodes in one process: a subscriber mirrors a publisher's shards
//! into its own log, every event exactly once and in order with its origin kept, whether it
//! subscribed before or after the events were written; tokens decide who may subscribe;
//! events retention removed before they were mirrored are reported as skipped; a
//! subscriber that stops consuming only makes its publication lag.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use net_engine::{Bus, Cursor, Event, MeshStats, ShardId, StreamStats};
use net_transport::token::{Actions, ShardSet, SigningKey, Token};

fn node(dir: &std::path::Path, shards: usize) -> Bus {
    Bus::start(common::mesh_config(dir, shards)).unwrap()
}

fn payload(shard: u16, i: u64) -> Vec<u8> {
    let n = 20 + (i % 90) as usize;
    (0..n)
        .map(|k| ((u64::from(shard) * 7 + i * 31 + k as u64) % 251) as u8)
        .collect()
}

/// Sends `per_shard` events to each shard of `bus` (from one producer per shard).
fn produce(bus: &Bus, per_shard: u64, from: u64) {
    std::thread::scope(|s| {
        for shard in 0..bus.shards() {
            s.spawn(move || {
                let mut p = bus.producer().unwrap();
                let id = ShardId(u16::try_from(shard).unwrap());
                for i in from..from + per_shard {
                    p.send_to(shard, &payload(id.0, i)).unwrap();
                }
            });
        }
    });
    bus.flush().unwrap();
}

fn mirrored(bus: &Bus) -> Vec<Event> {
    let mut cursor = Cursor::start();
    let mut out = Vec::new();
    loop {
        let r = bus.poll(&cursor, 10_000).unwrap();
        if r.events.is_empty() {
            return out;
        }
        out.extend(r.events.into_iter().filter(|e| e.origin.is_some()));
        cursor = r.next;
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn subs(bus: &Bus) -> Vec<StreamStats> {
    bus.mesh_stats().unwrap().subscriptions
}

fn stats(bus: &Bus) -> MeshStats {
    bus.mesh_stats().unwrap()
}

/// Checks that `events` hold, per origin shard, exactly `0..per_shard` in order, each with
/// the payload the publisher wrote.
fn check_mirror(events: &[Event], origin: u64, shards: u16, per_shard: u64) {
    let mut next: HashMap<u16, u64> = HashMap::new();
    for e in events {
        let o = e.origin.expect("mirrored events keep their origin");
        assert_eq!(o.node, origin);
        assert_eq!(
            e.id.shard.0, o.shard,
            "origin shard k is mirrored into shard k"
        );
        let want = next.entry(o.shard).or_insert(0);
        assert_eq!(
            o.seq, *want,
            "origin shard {} in order, no gap, no repeat",
            o.shard
        );
        assert_eq!(
            &e.payload[..],
            &payload(o.shard, o.seq)[..],
            "byte for byte"
        );
        *want += 1;
    }
    for k in 0..shards {
        assert_eq!(
            next.get(&k).copied().unwrap_or(0),
            per_shard,
            "shard {k} complete"
        );
    }
}

struct Pair {
    a: Bus,
    b: Bus,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

fn pair(shards: usize) -> Pair {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    Pair {
        a: node(da.path(), shards),
        b: node(db.path(), shards),
        _dirs: (da, db),
    }
}

fn token_for(a: &Bus, b: &Bus) -> Vec<u8> {
    let (b_node, b_key) = b.mesh_identity().unwrap();
    a.issue_token(b_node, b_key, None, Duration::from_secs(600))
        .unwrap()
        .1
}

#[test]
fn a_subscriber_mirrors_old_and_new_events_exactly_once_in_order() {
    let p = pair(2);
    let (a_node, a_key) = p.a.mesh_identity().unwrap();
    // Half before the subscription (read from the log), half after (sent as batches
    // complete).
    produce(&p.a, 20_000, 0);
    let token = token_for(&p.a, &p.b);
    let started =
        p.b.subscribe(p.a.mesh_addr().unwrap(), a_key, &token, None)
            .unwrap();
    assert_eq!(started, vec![(0, 0), (1, 0)]);
    produce(&p.a, 20_000, 20_000);
    wait_until("the mirror", Duration::from_secs(60), || {
        subs(&p.b).iter().all(|s| s.next_seq == 40_000)
    });
    p.b.flush().unwrap();
    check_mirror(&mirrored(&p.b), a_node, 2, 40_000);
    let st = stats(&p.a);
    assert_eq!(st.publications.len(), 2);
    for pubn in &st.publications {
        assert!(pubn.active && !pubn.ended, "{pubn:?}");
        assert!(pubn.granted_bytes >= pubn.consumed_bytes);
    }
}

#[test]
fn a_restarted_subscriber_resumes_after_what_its_log_holds() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(da.path(), 2);
    let (a_node, a_key) = a.mesh_identity().unwrap();
    produce(&a, 5_000, 0);
    {
        let b = node(db.path(), 2);
        let token = token_for(&a, &b);
        b.subscribe(a.mesh_addr().unwrap(), a_key, &token, None)
            .unwrap();
        wait_until("the first mirror", Duration::from_secs(60), || {
            subs(&b).iter().all(|s| s.next_seq == 5_000)
        });
        b.flush().unwrap();
        b.shutdown(Duration::from_secs(10));
    }
    produce(&a, 5_000, 5_000);
    let b = node(db.path(), 2);
    let token = token_for(&a, &b);
    let started = b
        .subscribe(a.mesh_addr().unwrap(), a_key, &token, None)
        .unwrap();
    assert_eq!(
        started,
        vec![(0, 5_000), (1, 5_000)],
        "resumes from its own log"
    );
    wait_until("the second mirror", Duration::from_secs(60), || {
        subs(&b).iter().all(|s| s.next_seq == 10_000)
    });
    b.flush().unwrap();
    check_mirror(&mirrored(&b), a_node, 2, 10_000);
}

fn refused(b: &Bus) -> Option<String> {
    subs(b).iter().find_map(|s| s.error.clone())
}

fn subscribe_with(p: &Pair, token: &[u8], shards: Option<&[u16]>) -> Result<(), net_engine::Error> {
    let (_, a_key) = p.a.mesh_identity().unwrap();
    p.b.subscribe(p.a.mesh_addr().unwrap(), a_key, token, shards)
        .map(|_| ())
}

/// A token signed with the publisher's own key, with any content.
fn crafted(p: &Pair, dir: &std::path::Path, edit: impl FnOnce(&mut Crafted)) -> Vec<u8> {
    let key = SigningKey::load(&dir.join("mesh").join("signing_key")).unwrap();
    let (a_node, _) = p.a.mesh_identity().unwrap();
    let (b_node, b_key) = p.b.mesh_identity().unwrap();
    let now = net_engine::realtime_ns() / 1_000_000_000;
    let mut c = Crafted {
        subject: b_node,
        subject_key: b_key,
        actions: Actions::SUBSCRIBE,
        not_before: now - 10,
        expires: now + 600,
    };
    edit(&mut c);
    Token::issue(
        &key,
        a_node,
        c.subject,
        c.subject_key,
        c.actions,
        ShardSet::all(),
        7,
        c.not_before,
        c.expires,
    )
    .to_bytes()
    .to_vec()
}

struct Crafted {
    subject: u64,
    subject_key: [u8; 32],
    actions: Actions,
    not_before: u64,
    expires: u64,
}

fn expect_refusal(p: &Pair, token: &[u8], want: &str) {
    subscribe_with(p, token, Some(&[0])).unwrap();
    wait_until("a refusal", Duration::from_secs(10), || {
        refused(&p.b).is_some()
    });
    let why = refused(&p.b).unwrap();
    assert!(why.contains(want), "{why:?} should say {want:?}");
    assert!(stats(&p.a).publications.is_empty(), "nothing was admitted");
}

#[test]
fn an_expired_token_is_refused_and_a_good_one_then_accepted() {
    let p = pair(1);
    let t = crafted(&p, p._dirs.0.path(), |c| {
        c.not_before -= 1000;
        c.expires = c.not_before + 10;
    });
    expect_refusal(&p, &t, "expired");
    // The refused subscription can be started again with a valid token.
    produce(&p.a, 100, 0);
    subscribe_with(&p, &token_for(&p.a, &p.b), Some(&[0])).unwrap();
    wait_until("the mirror", Duration::from_secs(10), || {
        subs(&p.b).iter().any(|s| s.active && s.next_seq == 100)
    });
}

#[test]
fn a_token_for_another_node_is_refused() {
    let p = pair(1);
    let t = crafted(&p, p._dirs.0.path(), |c| c.subject ^= 1);
    expect_refusal(&p, &t, "Unauthorized");
}

#[test]
fn a_token_granting_no_action_authorises_nothing() {
    let p = pair(1);
    let t = crafted(&p, p._dirs.0.path(), |c| c.actions = Actions::NONE);
    expect_refusal(&p, &t, "Unauthorized");
}

#[test]
fn a_token_signed_by_another_key_is_refused() {
    let p = pair(1);
    let (b_node, b_key) = p.b.mesh_identity().unwrap();
    let (a_node, _) = p.a.mesh_identity().unwrap();
    let now = net_engine::realtime_ns() / 1_000_000_000;
    let t = Token::issue(
        &SigningKey::generate(),
        a_node,
        b_node,
        b_key,
        Actions::SUBSCRIBE,
        ShardSet::all(),
        1,
        now,
        now + 600,
    );
    expect_refusal(&p, &t.to_bytes(), "signature");
}

#[test]
fn a_revoked_token_ends_its_subscription_with_the_reason() {
    let p = pair(1);
    let (b_node, b_key) = p.b.mesh_identity().unwrap();
    let (id, token) =
        p.a.issue_token(b_node, b_key, None, Duration::from_secs(600))
            .unwrap();
    produce(&p.a, 1_000, 0);
    subscribe_with(&p, &token, Some(&[0])).unwrap();
    wait_until("the mirror", Duration::from_secs(30), || {
        subs(&p.b).iter().all(|s| s.next_seq == 1_000)
    });
    p.a.revoke_token(id).unwrap();
    wait_until("the end", Duration::from_secs(10), || {
        refused(&p.b).is_some()
    });
    assert!(refused(&p.b).unwrap().contains("revoked"));
    let pubn = &stats(&p.a).publications[0];
    assert!(pubn.ended && !pubn.active, "{pubn:?}");
}

#[test]
fn at_the_cap_a_new_subscription_is_refused_and_a_held_one_readmitted() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut ca = common::mesh_config(da.path(), 2);
    ca.mesh.as_mut().unwrap().subscriptions_per_node_max = 1;
    let a = Bus::start(ca).unwrap();
    let (_, a_key) = a.mesh_identity().unwrap();
    let addr = a.mesh_addr().unwrap();
    {
        let b = node(db.path(), 2);
        let token = token_for(&a, &b);
        b.subscribe(addr, a_key, &token, Some(&[0])).unwrap();
        wait_until("the first", Duration::from_secs(10), || {
            subs(&b).iter().any(|s| s.active)
        });
        b.subscribe(addr, a_key, &token, Some(&[1])).unwrap();
        wait_until("a refusal", Duration::from_secs(10), || {
            refused(&b).is_some()
        });
        assert!(refused(&b).unwrap().contains("Full"), "{:?}", refused(&b));
        b.shutdown(Duration::from_secs(10));
    }
    // The subscriber restarts (same identity) and subscribes to shard 0 again while the
    // publisher still holds its subscription: admitted again, at the cap.
    let b = node(db.path(), 2);
    let token = token_for(&a, &b);
    b.subscribe(addr, a_key, &token, Some(&[0])).unwrap();
    wait_until("readmission", Duration::from_secs(10), || {
        subs(&b).iter().any(|s| s.active)
    });
    assert_eq!(refused(&b), None);
    let pubs = stats(&a).publications;
    assert_eq!(pubs.iter().filter(|p| p.active).count(), 1, "{pubs:?}");
}

#[test]
fn events_removed_by_retention_are_reported_as_skipped() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut ca = common::mesh_config(da.path(), 1);
    ca.storage.segment_bytes = 128 << 10;
    ca.storage.retention.max_events = Some(3_000);
    let p = Pair {
        a: Bus::start(ca).unwrap(),
        b: node(db.path(), 1),
        _dirs: (da, db),
    };
    produce(&p.a, 20_000, 0);
    // Retention runs as the shard appends: wait until it removed the oldest segments.
    wait_until("retention", Duration::from_secs(30), || {
        p.a.shard_reader(ShardId(0)).unwrap().view().first_seq() > 0
    });
    let first = p.a.shard_reader(ShardId(0)).unwrap().view().first_seq();
    let token = token_for(&p.a, &p.b);
    subscribe_with(&p, &token, None).unwrap();
    wait_until("the mirror", Duration::from_secs(30), || {
        subs(&p.b).iter().all(|s| s.next_seq == 20_000)
    });
    let s = &subs(&p.b)[0];
    assert!(s.skipped_events >= first, "{s:?} (first stored {first})");
    p.b.flush().unwrap();
    let events = mirrored(&p.b);
    assert_eq!(events.len() as u64 + s.skipped_events, 20_000);
    let seqs: Vec<u64> = events.iter().map(|e| e.origin.unwrap().seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, no repeat"
    );
    assert_eq!(*seqs.last().unwrap(), 19_999);
}

#[test]
fn a_stalled_subscriber_makes_its_publication_lag_not_the_publisher_stall() {
    // A small window (and so a small mirror lane, twice the window): what the subscriber can
    // absorb while stalled is far below what the publisher writes.
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut cb = common::mesh_config(db.path(), 1);
    let window = 64 << 10;
    cb.mesh.as_mut().unwrap().stream_window_bytes = window;
    let p = Pair {
        a: node(da.path(), 1),
        b: Bus::start(cb).unwrap(),
        _dirs: (da, db),
    };
    let token = token_for(&p.a, &p.b);
    subscribe_with(&p, &token, None).unwrap();
    wait_until("active", Duration::from_secs(10), || {
        subs(&p.b).iter().any(|s| s.active)
    });
    // The subscriber's shard stops taking events: its mirror lane fills, its credit stops.
    p.b.pause_shard(ShardId(0), true).unwrap();
    produce(&p.a, 100_000, 0);
    assert_eq!(
        p.a.stats().total.persisted,
        100_000,
        "the publisher ingested everything"
    );
    // Let whatever the credit allowed arrive, then look: it stays put.
    std::thread::sleep(Duration::from_millis(300));
    let pubn = stats(&p.a).publications[0].clone();
    let sub = subs(&p.b)[0].clone();
    assert!(pubn.lag_events > 50_000, "{pubn:?}");
    assert!(
        pubn.sent_bytes <= pubn.granted_bytes,
        "never beyond the credit: {pubn:?}"
    );
    assert!(
        sub.granted_bytes - sub.consumed_bytes == window,
        "the grant is consumed + window, from one acknowledgement: {sub:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let later = stats(&p.a).publications[0].clone();
    assert_eq!(
        later.sent_bytes, pubn.sent_bytes,
        "nothing more went: {later:?}"
    );
    // A subscriber that cannot take what it has does not name holes: the publisher does not
    // read and resend in a loop (it did, every few ms, for as long as the stall lasted).
    assert_eq!(
        later.resent_ranges, pubn.resent_ranges,
        "no resends while stalled: {later:?}"
    );
    p.b.pause_shard(ShardId(0), false).unwrap();
    wait_until("the catch-up", Duration::from_secs(60), || {
        subs(&p.b).iter().all(|s| s.next_seq == 100_000)
    });
    p.b.flush().unwrap();
    check_mirror(&mirrored(&p.b), p.a.mesh_identity().unwrap().0, 1, 100_000);
}

#[test]
fn a_catch_up_read_larger_than_the_readers_answer_ring_completes() {
    // A subscriber with a large window starts far behind: the publisher's reads of new data
    // carry up to 8 MiB, twice the 4 MiB ring the log reader answers through. (The reader
    // once staged a whole answer before publishing it, so an answer larger than the ring
    // waited forever for room the shard could not see.)
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut cb = common::mesh_config(db.path(), 1);
    cb.mesh.as_mut().unwrap().stream_window_bytes = 32 << 20;
    let p = Pair {
        a: node(da.path(), 1),
        b: Bus::start(cb).unwrap(),
        _dirs: (da, db),
    };
    produce(&p.a, 200_000, 0);
    let token = token_for(&p.a, &p.b);
    subscribe_with(&p, &token, None).unwrap();
    wait_until("the mirror", Duration::from_secs(60), || {
        subs(&p.b).iter().all(|s| s.next_seq == 200_000)
    });
    p.b.flush().unwrap();
    check_mirror(&mirrored(&p.b), p.a.mesh_identity().unwrap().0, 1, 200_000);
}

#[test]
fn a_stalled_subscriber_with_a_full_arena_asks_for_no_resends() {
    // The default window (4 MiB) and twice that of mirror lane: once both are full, frames
    // the subscriber cannot hold are dropped and leave holes. It must not name them while it
    // cannot take anything: the publisher would read its log and resend, every few
    // milliseconds, for as long as the stall lasts (it did).
    let p = pair(1);
    let token = token_for(&p.a, &p.b);
    subscribe_with(&p, &token, None).unwrap();
    wait_until("active", Duration::from_secs(10), || {
        subs(&p.b).iter().any(|s| s.active)
    });
    p.b.pause_shard(ShardId(0), true).unwrap();
    produce(&p.a, 300_000, 0);
    std::thread::sleep(Duration::from_millis(500));
    let before = stats(&p.a).publications[0].clone();
    std::thread::sleep(Duration::from_millis(500));
    let after = stats(&p.a).publications[0].clone();
    assert!(after.lag_events > 0, "{after:?}");
    // Holes named: none. The publisher's own tail probe still fires, backing off to 1 s
    // (it cannot tell a stalled subscriber from a lost tail): at most a couple here.
    let named = |s: &StreamStats| s.resent_ranges - s.timeouts;
    assert_eq!(
        named(&after),
        named(&before),
        "resends asked for while the subscriber was stalled: {before:?} -> {after:?}"
    );
    assert!(
        after.timeouts - before.timeouts <= 2,
        "tail probes back off: {before:?} -> {after:?}"
    );
    p.b.pause_shard(ShardId(0), false).unwrap();
    wait_until("the catch-up", Duration::from_secs(60), || {
        subs(&p.b).iter().all(|s| s.next_seq == 300_000)
    });
    p.b.flush().unwrap();
    check_mirror(&mirrored(&p.b), p.a.mesh_identity().unwrap().0, 1, 300_000);
}
