//! Choosing which of a node's free GPUs a replica gets.
//!
//! A set is better when its farthest link is closer (NVLink, then the same
//! PCIe switch, then the same NUMA node, then across the system), then when
//! its links are closer on the whole, then when taking it breaks fewer
//! close links among the GPUs left free (so the next multi-GPU task still
//! finds a tight set), then by lowest positions.

use skiff_model::gpu::{bits, Topology};

/// Subsets to enumerate at most before falling back to a greedy choice.
const EXHAUSTIVE_LIMIT: u64 = 4096;

/// The chosen GPUs (a mask) and the rank of their farthest link (0 for
/// NVLink ... 3 for system; 3 when the node reports no topology).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GpuChoice {
    pub mask: u64,
    pub worst: u8,
}

/// Cost of taking `set` out of `free`; lower is better.
fn cost(t: &Topology, set: u64, free: u64) -> (u8, u32, u32, u64) {
    let mut worst = 0u8;
    let mut sum = 0u32;
    let mut cut = 0u32;
    for a in bits(set) {
        for b in bits(set & !((2u64 << a) - 1)) {
            let r = t.level(a, b).rank();
            worst = worst.max(r);
            sum += u32::from(r);
        }
        for b in bits(free & !set) {
            cut += u32::from(3 - t.level(a, b).rank());
        }
    }
    (worst, sum, cut, set)
}

fn binomial(n: u64, k: u64) -> u64 {
    let k = k.min(n - k);
    let mut r: u64 = 1;
    for i in 0..k {
        r = r.saturating_mul(n - i) / (i + 1);
        if r > EXHAUSTIVE_LIMIT {
            return r;
        }
    }
    r
}

/// Picks `k` GPUs out of the mask `free` (which holds at least `k`).
pub(crate) fn choose(topo: Option<&Topology>, free: u64, k: u32) -> GpuChoice {
    if k == 0 {
        return GpuChoice { mask: 0, worst: 0 };
    }
    let n = free.count_ones();
    debug_assert!(n >= k, "choose needs enough free GPUs");
    let lowest = || {
        let mut m = 0u64;
        for i in bits(free).take(k as usize) {
            m |= 1 << i;
        }
        m
    };
    let Some(t) = topo else {
        return GpuChoice {
            mask: lowest(),
            worst: if k > 1 { 3 } else { 0 },
        };
    };
    if n == k {
        return GpuChoice {
            mask: free,
            worst: t.worst_level(free).rank(),
        };
    }
    let best = if binomial(u64::from(n), u64::from(k)) <= EXHAUSTIVE_LIMIT {
        exhaustive(t, free, k)
    } else {
        greedy(t, free, k)
    };
    GpuChoice {
        mask: best,
        worst: t.worst_level(best).rank(),
    }
}

fn exhaustive(t: &Topology, free: u64, k: u32) -> u64 {
    let pos: Vec<usize> = bits(free).collect();
    let k = k as usize;
    let mut idx: Vec<usize> = (0..k).collect();
    let mut best: Option<(u8, u32, u32, u64)> = None;
    loop {
        let set = idx.iter().fold(0u64, |m, &i| m | 1 << pos[i]);
        let c = cost(t, set, free);
        if best.is_none_or(|b| c < b) {
            best = Some(c);
        }
        // Next combination in lexicographic order.
        let mut i = k;
        loop {
            if i == 0 {
                return best.map_or(0, |b| b.3);
            }
            i -= 1;
            if idx[i] < pos.len() - k + i {
                break;
            }
        }
        idx[i] += 1;
        for j in i + 1..k {
            idx[j] = idx[j - 1] + 1;
        }
    }
}

/// From each starting GPU, add the GPU closest to the set so far; keep the
/// best resulting set.
fn greedy(t: &Topology, free: u64, k: u32) -> u64 {
    let mut best: Option<(u8, u32, u32, u64)> = None;
    for start in bits(free) {
        let mut set = 1u64 << start;
        for _ in 1..k {
            let mut pick: Option<((u8, u32), usize)> = None;
            for cand in bits(free & !set) {
                let mut w = 0u8;
                let mut s = 0u32;
                for m in bits(set) {
                    let r = t.level(cand, m).rank();
                    w = w.max(r);
                    s += u32::from(r);
                }
                if pick.is_none_or(|(c, _)| (w, s) < c) {
                    pick = Some(((w, s), cand));
                }
            }
            match pick {
                Some((_, c)) => set |= 1 << c,
                None => break,
            }
        }
        let c = cost(t, set, free);
        if best.is_none_or(|b| c < b) {
            best = Some(c);
        }
    }
    best.map_or(0, |b| b.3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_model::{Gpu, GpuLink, LinkLevel};

    /// Eight GPUs: NVLink within {0,1,2,3} and within {4,5,6,7}; PCIe
    /// switches pair (0,1), (2,3), ...; NUMA 0 holds 0-3, NUMA 1 holds 4-7.
    fn dgx_like() -> Topology {
        let gpus: Vec<Gpu> = (0..8)
            .map(|i| Gpu {
                uuid: format!("g{i}"),
                model: "X".into(),
                memory_bytes: 0,
                healthy: true,
                ..Gpu::default()
            })
            .collect();
        let mut links = Vec::new();
        for a in 0..8 {
            for b in a + 1..8 {
                let level = if a / 4 == b / 4 {
                    LinkLevel::NvLink
                } else {
                    LinkLevel::System
                };
                links.push(GpuLink {
                    a: format!("g{a}"),
                    b: format!("g{b}"),
                    level,
                });
            }
        }
        Topology::new(&gpus, &links)
    }

    #[test]
    fn a_multi_gpu_task_gets_an_nvlink_connected_set() {
        let t = dgx_like();
        // 0 and 4 are taken: the free NVLink groups are {1,2,3} and {5,6,7}.
        let free = 0xff & !(1 | 1 << 4);
        let c = choose(Some(&t), free, 3);
        assert_eq!(c.worst, 0);
        assert!(c.mask == 0b1110 || c.mask == 0b1110_0000, "{:b}", c.mask);
        // Four GPUs cannot all be NVLink-connected now.
        assert_eq!(choose(Some(&t), free, 4).worst, 3);
    }

    #[test]
    fn a_single_gpu_comes_from_an_already_broken_group() {
        let t = dgx_like();
        // 0 is taken: taking 1, 2 or 3 keeps the group {4..7} whole.
        let c = choose(Some(&t), 0xfe, 1);
        assert!(c.mask & 0b1110 != 0, "{:b}", c.mask);
        // A whole group is left for a 4-GPU task afterwards.
        let left = 0xfe & !c.mask;
        assert_eq!(choose(Some(&t), left, 4).worst, 0);
    }

    #[test]
    fn without_topology_the_lowest_free_gpus_are_taken() {
        let c = choose(None, 0b1011_0100, 2);
        assert_eq!(c.mask, 0b0001_0100);
        assert_eq!(c.worst, 3);
    }

    #[test]
    fn large_sets_fall_back_to_a_greedy_choice_that_still_keeps_links_close() {
        // 32 GPUs in NVLink groups of 8.
        let gpus: Vec<Gpu> = (0..32)
            .map(|i| Gpu {
                uuid: format!("g{i}"),
                model: String::new(),
                memory_bytes: 0,
                healthy: true,
                ..Gpu::default()
            })
            .collect();
        let mut links = Vec::new();
        for a in 0..32 {
            for b in a + 1..32 {
                if a / 8 == b / 8 {
                    links.push(GpuLink {
                        a: format!("g{a}"),
                        b: format!("g{b}"),
                        level: LinkLevel::NvLink,
                    });
                }
            }
        }
        let t = Topology::new(&gpus, &links);
        let c = choose(Some(&t), u64::from(u32::MAX), 8);
        assert_eq!(c.worst, 0);
        assert_eq!(c.mask.count_ones(), 8);
    }
}
