//! A fixed-size set of small integers (node or allocation positions).

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    pub fn new(len: usize) -> Bitset {
        Bitset {
            words: vec![0; len.div_ceil(64)],
        }
    }

    pub fn contains(&self, i: usize) -> bool {
        self.words
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    pub fn remove(&mut self, i: usize) {
        if let Some(w) = self.words.get_mut(i / 64) {
            *w &= !(1 << (i % 64));
        }
    }

    pub fn insert(&mut self, i: usize) {
        if i / 64 >= self.words.len() {
            self.words.resize(i / 64 + 1, 0);
        }
        self.words[i / 64] |= 1 << (i % 64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bitset_holds_what_was_inserted() {
        let mut b = Bitset::new(10);
        b.insert(3);
        b.insert(130);
        assert!(b.contains(3) && b.contains(130));
        assert!(!b.contains(4) && !b.contains(1000));
    }
}
