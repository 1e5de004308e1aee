//! Readers on other threads always see a whole version: a state and the watermark it was
//! folded to, together, never a state half-way through a batch; and versions only move
//! forward.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use common::{Seen, WAIT, record, shut, start_bus};
use net_cortex::{Cortex, CortexConfig, fold_fn};
use net_engine::ShardId;

#[test]
fn readers_see_whole_versions_that_only_move_forward() {
    let dir = tempfile::tempdir().unwrap();
    let bus = start_bus(dir.path(), 2);
    let config = CortexConfig {
        publish_interval_us: 0, // every batch: as many versions as possible
        ..CortexConfig::new("seen")
    };
    let cortex = Cortex::start(&bus, fold_fn(record), config).unwrap();
    let done = AtomicBool::new(false);
    let total = 20_000u32;
    let checked = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut last = [0u64; 2];
                    let mut checked = 0u64;
                    while !done.load(Ordering::Acquire) {
                        for (i, view) in cortex.views().iter().enumerate() {
                            let state: &Seen = view.state();
                            let end = view.folded_end();
                            assert_eq!(state.0.len() as u64, end, "a state is its whole version");
                            if let Some((seq, _)) = state.0.last() {
                                assert_eq!(seq + 1, end);
                            }
                            assert!(end >= last[i], "versions only move forward");
                            last[i] = end;
                            checked += 1;
                        }
                        // A short sleep, not a spin: on two cores a spinning reader starves the shard.
                        std::thread::sleep(std::time::Duration::from_micros(200));
                    }
                    checked
                })
            })
            .collect();
        let mut p = bus.producer().unwrap();
        for i in 0..total {
            p.send_to(i as usize % 2, format!("e{i}").as_bytes())
                .unwrap();
        }
        bus.flush().unwrap();
        assert!(cortex.wait_caught_up(WAIT));
        done.store(true, Ordering::Release);
        readers.into_iter().map(|r| r.join().unwrap()).sum::<u64>()
    });
    assert!(checked > 0);
    for shard in 0..2u16 {
        let view = cortex.view(ShardId(shard)).unwrap();
        assert_eq!(view.folded_end(), u64::from(total / 2));
    }
    drop(cortex);
    shut(bus);
}
