//! Arbitrary bytes into `codec::decode`, `InitPayload::decode` and `ResponsePayload::decode`:
//! none panics, and each answer is exactly what the wire format says.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    net_transport_fuzz::check_decode(data);
});
