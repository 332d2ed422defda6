//! A lock-free histogram with power-of-two buckets, cheap enough for the writer's critical path
//! and readable from any thread (metrics endpoints render it as a Prometheus histogram).

use std::sync::atomic::{AtomicU64, Ordering};

/// Number of buckets: bucket `i` counts values `v` with `2^(i-1) < v <= 2^i` (bucket 0: `v <= 1`),
/// the last bucket everything larger.
pub const POW2_BUCKETS: usize = 40;

/// Counts of values by power-of-two upper bound, plus their count and sum.
#[derive(Debug)]
pub struct Pow2Histogram {
    buckets: [AtomicU64; POW2_BUCKETS],
    count: AtomicU64,
    sum: AtomicU64,
}

impl Default for Pow2Histogram {
    fn default() -> Self {
        Pow2Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }
}

impl Pow2Histogram {
    /// Records one value.
    pub fn record(&self, value: u64) {
        let bucket = (64 - value.saturating_sub(1).leading_zeros() as usize).min(POW2_BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// `(upper bound, cumulative count)` per bucket up to the highest non-empty one (the last
    /// bucket's bound is `u64::MAX`), then the total count and the sum.
    pub fn cumulative(&self) -> (Vec<(u64, u64)>, u64, u64) {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let top = counts.iter().rposition(|&c| c > 0).unwrap_or(0);
        let mut running = 0;
        let buckets = counts[..=top]
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                running += c;
                let bound = if i == POW2_BUCKETS - 1 {
                    u64::MAX
                } else {
                    1u64 << i
                };
                (bound, running)
            })
            .collect();
        (
            buckets,
            self.count.load(Ordering::Relaxed),
            self.sum.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_bucket_of_their_power_of_two_bound() {
        let h = Pow2Histogram::default();
        for v in [0, 1, 2, 3, 4, 5, 1000] {
            h.record(v);
        }
        let (buckets, count, sum) = h.cumulative();
        assert_eq!((count, sum), (7, 1015));
        assert_eq!(buckets[0], (1, 2)); // 0, 1
        assert_eq!(buckets[1], (2, 3)); // 2
        assert_eq!(buckets[2], (4, 5)); // 3, 4
        assert_eq!(buckets[3], (8, 6)); // 5
        assert_eq!(*buckets.last().unwrap(), (1024, 7)); // 1000
    }
}
