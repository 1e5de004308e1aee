//! netd: the net appliance daemon. It runs a bus (its storage and mesh listener), the
//! configured subscriptions, sinks and folds from one JSON document, opens a Unix socket that
//! other processes on the machine publish to and read from, serves Prometheus metrics on a
//! loopback address, writes structured logs, and shuts down on SIGTERM/SIGINT with a report.
//! The operator's guide is the README's "Running netd" section and `docs/netd.md`.

pub mod client;
pub mod config;
pub mod daemon;
pub mod frame;
pub mod logging;
pub mod metrics;
pub mod ratelimit;
pub mod server;
