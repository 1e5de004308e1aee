//! Structure-aware: a real handshake between two fresh endpoints, real packets captured
//! (message 1, message 2, keepalives, undelivered data both ways), then the input's operations
//! (choose a packet, xor/set bytes, truncate, splice, append, overwrite the counter, redirect,
//! spoof the source, run timers; see `Scenario::run`). Only a byte-identical, never-delivered
//! data packet to its own receiver may be accepted, nothing is answered, and the session still
//! delivers fresh messages both ways at the end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use net_transport_fuzz::Scenario;

fuzz_target!(|data: &[u8]| {
    Scenario::new().run(data);
});
