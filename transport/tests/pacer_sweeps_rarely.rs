//! Once the pacer's table is full of sources that are not idle, an initiation from a *new*
//! source address must not sweep the whole table each time (forged or IPv6 source addresses
//! would make that O(pacer_sources) per datagram, before any cryptography: an
//! unauthenticated CPU amplification). The table is swept at most once a second; the
//! per-call cost does not grow with the table.

use std::net::{IpAddr, Ipv6Addr};

use net_transport::pacer::Pacer;

fn ip(i: u64) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) | u128::from(i)))
}

#[test]
fn a_flood_from_new_sources_sweeps_the_table_at_most_once_a_second() {
    let sources = 4096; // the default mesh.pacer_sources
    let mut p = Pacer::new(20, 10, sources);
    // Fill the table with sources that each spent a token (not idle).
    for i in 0..sources as u64 {
        p.allow(ip(i), 0);
    }
    // 20 000 initiations from new addresses within 20 µs: at most one walk of the table.
    for i in 0..20_000u64 {
        p.allow(ip(1 << 40 | i), 1_000 + i);
    }
    assert_eq!(p.sweeps(), 1);
    assert!(p.sources() <= sources);
    // A second later the next sweep may run.
    p.allow(ip(1 << 41), 2_000_000_000);
    assert_eq!(p.sweeps(), 2);
}
