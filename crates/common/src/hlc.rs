//! Hybrid logical clock: versions that order writes across gateways even when wall
//! clocks drift, as long as causally later writes observe earlier ones.
//!
//! A reading is `physical_ms << 16 | logical`. `now()` never goes backwards and never
//! repeats; `observe()` moves the clock past a version seen from elsewhere.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const LOGICAL_BITS: u32 = 16;

#[derive(Debug, Default)]
pub struct Hlc {
    last: AtomicU64,
}

impl Hlc {
    pub const fn new() -> Self {
        Self { last: AtomicU64::new(0) }
    }

    fn physical() -> u64 {
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        ms << LOGICAL_BITS
    }

    /// A new reading, strictly greater than every earlier reading and observation.
    pub fn now(&self) -> u64 {
        let phys = Self::physical();
        let mut cur = self.last.load(Ordering::Relaxed);
        loop {
            let next = if phys > cur { phys } else { cur + 1 };
            match self.last.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Move the clock past `seen` (a version read from a replica).
    pub fn observe(&self, seen: u64) {
        self.last.fetch_max(seen, Ordering::AcqRel);
    }

    /// Milliseconds since the Unix epoch encoded in a reading.
    pub fn millis(reading: u64) -> u64 {
        reading >> LOGICAL_BITS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictly_increasing_and_observes() {
        let c = Hlc::new();
        let a = c.now();
        let b = c.now();
        assert!(b > a);
        let far = (Hlc::millis(b) + 60_000) << LOGICAL_BITS;
        c.observe(far);
        assert!(c.now() > far);
    }

    #[test]
    fn concurrent_readings_are_unique() {
        let c = std::sync::Arc::new(Hlc::new());
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..10_000).map(|_| c.now()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
