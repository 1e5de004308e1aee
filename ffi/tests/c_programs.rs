//! Builds each C program of `tests/c/` against `libnet.a` (the staticlib cargo built next to
//! this test's binary) with the system C compiler and runs it; then, when `valgrind` is
//! installed, runs it again under `valgrind --error-exitcode=1 --leak-check=full` (the happy
//! path with fewer events: `NET_C_EVENTS_VALGRIND`, default 20000). `NET_FFI_NO_VALGRIND=1`
//! skips the valgrind runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One program at a time: the shards spin briefly before parking, and two busy programs (one
/// under valgrind, which runs a process's threads one at a time) on a 2-core machine starve
/// each other.
static SERIAL: Mutex<()> = Mutex::new(());

fn profile_dir() -> PathBuf {
    // <target>/<profile>/deps/c_programs-<hash>
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("<target>/<profile>")
        .to_path_buf()
}

/// Builds `libnet.a` of this test's profile: cargo builds only the rlib for a test, and a
/// stale staticlib would test old code.
fn build_lib() -> PathBuf {
    static ONCE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let dir = profile_dir();
    let mut built = ONCE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !*built {
        let target = dir.parent().expect("<target>");
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_string(),
            Some(p) => p.to_string(),
            None => "dev".to_string(),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "net-ffi",
                "--lib",
                "--profile",
                &profile,
            ])
            .env("CARGO_TARGET_DIR", target)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build -p net-ffi");
        assert!(status.success(), "cargo build -p net-ffi --lib failed");
        *built = true;
    }
    dir.join("libnet.a")
}

fn build(name: &str, out_dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = build_lib();
    assert!(
        lib.exists(),
        "{} is missing: build net-ffi first",
        lib.display()
    );
    let exe = out_dir.join(name.replace('/', "_"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args([
            "-std=c11",
            "-O1",
            "-g",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-D_GNU_SOURCE",
        ])
        .arg("-I")
        .arg(root.join("include"))
        .arg(root.join(format!("{name}.c")))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
    assert!(status.success(), "compiling {name}.c failed");
    exe
}

/// Runs `cmd` to completion, killing it (and failing) past `limit`.
fn run(mut cmd: Command, what: &str, limit: Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = cmd
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the program") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    print!("{stdout}");
    match status {
        Some(s) => assert!(s.success(), "{what} failed ({s}):\n{stdout}\n{stderr}"),
        None => panic!("{what} did not finish in {limit:?}:\n{stdout}\n{stderr}"),
    }
}

fn has_valgrind() -> bool {
    std::env::var_os("NET_FFI_NO_VALGRIND").is_none()
        && Command::new("valgrind")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}

fn program(name: &str) {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = build(name, dir.path());
    // The example takes its data dir as an argument; the test programs make their own.
    let mut cmd = Command::new(&exe);
    cmd.arg(dir.path().join("data")).env("TMPDIR", dir.path());
    run(cmd, name, Duration::from_secs(300));
    if has_valgrind() {
        let events = std::env::var("NET_C_EVENTS_VALGRIND").unwrap_or_else(|_| "20000".to_string());
        let mut cmd = Command::new("valgrind");
        cmd.args([
            "--error-exitcode=1",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,possible",
            "--quiet",
            // Fair scheduling: threads that spin-wait (a shard before it parks, a producer
            // on a full lane) must not starve the thread they wait for.
            "--fair-sched=yes",
        ])
        .arg(format!(
            "--suppressions={}",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/c/valgrind.supp")
                .display()
        ))
        .arg(&exe)
        .arg(dir.path().join("data-valgrind"))
        .env("TMPDIR", dir.path())
        .env("NET_C_EVENTS", events);
        run(
            cmd,
            &format!("{name} under valgrind"),
            Duration::from_secs(600),
        );
    } else {
        eprintln!("valgrind not found: {name} ran without it");
    }
}

#[test]
fn happy() {
    program("tests/c/happy");
}

#[test]
fn errors() {
    program("tests/c/errors");
}

/// The example of `ffi/examples/` builds against the header and runs.
#[test]
fn example_hello() {
    program("examples/hello");
}
