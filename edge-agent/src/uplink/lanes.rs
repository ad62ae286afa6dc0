//! Fresh data first: the two lanes of the uplink and the acknowledgement cursor they share.
//!
//! Normally there is one lane, the fresh lane, sending the buffer in order from the cursor.
//! When a stretch of unsent data builds up (an outage ended: up to where the buffer ended when
//! the last failed attempt began; or more than [`SPLIT_BYTES`] waits: up to the durable end),
//! `[fresh, split)` becomes a backlog range and the fresh lane jumps to the split: what
//! arrived since is sent at once, and the backlog ranges are
//! sent oldest first, behind it, at the configured rate.
//!
//! Invariants:
//!
//! - Backlog ranges are disjoint, ascending, and all lie below the fresh lane's position.
//! - Everything below the front range's next offset (or, without a backlog, below the fresh
//!   lane's position) has been acknowledged by a core: that is the buffer's durable cursor, so
//!   a record is released only once acknowledged and a crash re-sends the rest.
//! - Sequences only grow within an epoch. The backlog lane uses the buffer's epoch; so does
//!   the fresh lane while there is no backlog (one lane, contiguous from the cursor). While a
//!   backlog exists, the fresh lane uses the buffer's epoch with its top bit flipped, so its
//!   higher sequences never make the core take the backlog's lower ones for duplicates
//!   (the core keeps the last `(epoch, sequence)` per agent and calls a batch a duplicate
//!   only in the same epoch at or below it). The buffer's epoch is only ever used by a lane
//!   that runs contiguously from the cursor, so the core's resume point in that epoch is safe
//!   to skip to after a restart; one in the flipped epoch is ignored.

use crate::buffer::{Epoch, Offset};
use std::collections::VecDeque;

/// Unsent bytes beyond which the fresh lane leaves them to the backlog lane.
pub(crate) const SPLIT_BYTES: u64 = 1024 * 1024;
/// Flipped in the buffer's epoch for the fresh lane while a backlog exists.
const FRESH_EPOCH_FLIP: u64 = 1 << 63;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    Fresh,
    Backlog,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    next: Offset,
    end: Offset,
}

#[derive(Debug)]
pub(crate) struct Lanes {
    epoch: Epoch,
    fresh: Offset,
    backlog: VecDeque<Range>,
}

impl Lanes {
    pub(crate) fn new(cursor: Offset, epoch: Epoch) -> Self {
        Self {
            epoch,
            fresh: cursor,
            backlog: VecDeque::new(),
        }
    }

    pub(crate) fn fresh(&self) -> Offset {
        self.fresh
    }

    pub(crate) fn epoch(&self, lane: Lane) -> Epoch {
        match lane {
            Lane::Fresh if !self.backlog.is_empty() => Epoch(self.epoch.0 ^ FRESH_EPOCH_FLIP),
            _ => self.epoch,
        }
    }

    /// `[next, end)` of the oldest backlog range.
    pub(crate) fn backlog(&self) -> Option<(Offset, Offset)> {
        self.backlog.front().map(|r| (r.next, r.end))
    }

    pub(crate) fn backlog_bytes(&self) -> u64 {
        self.backlog.iter().map(|r| r.end.0 - r.next.0).sum()
    }

    /// Leaves `[fresh, end)` to the backlog lane; the fresh lane continues at `end`.
    pub(crate) fn split(&mut self, end: Offset) {
        if end > self.fresh {
            self.backlog.push_back(Range {
                next: self.fresh,
                end,
            });
            self.fresh = end;
        }
    }

    /// Forgets what lies below `acked` (the buffer evicted it when full).
    pub(crate) fn clamp(&mut self, acked: Offset) {
        self.fresh = self.fresh.max(acked);
        for r in &mut self.backlog {
            r.next = r.next.max(acked);
        }
        self.backlog.retain(|r| r.next < r.end);
    }

    /// Records that `lane` has delivered (or given up) everything below `end`.
    pub(crate) fn delivered(&mut self, lane: Lane, end: Offset) {
        match lane {
            Lane::Fresh => self.fresh = self.fresh.max(end),
            Lane::Backlog => {
                if let Some(front) = self.backlog.front_mut() {
                    front.next = front.next.max(end);
                    if front.next >= front.end {
                        self.backlog.pop_front();
                    }
                }
            }
        }
    }

    /// Everything below this offset has been acknowledged.
    pub(crate) fn cursor(&self) -> Offset {
        self.backlog.front().map_or(self.fresh, |r| r.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_waits_for_the_backlog_and_epochs_keep_sequences_growing() {
        let e = Epoch(7);
        let mut l = Lanes::new(Offset(0), e);
        l.delivered(Lane::Fresh, Offset(100));
        assert_eq!((l.cursor(), l.epoch(Lane::Fresh)), (Offset(100), e));
        l.split(Offset(500));
        assert_eq!(l.backlog(), Some((Offset(100), Offset(500))));
        assert_ne!(
            l.epoch(Lane::Fresh),
            e,
            "fresh lane runs ahead in its own epoch"
        );
        l.delivered(Lane::Fresh, Offset(600));
        assert_eq!(
            l.cursor(),
            Offset(100),
            "fresh acks do not release the backlog"
        );
        l.delivered(Lane::Backlog, Offset(300));
        assert_eq!(l.cursor(), Offset(300));
        l.split(Offset(900));
        assert_eq!(l.backlog_bytes(), 200 + 300);
        l.delivered(Lane::Backlog, Offset(500));
        assert_eq!(
            l.cursor(),
            Offset(600),
            "past the fresh lane's delivered stretch"
        );
        l.clamp(Offset(800));
        assert_eq!(l.backlog(), Some((Offset(800), Offset(900))));
        l.delivered(Lane::Backlog, Offset(900));
        assert_eq!((l.cursor(), l.epoch(Lane::Fresh)), (Offset(900), e));
    }
}
