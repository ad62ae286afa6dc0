//! The durable buffer: a [`seglog`] log (its crate docs hold the on-disk format, recovery and
//! invariants) whose records are the sample records of [`record`], bounded in bytes with a
//! per-rule overflow policy ([`overflow`]).

pub mod overflow;
pub mod record;

pub use seglog::*;
