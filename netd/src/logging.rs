//! netd's logs: `tracing` events from netd and every net library crate, filtered by the
//! config's `log.level` (or `RUST_LOG`, which wins), written as text or JSON lines to standard
//! error or to a file that SIGHUP reopens (for logrotate's `create` mode).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat};

/// The log file, shared by every writer, replaced on reopen.
#[derive(Debug, Clone)]
struct SharedFile(Arc<Mutex<File>>);

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // One line, one locked write: lines of two threads never interleave.
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

impl<'a> MakeWriter<'a> for SharedFile {
    type Writer = SharedFile;

    fn make_writer(&'a self) -> SharedFile {
        self.clone()
    }
}

/// What SIGHUP acts on.
#[derive(Debug, Clone)]
pub struct LogHandle {
    file: Option<(PathBuf, SharedFile)>,
}

impl LogHandle {
    /// Reopens the log file (after logrotate moved it away); nothing for standard error.
    pub fn reopen(&self) -> std::io::Result<()> {
        if let Some((path, shared)) = &self.file {
            let f = open(path)?;
            *shared.0.lock().unwrap_or_else(|e| e.into_inner()) = f;
        }
        Ok(())
    }

    /// The file written, if not standard error.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|(p, _)| p.as_path())
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Installs the process's subscriber. `RUST_LOG`, when set, overrides `config.level`.
pub fn init(config: &LogConfig) -> Result<LogHandle, String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            EnvFilter::try_new(&v).map_err(|e| format!("RUST_LOG: {e}"))?
        }
        _ => EnvFilter::try_new(&config.level).map_err(|e| format!("log.level: {e}"))?,
    };
    let registry = tracing_subscriber::registry().with(filter);
    let handle = match &config.file {
        Some(path) => {
            let f = open(path).map_err(|e| format!("log.file {}: {e}", path.display()))?;
            let shared = SharedFile(Arc::new(Mutex::new(f)));
            install(registry, config.format, shared.clone(), false)?;
            LogHandle {
                file: Some((path.clone(), shared)),
            }
        }
        None => {
            install(registry, config.format, std::io::stderr, true)?;
            LogHandle { file: None }
        }
    };
    Ok(handle)
}

fn install<S, W>(registry: S, format: LogFormat, writer: W, ansi: bool) -> Result<(), String>
where
    S: tracing::Subscriber
        + for<'a> tracing_subscriber::registry::LookupSpan<'a>
        + Send
        + Sync
        + 'static,
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let ansi = ansi && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let result = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(ansi),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(writer)
                    .with_ansi(false),
            )
            .try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}
