//! SIGKILL of the process running a bus and its Redis sink, in the middle of a run: started
//! again on the same data dir, the sink resumes from its checkpoint and what Redis holds, and
//! Redis ends up with every event of the bus's log exactly once, in order.
//!
//! The child is this test binary, told what to do by `NET_SINK_CHILD`
//! (`<mode>|<data dir>|<redis url>|<prefix>`): `produce` starts the bus and the sink and sends
//! events until it is killed; `finish` starts them again, waits until the sink caught up, and
//! prints `END <shard>=<end>,...`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use net_adapters::redis::{RedisConfig, RedisSink};
use net_adapters::{Sink, SinkConfig};
use net_engine::{Bus, Config, IdleStrategy};

const CHILD_ENV: &str = "NET_SINK_CHILD";
const CHILD_TEST: &str = "child";
const SHARDS: usize = 2;

fn start(dir: &str, url: &str, prefix: &str) -> (Bus, Sink) {
    let mut config = Config {
        data_dir: format!("{dir}/data").into(),
        shards: Some(SHARDS),
        pin: false,
        ..Config::default()
    };
    config.idle.strategy = IdleStrategy::Park;
    let bus = Bus::start(config).unwrap();
    let mut rc = RedisConfig::single(url);
    rc.prefix = prefix.to_owned();
    let mut sc = SinkConfig::new("killed", dir);
    sc.batch_events_max = 64;
    let sink = Sink::start(&bus, RedisSink::new(rc).unwrap(), sc).unwrap();
    (bus, sink)
}

/// The child's body (does nothing unless `NET_SINK_CHILD` is set).
#[test]
fn child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let (mode, dir, url, prefix) = (parts[0], parts[1], parts[2], parts[3]);
    let (bus, sink) = start(dir, url, prefix);
    match mode {
        "produce" => {
            let mut p = bus.producer().unwrap();
            let mut i = 0u64;
            loop {
                for _ in 0..100 {
                    p.send(&i.to_le_bytes(), format!("event {i}").as_bytes())
                        .unwrap();
                    i += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        "finish" => {
            sink.wait_caught_up(Duration::from_secs(60)).unwrap();
            let stats = sink.stop(Duration::from_secs(10));
            let ends: Vec<String> = stats
                .shards
                .iter()
                .map(|s| format!("{}={}", s.shard, s.confirmed_end))
                .collect();
            println!("END {}", ends.join(","));
            let _ = bus.shutdown(Duration::from_secs(10));
        }
        other => panic!("unknown child mode {other}"),
    }
}

fn spawn(mode: &str, dir: &str, url: &str, prefix: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{mode}|{dir}|{url}|{prefix}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn redis_len(con: &mut redis::aio::MultiplexedConnection, prefix: &str) -> u64 {
    let mut total = 0;
    for shard in 0..SHARDS {
        let n: u64 = redis::cmd("XLEN")
            .arg(format!("{prefix}:{shard}"))
            .query_async(con)
            .await
            .unwrap();
        total += n;
    }
    total
}

#[test]
fn sigkill_mid_run_then_restart_leaves_every_event_in_redis_exactly_once() {
    let Some(url) = common::redis_url("sigkill_mid_run_then_restart") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap().to_owned();
    let prefix = common::unique("killed");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut con = rt.block_on(async {
        redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new()
                    .set_response_timeout(Some(std::time::Duration::from_secs(30))),
            )
            .await
            .unwrap()
    });

    // Kill the producing process twice, each time once Redis holds more than before.
    let mut floor = 0;
    for round in 0..2 {
        let mut child = Killed(spawn("produce", &dir, &url, &prefix));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = rt.block_on(redis_len(&mut con, &prefix));
            if n >= floor + 20_000 {
                floor = n;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: redis stuck at {n}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // SIGKILL: no destructor, no checkpoint at stop.
        child.0.kill().unwrap();
        child.0.wait().unwrap();
    }

    let mut child = Killed(spawn("finish", &dir, &url, &prefix));
    let stdout = child.0.stdout.take().unwrap();
    // Read to the end (dropping the pipe early would fail the child's later writes).
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .collect();
    let line = lines
        .iter()
        // libtest prints `test child ... ` before the child's own output on the same line.
        .find_map(|l| l.split_once("END ").map(|(_, rest)| rest.to_owned()))
        .expect("the finishing child reports its positions");
    assert!(child.0.wait().unwrap().success());

    for entry in line.trim().split(',') {
        let (shard, end) = entry.split_once('=').unwrap();
        let end: u64 = end.parse().unwrap();
        let key = format!("{prefix}:{shard}");
        let ids = rt.block_on(common::stream_ids(&mut con, &key));
        let want: Vec<String> = (0..end).map(|seq| format!("{shard}:{seq}")).collect();
        assert_eq!(ids.len(), want.len(), "{key}: every event of the log, once");
        assert_eq!(ids, want, "{key}: in order, none missing, none twice");
        rt.block_on(async {
            let _: () = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut con)
                .await
                .unwrap();
        });
    }
}
