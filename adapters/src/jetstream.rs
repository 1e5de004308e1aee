//! jetstream
