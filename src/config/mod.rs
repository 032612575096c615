//! The configuration: a pure, synchronous object graph with NetScaler's rules.
//!
//! No tokio, no I/O, no clock here.

pub mod snapshot;
