//! The durable buffer: a [`seglog`] log (its crate docs hold the on-disk format, recovery and
//! invariants) whose records are the sample records of [`record`].

pub mod record;

pub use seglog::*;
