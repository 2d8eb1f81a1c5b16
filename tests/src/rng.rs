//! The one seeded random number generator of the tests (xorshift64*):
//! deterministic on every platform and build, so a failing seed reproduces.
//! Tests that draw from it print their seed ([`seed_from_env`]).

/// xorshift64* (Vigna 2016): 64 bits of state; never zero.
#[derive(Debug, Clone)]
pub struct TestRng(u64);

impl TestRng {
    /// A generator for `seed` (any value: a zero state is moved off zero).
    pub fn new(seed: u64) -> TestRng {
        TestRng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Below `n` (n > 0); the modulo bias is immaterial to tests.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The seed in environment variable `var` (decimal), else `default`; printed
/// with the variable that reproduces it.
pub fn seed_from_env(var: &str, default: u64) -> u64 {
    let seed = std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    eprintln!("seed {seed} ({var}={seed} reproduces it)");
    seed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_sequence_and_zero_is_a_seed() {
        let draw = |seed| {
            let mut rng = TestRng::new(seed);
            (0..4).map(|_| rng.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert!(draw(0).iter().all(|&x| x != 0));
    }
}
