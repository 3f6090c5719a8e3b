//! IPv4 subnets as nodes hold them for `network: bridge`: each node one,
//! assigned by the servers from a cluster range (a /24 each by default)
//! or given by the agent; no two nodes' subnets overlap.

use std::fmt;
use std::net::Ipv4Addr;

/// `A.B.C.D/N`, its host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    base: u32,
    prefix: u8,
}

impl Subnet {
    /// Parses `A.B.C.D/N` (N from 8 to 30, host bits zero), or says why
    /// not.
    pub fn parse(text: &str) -> Result<Subnet, String> {
        let bad = || {
            format!("{text:?} is not an IPv4 subnet A.B.C.D/N with N from 8 to 30 and the host bits zero")
        };
        let (ip, n) = text.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = n.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let base = u32::from(ip);
        if base & !mask(prefix) != 0 {
            return Err(bad());
        }
        Ok(Subnet { base, prefix })
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Its first and last address, as numbers.
    fn span(&self) -> (u64, u64) {
        let start = u64::from(self.base);
        (start, start + (1u64 << (32 - self.prefix)) - 1)
    }

    /// Whether the two share an address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let m = mask(self.prefix.min(other.prefix));
        self.base & m == other.base & m
    }

    /// The `i`th subnet of length `prefix` inside this one, if there is
    /// one.
    pub fn nth(&self, prefix: u8, i: u32) -> Option<Subnet> {
        if prefix < self.prefix || prefix > 30 {
            return None;
        }
        let count = 1u64 << (prefix - self.prefix);
        if u64::from(i) >= count {
            return None;
        }
        let step = 1u32 << (32 - prefix);
        Some(Subnet {
            base: self.base + i * step,
            prefix,
        })
    }

    /// Its first address: the bridge's own, the containers' gateway
    /// (what the CNI bridge plugin and host-local give it).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    /// How many subnets of length `prefix` this one holds.
    pub fn count(&self, prefix: u8) -> u64 {
        if prefix < self.prefix {
            0
        } else {
            1u64 << (prefix - self.prefix)
        }
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

/// The length of the subnet each node gets from the cluster range.
pub const NODE_PREFIX: u8 = 24;

/// The first /24 of `range` that overlaps none of `taken`.
pub fn first_free(range: &Subnet, taken: &[Subnet]) -> Option<Subnet> {
    let prefix = NODE_PREFIX.max(range.prefix());
    // The taken addresses as sorted, merged intervals: each candidate is
    // checked against the one interval that can hold it, so a burst of
    // registrations is not quadratic in the nodes.
    let mut spans: Vec<(u64, u64)> = taken.iter().map(Subnet::span).collect();
    spans.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        match merged.last_mut() {
            Some(last) if start <= last.1 + 1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let mut next = 0;
    (0..range.count(prefix).min(u64::from(u32::MAX)) as u32)
        .filter_map(|i| range.nth(prefix, i))
        .find(|s| {
            let (start, end) = s.span();
            while next < merged.len() && merged[next].1 < start {
                next += 1;
            }
            next == merged.len() || merged[next].0 > end
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_overlap_and_are_handed_out_in_order() {
        let range = Subnet::parse("10.88.0.0/16").unwrap();
        assert_eq!(range.to_string(), "10.88.0.0/16");
        for bad in [
            "10.88.0.1/16",
            "10.88.0.0",
            "10.88.0.0/31",
            "fd00::/64",
            "x/24",
        ] {
            assert!(
                Subnet::parse(bad).unwrap_err().contains("IPv4 subnet"),
                "{bad}"
            );
        }
        let a = Subnet::parse("10.88.0.0/24").unwrap();
        let b = Subnet::parse("10.88.1.0/24").unwrap();
        assert!(range.overlaps(&a) && a.overlaps(&range));
        assert!(!a.overlaps(&b));
        assert_eq!(first_free(&range, &[]).unwrap(), a);
        assert_eq!(first_free(&range, &[a]).unwrap(), b);
        let wide = Subnet::parse("10.88.0.0/23").unwrap();
        assert_eq!(
            first_free(&range, &[wide]).unwrap().to_string(),
            "10.88.2.0/24"
        );
        let tiny = Subnet::parse("10.1.2.0/24").unwrap();
        assert_eq!(first_free(&tiny, &[]).unwrap(), tiny);
        assert!(first_free(&tiny, &[tiny]).is_none());
    }

    #[test]
    fn the_first_free_subnet_skips_every_taken_one_in_any_order() {
        let range = Subnet::parse("10.0.0.0/16").unwrap();
        let p = |t: &str| Subnet::parse(t).unwrap();
        // Taken out of order, one bigger than a node's, one outside.
        let taken = [
            p("10.0.2.0/24"),
            p("10.0.0.0/24"),
            p("10.0.4.0/23"),
            p("10.0.1.0/24"),
            p("192.168.0.0/24"),
        ];
        assert_eq!(first_free(&range, &taken), Some(p("10.0.3.0/24")));
        let more = [&taken[..], &[p("10.0.3.0/24")]].concat();
        assert_eq!(first_free(&range, &more), Some(p("10.0.6.0/24")));
        // The same answer as checking every taken subnet, for many.
        let many: Vec<Subnet> = (0..300u32)
            .filter(|i| i % 7 != 3)
            .filter_map(|i| range.nth(24, i))
            .collect();
        let slow = (0..256u32)
            .filter_map(|i| range.nth(24, i))
            .find(|s| !many.iter().any(|t| t.overlaps(s)));
        assert_eq!(first_free(&range, &many), slow);
        assert!(first_free(&p("10.0.0.0/24"), &[p("10.0.0.0/24")]).is_none());
    }
}
