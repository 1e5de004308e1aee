//! `netd`: the net appliance daemon and its operator commands.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use netd::client::Client;
use netd::config::Checked;
use netd::daemon::{self, EXIT_CONFIG, EXIT_STARTUP, EXIT_USAGE};

#[derive(Debug, Parser)]
#[command(
    name = "netd",
    version,
    about = "net's appliance daemon: a bus, its local socket, metrics and logs from one config file",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Run with this configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check this configuration file, print the effective configuration, and exit.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a running netd's metrics as a table.
    Stats {
        /// Read the metrics address from this configuration file.
        #[arg(long, value_name = "FILE", conflicts_with = "metrics")]
        config: Option<PathBuf>,
        /// The metrics endpoint's address (`127.0.0.1:9464`).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Print the raw Prometheus text instead.
        #[arg(long)]
        raw: bool,
    },
    /// Print this node's mesh identity (node id and public key), creating it if missing, so a
    /// publisher can issue it a subscription token.
    Identity {
        /// The configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Publish standard input's lines as events over the socket (one event per line), then
    /// wait until all are durable.
    Publish {
        /// The socket's path.
        #[arg(long, value_name = "PATH", default_value = "/run/net/netd.sock")]
        socket: PathBuf,
        /// The key every event is sent with (it chooses the shard); default: none.
        #[arg(long, default_value = "")]
        key: String,
        /// Events per frame.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// Print events from a cursor as `shard seq payload` lines; the next cursor goes to
    /// standard error.
    Read {
        /// The socket's path.
        #[arg(long, value_name = "PATH", default_value = "/run/net/netd.sock")]
        socket: PathBuf,
        /// Where to start: a cursor printed earlier; default: the beginning.
        #[arg(long, default_value = "")]
        from: String,
        /// Most events to print (default: all there are now).
        #[arg(long)]
        max: Option<u64>,
        /// Keep waiting for new events.
        #[arg(long)]
        follow: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    ExitCode::from(match (cli.command, cli.check_config, cli.config) {
        (Some(c), _, _) => command(c),
        (None, Some(file), _) => check(&file),
        (None, None, Some(file)) => run(&file),
        (None, None, None) => {
            eprintln!("netd: give --config FILE to run, or --check-config FILE (see --help)");
            EXIT_USAGE
        }
    })
}

fn load(file: &Path) -> Result<Checked, u8> {
    Checked::from_file(file).map_err(|e| {
        eprintln!("netd: {}: {e}", file.display());
        EXIT_CONFIG
    })
}

fn check(file: &Path) -> u8 {
    match load(file) {
        Ok(c) => {
            println!("{}", c.effective_json());
            eprintln!("netd: {}: configuration is valid", file.display());
            0
        }
        Err(code) => code,
    }
}

fn run(file: &Path) -> u8 {
    let checked = match load(file) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let log = match netd::logging::init(&checked.doc.log) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("netd: {e}");
            return EXIT_STARTUP;
        }
    };
    daemon::run(checked, &log)
}

fn command(c: Command) -> u8 {
    let result = match c {
        Command::Stats {
            config,
            metrics,
            raw,
        } => stats(config.as_deref(), metrics, raw),
        Command::Identity { config } => identity(&config),
        Command::Publish { socket, key, batch } => publish(&socket, key.as_bytes(), batch),
        Command::Read {
            socket,
            from,
            max,
            follow,
        } => read(&socket, &from, max, follow),
    };
    match result {
        Ok(()) => 0,
        Err((code, what)) => {
            eprintln!("netd: {what}");
            code
        }
    }
}

type CmdResult = Result<(), (u8, String)>;

fn stats(config: Option<&Path>, metrics: Option<std::net::SocketAddr>, raw: bool) -> CmdResult {
    let addr = match (metrics, config) {
        (Some(a), _) => a,
        (None, Some(file)) => {
            let c = load(file).map_err(|code| (code, "see above".to_string()))?;
            c.doc.metrics.map(|m| m.listen).ok_or((
                EXIT_CONFIG,
                "this configuration has no metrics endpoint".into(),
            ))?
        }
        (None, None) => std::net::SocketAddr::from(([127, 0, 0, 1], 9464)),
    };
    let text = netd::metrics::scrape(addr, Duration::from_secs(5)).map_err(|e| (1, e))?;
    if raw {
        print!("{text}");
    } else {
        print!("{}", netd::metrics::table(&text));
    }
    Ok(())
}

fn identity(config: &Path) -> CmdResult {
    let c = load(config).map_err(|code| (code, "see above".to_string()))?;
    let mesh = c
        .bus
        .mesh
        .as_ref()
        .ok_or((EXIT_CONFIG, "bus.mesh is not configured".to_string()))?;
    let path = mesh
        .identity_file
        .clone()
        .unwrap_or_else(|| c.bus.data_dir.join("mesh").join("identity"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| (1, format!("{}: {e}", dir.display())))?;
    }
    let id = net_engine::Identity::load_or_generate(&path)
        .map_err(|e| (1, format!("{}: {e}", path.display())))?;
    let key: String = id.public_key().iter().map(|b| format!("{b:02x}")).collect();
    println!(
        "{}",
        serde_json::json!({"node_id": format!("{:016x}", id.node_id()), "public_key": key, "identity_file": path})
    );
    Ok(())
}

fn connect(socket: &Path) -> Result<Client, (u8, String)> {
    Client::connect(socket).map_err(|e| (1, format!("{}: {e}", socket.display())))
}

fn publish(socket: &Path, key: &[u8], batch: usize) -> CmdResult {
    let mut client = connect(socket)?;
    let stdin = std::io::stdin();
    let mut lines: Vec<Vec<u8>> = Vec::with_capacity(batch.max(1));
    let fail = |e: netd::client::ClientError| (1, e.to_string());
    let flush = |client: &mut Client, lines: &mut Vec<Vec<u8>>| -> CmdResult {
        if !lines.is_empty() {
            client
                .publish(lines.iter().map(|l| (key, l.as_slice())), false)
                .map_err(fail)?;
            lines.clear();
        }
        Ok(())
    };
    for line in stdin.lock().split(b'\n') {
        let mut line = line.map_err(|e| (1, format!("standard input: {e}")))?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        lines.push(line);
        if lines.len() >= batch.max(1) {
            flush(&mut client, &mut lines)?;
        }
    }
    flush(&mut client, &mut lines)?;
    let (through, dropped) = client.sync().map_err(fail)?;
    println!("durable through event {through} ({dropped} dropped by backpressure)");
    Ok(())
}

fn read(socket: &Path, from: &str, max: Option<u64>, follow: bool) -> CmdResult {
    let mut client = connect(socket)?;
    let mut cursor = from.to_string();
    let mut printed = 0u64;
    let out = std::io::stdout();
    let mut out = out.lock();
    loop {
        let want = max.map_or(10_000, |m| (m - printed).min(10_000));
        if want == 0 {
            break;
        }
        let wait = if follow { 1_000 } else { 0 };
        let want = u32::try_from(want).expect("at most 10 000");
        let (events, next) = client
            .read(&cursor, want, wait)
            .map_err(|e| (1, e.to_string()))?;
        cursor = next;
        for e in &events {
            let _ = writeln!(
                out,
                "{} {} {}",
                e.shard,
                e.seq,
                String::from_utf8_lossy(&e.payload)
            );
        }
        printed += events.len() as u64;
        if events.is_empty() && !follow {
            break;
        }
    }
    let _ = out.flush();
    eprintln!("cursor: {cursor}");
    Ok(())
}
