//! A small time-bounded cache for the facts authorization looks up on
//! GitHub (a user's repository permission, team memberships). Pure: the
//! caller passes the time in, so expiry is tested without waiting.
//!
//! A permission revoked on GitHub must stop working soon, so an answer is
//! kept at most [`MAX_TTL`] (SPEC: "permissions cached at most 60 s"),
//! whatever the caller asks for.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// The longest an answer is kept.
pub const MAX_TTL: Duration = Duration::from_secs(60);

/// Entries kept before expired ones are swept (and, if still full, the
/// oldest dropped), so a flood of distinct commenters cannot grow memory
/// without bound.
pub const DEFAULT_CAPACITY: usize = 4096;

/// Answers keyed by `K`, each fresh for `ttl` after it was stored.
#[derive(Debug)]
pub struct TtlCache<K, V> {
    ttl: chrono::Duration,
    capacity: usize,
    entries: HashMap<K, (V, DateTime<Utc>)>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// `ttl` is capped at [`MAX_TTL`].
    pub fn new(ttl: Duration) -> Self {
        Self::with_capacity(ttl, DEFAULT_CAPACITY)
    }

    pub fn with_capacity(ttl: Duration, capacity: usize) -> Self {
        let ttl = ttl.min(MAX_TTL);
        TtlCache {
            ttl: chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::zero()),
            capacity: capacity.max(1),
            entries: HashMap::new(),
        }
    }

    /// The stored answer if it is still fresh at `now`. An entry stored "in
    /// the future" (the clock went back) is not trusted.
    pub fn get(&self, key: &K, now: DateTime<Utc>) -> Option<V> {
        let (value, at) = self.entries.get(key)?;
        let age = now - *at;
        (age >= chrono::Duration::zero() && age < self.ttl).then(|| value.clone())
    }

    pub fn put(&mut self, key: K, value: V, now: DateTime<Utc>) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let ttl = self.ttl;
            self.entries.retain(|_, (_, at)| {
                let age = now - *at;
                age >= chrono::Duration::zero() && age < ttl
            });
            if self.entries.len() >= self.capacity
                && let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (value, now));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn answers_are_fresh_for_the_ttl_only() {
        let mut c = TtlCache::new(Duration::from_secs(60));
        c.put("alice", "write", t(0));
        assert_eq!(c.get(&"alice", t(0)), Some("write"));
        assert_eq!(c.get(&"alice", t(59)), Some("write"));
        assert_eq!(c.get(&"alice", t(60)), None, "60 s is the limit");
        assert_eq!(c.get(&"bob", t(1)), None);
    }

    #[test]
    fn a_longer_ttl_is_capped_at_sixty_seconds() {
        let mut c = TtlCache::new(Duration::from_secs(3600));
        c.put(1, true, t(0));
        assert_eq!(c.get(&1, t(59)), Some(true));
        assert_eq!(c.get(&1, t(61)), None);
    }

    #[test]
    fn a_clock_that_went_back_does_not_trust_the_entry() {
        let mut c = TtlCache::new(Duration::from_secs(60));
        c.put(1, true, t(100));
        assert_eq!(c.get(&1, t(50)), None);
    }

    #[test]
    fn a_new_answer_replaces_the_old() {
        let mut c = TtlCache::new(Duration::from_secs(60));
        c.put("alice", "write", t(0));
        c.put("alice", "read", t(30));
        assert_eq!(c.get(&"alice", t(80)), Some("read"));
    }

    #[test]
    fn a_full_cache_sweeps_expired_then_drops_the_oldest() {
        let mut c = TtlCache::with_capacity(Duration::from_secs(60), 2);
        c.put(1, 'a', t(0));
        c.put(2, 'b', t(10));
        c.put(3, 'c', t(65)); // 1 expired and goes
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&2, t(65)), Some('b'));
        c.put(4, 'd', t(66)); // nothing expired: the oldest (2) goes
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&2, t(66)), None);
        assert_eq!(c.get(&3, t(66)), Some('c'));
        assert_eq!(c.get(&4, t(66)), Some('d'));
    }
}
