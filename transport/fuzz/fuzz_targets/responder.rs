//! Arbitrary datagrams from arbitrary sources into one long-lived responder (built once per
//! process) on an increasing fake clock: each must be dropped, unanswered, never delivered as
//! a message, and the responder's real session must still deliver afterwards. The input's
//! first bytes choose the source, the clock step and some framing help (see
//! `Responder::feed`).
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use net_transport_fuzz::Responder;

thread_local! {
    static RESPONDER: RefCell<Responder> = RefCell::new(Responder::new());
}

fuzz_target!(|data: &[u8]| {
    RESPONDER.with(|r| r.borrow_mut().feed(data));
});
