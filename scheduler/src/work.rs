//! A count of the scheduler's work, for tests to pin: how many nodes the
//! placement walks looked at on this thread. Deterministic (unlike time),
//! so a change that makes each placement look at many more nodes fails a
//! test instead of landing unnoticed.

use std::cell::Cell;

thread_local! {
    static VISITED: Cell<u64> = const { Cell::new(0) };
}

/// Notes `n` nodes looked at.
pub(crate) fn visited(n: u64) {
    VISITED.with(|v| v.set(v.get() + n));
}

/// Nodes looked at on this thread since the last [`reset`].
pub fn nodes_visited() -> u64 {
    VISITED.with(Cell::get)
}

/// Starts the count again.
pub fn reset() {
    VISITED.with(|v| v.set(0));
}
