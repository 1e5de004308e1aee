//! The publisher's process, seen from the bench: `net-bench mesh-node --spec <json>` started
//! as a child, told what to do in lines on its stdin, answering in lines on its stdout
//! (`<TAG> <rest>`); its stderr is the bench's. The handle kills the child when dropped
//! before it exited (any failure of the bench), so no publisher outlives a run.

use crate::Failure;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The child's process, its stdin, and its stdout's lines (read by a thread, so that every
/// wait for a line has a deadline).
#[derive(Debug)]
pub struct NodeProcess {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl NodeProcess {
    /// Starts this executable as `mesh-node --spec <spec>`.
    pub fn spawn(spec: &serde_json::Value) -> Result<NodeProcess, Failure> {
        let exe = std::env::current_exe().map_err(Failure::io("locating net-bench"))?;
        let mut child = Command::new(&exe)
            .arg("mesh-node")
            .arg("--spec")
            .arg(spec.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(Failure::io(format!("starting {} mesh-node", exe.display())))?;
        let stdin = child.stdin.take().expect("stdin was piped");
        let stdout = child.stdout.take().expect("stdout was piped");
        let (tx, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name("mesh-node-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            })
            .map_err(Failure::io("spawning the child's stdout reader"))?;
        Ok(NodeProcess {
            child,
            stdin,
            lines,
        })
    }

    /// Sends one command line (`line` ends with a newline). Writes the bytes as they are
    /// (the pipe is unbuffered): nothing is allocated, so it may be called in a measured
    /// window.
    pub fn send(&mut self, line: &'static str) -> Result<(), Failure> {
        debug_assert!(line.ends_with('\n'));
        self.stdin
            .write_all(line.as_bytes())
            .map_err(|e| Failure::io(format!("telling the publisher {}", line.trim_end()))(e))
    }

    /// Waits up to `timeout` for the line tagged `tag`, returning the rest of it. Other lines
    /// are echoed to stderr; an exit or a silent child is a failure.
    pub fn expect(&mut self, tag: &str, timeout: Duration) -> Result<String, Failure> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => match line.split_once(' ') {
                    Some((t, rest)) if t == tag => return Ok(rest.to_owned()),
                    _ if line == tag => return Ok(String::new()),
                    _ => eprintln!("mesh-node: {line}"),
                },
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(Failure::Verification(format!(
                        "the publisher process sent no {tag} line in {timeout:?}"
                    )));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().map_err(Failure::io("waiting for it"))?;
                    return Err(Failure::Verification(format!(
                        "the publisher process ended ({status}) before its {tag} line"
                    )));
                }
            }
        }
    }

    /// Whether the child has exited (a `waitpid` that does not wait; allocates nothing).
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the child to exit, and requires success.
    pub fn wait(mut self, timeout: Duration) -> Result<(), Failure> {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .child
                .try_wait()
                .map_err(Failure::io("waiting for the publisher"))?
            {
                Some(status) if status.success() => return Ok(()),
                Some(status) => {
                    return Err(Failure::Verification(format!(
                        "the publisher process failed ({status})"
                    )));
                }
                None if Instant::now() >= deadline => {
                    return Err(Failure::Verification(format!(
                        "the publisher process did not exit within {timeout:?}"
                    )));
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
