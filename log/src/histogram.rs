//! A lock-free histogram with power-of-two buckets, cheap enough for the writer's critical path
//! and readable from any thread (metrics endpoints render it as a Prometheus histogram).

use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets of the wide default set: bucket `i` counts values `v` with `2^(i-1) < v <= 2^i`
/// (bucket 0: `v <= 1`), the last bucket everything larger.
pub const POW2_BUCKETS: usize = 40;

/// Counts of values by power-of-two upper bound, plus their count and sum.
///
/// `UNIT` scales the bounds (bucket `i` counts `v <= UNIT * 2^i`) and `N` is the number of
/// buckets, the last one unbounded. The wide default (`UNIT` 1, 40 buckets) is rendered up to
/// its highest non-empty bucket; a narrow fixed set such as etcd's (see [`WalFsyncHistogram`])
/// is rendered whole, so every series exists from the first scrape, as etcd's do.
#[derive(Debug)]
pub struct Pow2Histogram<const UNIT: u64 = 1, const N: usize = POW2_BUCKETS> {
    buckets: [AtomicU64; N],
    count: AtomicU64,
    sum: AtomicU64,
}

/// Microseconds of one group commit (write + fdatasync) in the buckets of etcd's
/// `etcd_disk_wal_fsync_duration_seconds`: 1 ms, 2 ms, … 8.192 s (14 bounds), then +Inf.
pub type WalFsyncHistogram = Pow2Histogram<1000, 15>;

impl<const UNIT: u64, const N: usize> Default for Pow2Histogram<UNIT, N> {
    fn default() -> Self {
        Pow2Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }
}

impl<const UNIT: u64, const N: usize> Pow2Histogram<UNIT, N> {
    /// Records one value.
    pub fn record(&self, value: u64) {
        // v <= UNIT * 2^i  <=>  ceil(v / UNIT) <= 2^i, as 2^i is a whole number.
        let units = value.div_ceil(UNIT);
        let bucket = (64 - units.saturating_sub(1).leading_zeros() as usize).min(N - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// `(upper bound, cumulative count)` per bucket (the last bucket's bound is `u64::MAX`) —
    /// for the wide default set only up to the highest non-empty one — then the total count and
    /// the sum.
    pub fn cumulative(&self) -> (Vec<(u64, u64)>, u64, u64) {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let top = if N >= POW2_BUCKETS {
            counts.iter().rposition(|&c| c > 0).unwrap_or(0)
        } else {
            N - 1
        };
        let mut running = 0;
        let buckets = counts[..=top]
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                running += c;
                let bound = if i == N - 1 { u64::MAX } else { UNIT << i };
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
        let h: Pow2Histogram = Pow2Histogram::default();
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

    #[test]
    fn wal_fsync_buckets_are_etcds_and_always_all_there() {
        let h = WalFsyncHistogram::default();
        // 1 ms is in the 1 ms bucket, 1 µs more is not; 10 s is beyond 8.192 s.
        for us in [40, 1000, 1001, 8_192_000, 10_000_000] {
            h.record(us);
        }
        let (buckets, count, _) = h.cumulative();
        let bounds: Vec<u64> = buckets.iter().map(|b| b.0).collect();
        let etcd: Vec<u64> = (0..14).map(|k| 1000 << k).collect();
        assert_eq!(&bounds[..14], &etcd[..]);
        assert_eq!(bounds[14], u64::MAX);
        assert_eq!(buckets[0].1, 2); // 40 µs, 1 ms
        assert_eq!(buckets[1].1, 3); // 1.001 ms
        assert_eq!(buckets[13].1, 4); // 8.192 s
        assert_eq!((buckets[14].1, count), (5, 5));
    }
}
