//! The properties the fuzz targets check: the stable harness's `fuzz_support` module, included
//! by path so that both run exactly the same checks.

#[path = "../../tests/fuzz_support/mod.rs"]
mod fuzz_support;

pub use fuzz_support::*;
