//! What a benchmark session does next: the operation mix (YCSB-style workloads) and the
//! key chooser (uniform or scrambled zipfian), both driven by a seeded random generator so
//! that a run can be repeated.

use clap::ValueEnum;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The operation mix, after YCSB's core workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[value(rename_all = "lower")]
pub enum Workload {
    /// YCSB A: 50% reads, 50% updates.
    #[value(alias = "A")]
    A,
    /// YCSB B: 95% reads, 5% updates.
    #[value(alias = "B")]
    B,
    /// YCSB C: reads only.
    #[value(alias = "C")]
    C,
    /// Updates only.
    #[value(alias = "WRITE", alias = "w")]
    Write,
}

impl Workload {
    /// Fraction of operations that are reads, in percent.
    pub fn read_percent(self) -> u32 {
        match self {
            Workload::A => 50,
            Workload::B => 95,
            Workload::C => 100,
            Workload::Write => 0,
        }
    }

    /// The name used in reports and file names.
    pub fn name(self) -> &'static str {
        match self {
            Workload::A => "A",
            Workload::B => "B",
            Workload::C => "C",
            Workload::Write => "write",
        }
    }

    /// Picks the next operation.
    pub fn pick(self, rng: &mut impl Rng) -> OpKind {
        match self.read_percent() {
            100 => OpKind::Read,
            0 => OpKind::Update,
            percent if rng.random_range(0..100) < percent => OpKind::Read,
            _ => OpKind::Update,
        }
    }
}

/// One kind of benchmark operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// `GET` of a key.
    Read,
    /// `PUT` of a key (it may or may not exist yet).
    Update,
}

/// How keys are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// Zipfian (θ = 0.99, as YCSB), popular keys scattered over the key space.
    Zipfian,
}

/// Draws key indexes in `0..n`.
#[derive(Clone, Debug)]
pub enum KeyChooser {
    Uniform(u64),
    Zipfian(Zipfian),
}

impl KeyChooser {
    pub fn new(distribution: Distribution, keys: u64) -> Self {
        match distribution {
            Distribution::Uniform => KeyChooser::Uniform(keys.max(1)),
            Distribution::Zipfian => KeyChooser::Zipfian(Zipfian::new(keys.max(1))),
        }
    }

    pub fn pick(&self, rng: &mut impl Rng) -> usize {
        let index = match self {
            KeyChooser::Uniform(n) => rng.random_range(0..*n),
            KeyChooser::Zipfian(z) => z.scrambled(rng),
        };
        // Indexes are below the key count, which is a `usize` (the keys are in memory).
        usize::try_from(index).unwrap_or(usize::MAX)
    }
}

/// YCSB's zipfian generator (Gray et al., "Quickly generating billion-record synthetic
/// databases"): rank 0 is the most popular item.
#[derive(Clone, Debug)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

/// YCSB's default skew.
pub const ZIPFIAN_THETA: f64 = 0.99;
/// Multiplier of the rank permutation: prime, so coprime with any key count below it.
const SCRAMBLE: u64 = 2_654_435_761;

impl Zipfian {
    pub fn new(items: u64) -> Self {
        let items = items.max(1);
        let theta = ZIPFIAN_THETA;
        let zetan = zeta(items, theta);
        let zeta2 = zeta(2, theta);
        let eta = (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Zipfian {
            items,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta,
        }
    }

    /// A rank in `0..items`, rank 0 the most likely.
    pub fn rank(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 || self.items == 1 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let rank = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.items - 1)
    }

    /// A rank mapped through a fixed permutation of `0..items`, so that the popular keys
    /// are not all neighbours.
    pub fn scrambled(&self, rng: &mut impl Rng) -> u64 {
        scramble(self.rank(rng), self.items)
    }
}

/// A bijection of `0..items` (for `items` not a multiple of the prime [`SCRAMBLE`]).
pub fn scramble(rank: u64, items: u64) -> u64 {
    let product = u128::from(rank) * u128::from(SCRAMBLE) + u128::from(items / 2);
    // The remainder is below `items`, a u64.
    u64::try_from(product % u128::from(items.max(1))).unwrap_or(0)
}

fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn rng() -> SmallRng {
        SmallRng::seed_from_u64(7)
    }

    fn mix(workload: Workload, draws: usize) -> usize {
        let mut rng = rng();
        (0..draws)
            .filter(|_| workload.pick(&mut rng) == OpKind::Read)
            .count()
    }

    #[test]
    fn workloads_have_their_read_share() {
        assert_eq!(mix(Workload::C, 1000), 1000);
        assert_eq!(mix(Workload::Write, 1000), 0);
        let a = mix(Workload::A, 100_000);
        assert!((48_000..52_000).contains(&a), "A reads {a}");
        let b = mix(Workload::B, 100_000);
        assert!((94_000..96_000).contains(&b), "B reads {b}");
    }

    #[test]
    fn workload_names_parse_in_either_case() {
        assert_eq!(Workload::from_str("a", true), Ok(Workload::A));
        assert_eq!(Workload::from_str("C", false), Ok(Workload::C));
        assert_eq!(Workload::from_str("write", false), Ok(Workload::Write));
    }

    #[test]
    fn uniform_keys_cover_the_key_space() {
        let chooser = KeyChooser::new(Distribution::Uniform, 10);
        let mut rng = rng();
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[chooser.pick(&mut rng)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
    }

    #[test]
    fn zipfian_ranks_are_in_range_and_skewed() {
        let z = Zipfian::new(1000);
        let mut rng = rng();
        let mut counts = vec![0u32; 1000];
        for _ in 0..200_000 {
            counts[z.rank(&mut rng) as usize] += 1;
        }
        // With θ = 0.99 over 1000 items, rank 0 takes about 13% of the draws.
        let top = counts[0] as f64 / 200_000.0;
        assert!((0.10..0.16).contains(&top), "rank 0 share {top}");
        assert!(counts[0] > counts[1] && counts[1] > counts[10] && counts[10] > counts[500]);
        let top_ten: u32 = counts[..10].iter().sum();
        assert!(top_ten > 200_000 / 3, "top ten {top_ten}");
    }

    #[test]
    fn zipfian_of_one_item_is_always_zero() {
        let z = Zipfian::new(1);
        let mut rng = rng();
        assert!((0..100).all(|_| z.scrambled(&mut rng) == 0));
    }

    #[test]
    fn scrambling_is_a_permutation() {
        for items in [1u64, 2, 10, 1000, 4096, 99_991] {
            let mut seen = vec![false; items as usize];
            for rank in 0..items {
                let index = scramble(rank, items) as usize;
                assert!(!seen[index], "{items}: {index} twice");
                seen[index] = true;
            }
        }
        assert_ne!(scramble(0, 1000), 0, "the hottest key is moved");
    }

    #[test]
    fn scrambled_zipfian_keeps_the_skew() {
        let chooser = KeyChooser::new(Distribution::Zipfian, 1000);
        let mut rng = rng();
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[chooser.pick(&mut rng)] += 1;
        }
        let hottest = *counts.iter().max().unwrap_or(&0);
        assert!(hottest > 10_000, "hottest key {hottest}");
        assert_eq!(
            counts.iter().position(|&n| n == hottest),
            Some(scramble(0, 1000) as usize)
        );
    }
}
