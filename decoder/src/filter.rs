//! A set of 64-bit hashes that may answer "present" for an absent one but
//! never "absent" for a present one: a Bloom filter that grows by adding
//! layers, each twice the size of the one before.
//!
//! The stream keeps the row keys and owner names its row state holds so
//! that a batch of new names needs no read first (see the store). A wrong
//! "present" costs one read; a wrong "absent" would cost a wrong plan, so
//! only the first kind of error is allowed. A hash set of the same hashes
//! took about 50 bytes per record (two sets, buckets at 7/8 load, doubled
//! on growth); this takes about 4 (16 bits per hash, two filters). Each
//! full layer answers "present" for about 1 in 400 absent hashes, all the
//! layers of a million hashes for about 1 in 100.
//!
//! Written here because it is twenty lines over hashes the caller already
//! has, where the Bloom filter crates hash their items again and size
//! themselves once.

/// Bits per item: with [`PROBES`] probes, about 0.24 % false positives
/// per full layer.
const BITS_PER_ITEM: usize = 16;
/// Bits set and tested per item.
const PROBES: usize = 4;
/// Items the first layer holds before the next is added.
const FIRST_CAPACITY: usize = 1 << 14;

/// Hashes, answered "maybe present" or "absent" (see the module).
#[derive(Debug, Default)]
pub struct HashFilter {
    layers: Vec<Layer>,
}

#[derive(Debug)]
struct Layer {
    bits: Vec<u64>,
    capacity: usize,
    len: usize,
}

impl Layer {
    fn new(capacity: usize) -> Layer {
        Layer {
            bits: vec![0; capacity * BITS_PER_ITEM / 64],
            capacity,
            len: 0,
        }
    }

    /// The bit positions of `hash`, by double hashing over a remix (the
    /// caller's hashes may be weak in some bits).
    fn positions(&self, hash: u64) -> [usize; PROBES] {
        let mixed = mix(hash);
        let step = mix(hash ^ 0x9e37_79b9_7f4a_7c15) | 1;
        let mask = (self.bits.len() * 64 - 1) as u64;
        std::array::from_fn(|i| (mixed.wrapping_add((i as u64).wrapping_mul(step)) & mask) as usize)
    }

    fn contains(&self, hash: u64) -> bool {
        self.positions(hash)
            .iter()
            .all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }

    fn insert(&mut self, hash: u64) {
        for p in self.positions(hash) {
            self.bits[p / 64] |= 1 << (p % 64);
        }
        self.len += 1;
    }
}

/// The finaliser of SplitMix64: every input bit moves every output bit.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl HashFilter {
    /// Whether `hash` may have been inserted (`false`: it was not).
    pub fn contains(&self, hash: u64) -> bool {
        self.layers.iter().any(|l| l.contains(hash))
    }

    /// Adds `hash`; returns whether it was absent before.
    pub fn insert(&mut self, hash: u64) -> bool {
        if self.contains(hash) {
            return false;
        }
        if self.layers.last().is_none_or(|l| l.len >= l.capacity) {
            let capacity = self
                .layers
                .last()
                .map_or(FIRST_CAPACITY, |l| l.capacity * 2);
            self.layers.push(Layer::new(capacity));
        }
        if let Some(layer) = self.layers.last_mut() {
            layer.insert(hash);
        }
        true
    }

    /// Hashes inserted (those found already present not counted).
    pub fn len(&self) -> usize {
        self.layers.iter().map(|l| l.len).sum()
    }

    /// Whether nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Bytes of the bit arrays.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.bits.len() * 8).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct pseudo-random hashes (SplitMix64's sequence).
    fn hashes(seed: u64, n: usize) -> Vec<u64> {
        (0..n as u64).map(|i| mix(seed.wrapping_add(i))).collect()
    }

    #[test]
    fn every_inserted_hash_is_found_across_layers() {
        let mut f = HashFilter::default();
        let inserted = hashes(1, 300_000);
        for h in &inserted {
            f.insert(*h);
        }
        assert!(f.layers.len() > 3, "{} layers", f.layers.len());
        assert!(inserted.iter().all(|h| f.contains(*h)));
    }

    #[test]
    fn absent_hashes_are_rarely_taken_for_present() {
        let mut f = HashFilter::default();
        for h in hashes(1, 300_000) {
            f.insert(h);
        }
        let absent = hashes(1 << 40, 100_000);
        let wrong = absent.iter().filter(|h| f.contains(**h)).count();
        // About 0.24 % per full layer, five layers here: 1.5 % leaves room
        // for the luck of one run.
        assert!(wrong < 1_500, "{wrong} of 100,000 absent hashes found");
    }

    #[test]
    fn weak_hashes_that_differ_in_high_bits_only_stay_apart() {
        let mut f = HashFilter::default();
        for i in 0..10_000u64 {
            f.insert(i << 40);
        }
        let wrong = (10_000..20_000u64).filter(|i| f.contains(i << 40)).count();
        assert!(wrong < 100, "{wrong} of 10,000");
    }

    #[test]
    fn a_repeated_hash_is_counted_once_and_memory_stays_near_two_bytes_per_hash() {
        let mut f = HashFilter::default();
        assert!(f.is_empty() && !f.contains(7));
        assert!(f.insert(7));
        assert!(!f.insert(7));
        assert_eq!(f.len(), 1);
        for h in hashes(3, 1_000_000) {
            f.insert(h);
        }
        // Hashes wrongly found present are not added (about 1 %).
        assert!(f.len() > 980_000 && f.len() <= 1_000_001, "{}", f.len());
        // Layers double: at most twice the last layer's need, 2 bytes each.
        assert!(f.bytes() <= 4 * 2 * 1_000_000, "{} bytes", f.bytes());
    }
}
