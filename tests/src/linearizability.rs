//! A linearizability checker for histories of register operations, with
//! the Wing-Gong search and Lowe's memoization (the algorithm porcupine
//! and etcd's robustness tests use), partitioned per key.
//!
//! An operation that timed out, or whose fate is otherwise unknown, is
//! recorded with no return time: it may take effect at any point after it
//! was called, or never (placing it after everything else is the same as
//! never for a register no later read observed).

use std::collections::{BTreeMap, HashSet};

/// One operation on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub key: String,
    pub kind: OpKind,
    /// When the client called, in nanoseconds from any fixed origin.
    pub call: u64,
    /// When the answer arrived; `None` when it never did.
    pub ret: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    /// Set the register to a value.
    Write(String),
    /// Read the register; `None` when it was absent.
    Read(Option<String>),
}

/// The verdict for a whole history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// The first key whose history has no linearization.
    Illegal {
        key: String,
    },
}

/// Checks every key's history; all must be linearizable.
pub fn check(history: &[Op]) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    for (key, ops) in by_key {
        if !check_register(&ops) {
            return Verdict::Illegal {
                key: key.to_string(),
            };
        }
    }
    Verdict::Linearizable
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    time: u64,
}

/// A small bitset over operation indexes.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

fn check_register(ops: &[&Op]) -> bool {
    let n = ops.len();
    // Events in time order; at equal times, returns before calls, so that
    // operations touching at a single instant are not taken as concurrent.
    let mut events: Vec<Event> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push(Event {
            op: i,
            is_call: true,
            time: op.call,
        });
        events.push(Event {
            op: i,
            is_call: false,
            time: op.ret.unwrap_or(u64::MAX),
        });
    }
    events.sort_by_key(|e| (e.time, e.is_call, e.op));
    // A doubly linked list over the events, with a head sentinel at len.
    let len = events.len();
    let head = len;
    let mut next: Vec<usize> = (1..=len).collect(); // len means "end"
    next.push(0);
    let mut prev: Vec<usize> = std::iter::once(head).chain(0..len - 1).collect();
    prev.push(head);
    next[head] = 0;
    let end = len;
    // Where each operation's return event sits.
    let mut ret_of = vec![0usize; n];
    for (i, e) in events.iter().enumerate() {
        if !e.is_call {
            ret_of[e.op] = i;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = nx;
        if nx != end {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = i;
        if nx != end {
            prev[nx] = i;
        }
    };

    let mut state: Option<String> = None;
    let mut linearized = Bits::new(n);
    let mut cache: HashSet<(Bits, Option<String>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut cur = next[head];
    while next[head] != end {
        // Reaching the end of the list, or a return whose call is not
        // linearized yet, means this branch failed: undo the last choice
        // and try the next candidate after it.
        if cur == end || !events[cur].is_call {
            let Some((call, before)) = stack.pop() else {
                return false;
            };
            state = before;
            linearized.clear(events[call].op);
            relink(&mut next, &mut prev, ret_of[events[call].op]);
            relink(&mut next, &mut prev, call);
            cur = next[call];
            continue;
        }
        let e = events[cur];
        let op = ops[e.op];
        let (ok, after) = match &op.kind {
            OpKind::Write(v) => (true, Some(v.clone())),
            OpKind::Read(seen) => (*seen == state, state.clone()),
        };
        if ok {
            let mut lin = linearized.clone();
            lin.set(e.op);
            if cache.insert((lin.clone(), after.clone())) {
                stack.push((cur, state.clone()));
                state = after;
                linearized = lin;
                unlink(&mut next, &mut prev, cur);
                unlink(&mut next, &mut prev, ret_of[e.op]);
                cur = next[head];
                continue;
            }
        }
        cur = next[cur];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(key: &str, v: &str, call: u64, ret: Option<u64>) -> Op {
        Op {
            key: key.into(),
            kind: OpKind::Write(v.into()),
            call,
            ret,
        }
    }
    fn r(key: &str, v: Option<&str>, call: u64, ret: u64) -> Op {
        Op {
            key: key.into(),
            kind: OpKind::Read(v.map(str::to_string)),
            call,
            ret: Some(ret),
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            w("k", "a", 0, Some(10)),
            r("k", Some("a"), 20, 30),
            w("k", "b", 40, Some(50)),
            r("k", Some("b"), 60, 70),
        ];
        assert_eq!(check(&h), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let h = [
            w("k", "a", 0, Some(10)),
            w("k", "b", 20, Some(30)),
            r("k", Some("a"), 40, 50),
        ];
        assert_eq!(check(&h), Verdict::Illegal { key: "k".into() });
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        // The read overlaps both writes: it may see a or b.
        let h = [
            w("k", "a", 0, Some(100)),
            w("k", "b", 10, Some(90)),
            r("k", Some("a"), 50, 60),
        ];
        assert_eq!(check(&h), Verdict::Linearizable);
        let h = [
            w("k", "a", 0, Some(100)),
            w("k", "b", 10, Some(90)),
            r("k", Some("b"), 50, 60),
        ];
        assert_eq!(check(&h), Verdict::Linearizable);
    }

    #[test]
    fn reads_may_not_flip_back_and_forth() {
        let h = [
            w("k", "a", 0, Some(100)),
            w("k", "b", 0, Some(100)),
            r("k", Some("a"), 10, 20),
            r("k", Some("b"), 30, 40),
            r("k", Some("a"), 50, 60),
        ];
        assert_eq!(check(&h), Verdict::Illegal { key: "k".into() });
    }

    #[test]
    fn a_timed_out_write_may_apply_late_or_never() {
        let never = [
            w("k", "a", 0, Some(10)),
            w("k", "x", 20, None),
            r("k", Some("a"), 30, 40),
        ];
        assert_eq!(check(&never), Verdict::Linearizable);
        let late = [
            w("k", "a", 0, Some(10)),
            w("k", "x", 20, None),
            r("k", Some("a"), 30, 40),
            r("k", Some("x"), 50, 60),
        ];
        assert_eq!(check(&late), Verdict::Linearizable);
        // But not before it was called.
        let early = [r("k", Some("x"), 0, 10), w("k", "x", 20, None)];
        assert_eq!(check(&early), Verdict::Illegal { key: "k".into() });
    }

    #[test]
    fn a_read_of_nothing_before_any_write_is_fine_and_keys_are_independent() {
        let h = [
            r("a", None, 0, 5),
            w("a", "1", 10, Some(20)),
            r("b", None, 30, 40),
            r("a", Some("1"), 50, 60),
        ];
        assert_eq!(check(&h), Verdict::Linearizable);
    }

    #[test]
    fn larger_concurrent_histories_finish_quickly() {
        // 8 clients, 200 operations on one key, overlapping in pairs.
        let mut h = Vec::new();
        let mut last = None;
        for i in 0..200u64 {
            let t = i * 10;
            if i % 3 == 0 {
                h.push(w("k", &i.to_string(), t, Some(t + 15)));
                last = Some(i.to_string());
            } else {
                h.push(r("k", last.as_deref(), t + 16, t + 18));
            }
        }
        assert_eq!(check(&h), Verdict::Linearizable);
    }
}
