//! The importer stores each source event once, even when the source is read again from the
//! beginning by a new importer (after a crash that lost the source cursor): the bus's log is
//! its position. The source here is an in-memory stream; the real ones are tested against
//! their servers in `redis_*` and `jetstream_*`.

use std::time::Duration;

use bytes::Bytes;
use net_adapters::{AdapterError, Importer, SourceCursor, SourceEvent, SourcePoll, StreamSource};
use net_engine::{Bus, Config, Cursor, IdleStrategy};

struct Memory {
    events: Vec<SourceEvent>,
}

impl StreamSource for Memory {
    fn backend(&self) -> &'static str {
        "memory"
    }
    async fn poll(
        &mut self,
        cursor: &SourceCursor,
        limit: usize,
    ) -> Result<SourcePoll, AdapterError> {
        cursor.check_backend("memory")?;
        let at: usize = cursor.position(0).map_or(0, |p| p.parse().unwrap());
        let mut poll = SourcePoll::empty(cursor);
        let end = at.saturating_add(limit).min(self.events.len());
        poll.events = self.events[at..end].to_vec();
        if end > at {
            poll.next.set(0, &end.to_string())?;
        }
        Ok(poll)
    }
}

fn events() -> Vec<SourceEvent> {
    (0..3_000u64)
        .map(|i| SourceEvent {
            shard: (i % 3) as u16,
            seq: i / 3,
            ts_ns: 1,
            origin: None,
            payload: Bytes::from(format!("imported {i}")),
        })
        .collect()
}

fn import_all(bus: &Bus, source: &mut Memory, tag: u64) -> (u64, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut importer = Importer::new(bus, tag).unwrap();
    let mut cursor = SourceCursor::start("memory");
    rt.block_on(async {
        loop {
            let report = importer.step(source, &cursor, 500).await.unwrap();
            if report.poll.next == cursor {
                break;
            }
            cursor = report.poll.next;
        }
    });
    bus.flush().unwrap();
    importer.totals()
}

#[test]
fn a_second_import_from_the_start_stores_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        data_dir: dir.path().to_path_buf(),
        shards: Some(2),
        pin: false,
        ..Config::default()
    };
    cfg.idle.strategy = IdleStrategy::Park;
    let bus = Bus::start(cfg).unwrap();
    let mut source = Memory { events: events() };
    assert_eq!(import_all(&bus, &mut source, 77), (3_000, 0));
    // A new importer (as after a crash that lost the cursor) reads everything again.
    assert_eq!(import_all(&bus, &mut source, 77), (0, 3_000));
    // More events appear; only they are stored.
    source.events.extend((3_000..3_300u64).map(|i| SourceEvent {
        shard: (i % 3) as u16,
        seq: i / 3,
        ts_ns: 1,
        origin: None,
        payload: Bytes::from(format!("imported {i}")),
    }));
    assert_eq!(import_all(&bus, &mut source, 77), (300, 3_000));

    let mut seen = std::collections::BTreeSet::new();
    let mut cursor = Cursor::start();
    loop {
        let r = bus
            .poll_wait(&cursor, 1_000, Duration::from_millis(200))
            .unwrap();
        if r.events.is_empty() {
            break;
        }
        for e in &r.events {
            let o = e.origin.expect("imported events carry their origin");
            assert_eq!(o.node, 77);
            assert_eq!(
                e.payload,
                Bytes::from(format!("imported {}", o.seq * 3 + u64::from(o.shard))),
                "byte-exact payload"
            );
            assert!(seen.insert((o.shard, o.seq)), "stored twice: {o:?}");
        }
        cursor = r.next;
    }
    assert_eq!(seen.len(), 3_300);

    // A cursor of another backend is refused, naming the way to reset.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut importer = Importer::new(&bus, 77).unwrap();
    let err = rt
        .block_on(importer.step(&mut source, &SourceCursor::start("redis"), 10))
        .unwrap_err();
    assert!(err.message.contains("start again"), "{err}");
}
