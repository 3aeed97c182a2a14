//! A map whose entries leave after a retention time or once it holds more
//! than a cap, oldest first: bounded memory for idempotency replies, contact
//! paths and settled reservation ids.

use std::{collections::VecDeque, hash::Hash};

use chrono::Duration;

use crate::model::{FastMap, Time};

/// Entries keyed by `K`, forgotten by age of insertion.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(bound(
    serialize = "K: serde::Serialize + Hash + Eq, V: serde::Serialize",
    deserialize = "K: serde::Deserialize<'de> + Hash + Eq, V: serde::Deserialize<'de>"
))]
pub struct Expiring<K, V> {
    entries: FastMap<K, (Time, V)>,
    order: VecDeque<(Time, K)>,
    #[serde(with = "super::snapshot::duration_micros")]
    retention: Duration,
    cap: usize,
}

#[cfg(test)]
impl<K: Hash + Eq + Clone + Ord + std::fmt::Debug, V: std::fmt::Debug> Expiring<K, V> {
    /// The entries and their order, canonical, for tests that compare two
    /// engines' states.
    pub(super) fn fingerprint(&self) -> String {
        let mut entries: Vec<_> = self.entries.iter().collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        format!(
            "{entries:?}\n{:?}\n{:?} {}",
            self.order, self.retention, self.cap
        )
    }
}

impl<K: Hash + Eq + Clone, V> Expiring<K, V> {
    /// Keeps entries for `retention`, and at most `cap` of them.
    pub fn new(retention: Duration, cap: usize) -> Self {
        Expiring {
            entries: FastMap::default(),
            order: VecDeque::new(),
            retention,
            cap: cap.max(1),
        }
    }

    /// Changes how long entries are kept and how many; the next eviction
    /// applies them.
    pub fn set_limits(&mut self, retention: Duration, cap: usize) {
        self.retention = retention;
        self.cap = cap.max(1);
    }

    /// The value for `key`, if still kept.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key).map(|(_, v)| v)
    }

    /// The value for `key` to change, if still kept.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get_mut(key).map(|(_, v)| v)
    }

    /// The value for `key`, inserting `make()` (stamped `now`) if absent.
    pub fn get_or_insert_with(&mut self, key: K, now: Time, make: impl FnOnce() -> V) -> &mut V {
        let entry = self.entries.entry(key.clone()).or_insert_with(|| {
            self.order.push_back((now, key));
            (now, make())
        });
        &mut entry.1
    }

    /// Inserts or replaces; a replaced value keeps its original stamp.
    pub fn insert(&mut self, key: K, value: V, now: Time) {
        match self.entries.get_mut(&key) {
            Some(slot) => slot.1 = value,
            None => {
                self.order.push_back((now, key.clone()));
                self.entries.insert(key, (now, value));
            }
        }
    }

    /// Number of entries kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets entries older than the retention, then the oldest over the
    /// cap. Returns how many were forgotten before their retention ended
    /// (the cap was too small for the traffic: a promise was cut short).
    pub fn evict(&mut self, now: Time) -> u64 {
        while let Some((stamp, _)) = self.order.front() {
            if *stamp + self.retention > now {
                break;
            }
            self.forget_front();
        }
        self.trim(now)
    }

    /// Forgets the oldest entries over the cap. Returns how many of them
    /// were forgotten before their retention ended at `now`.
    pub fn trim(&mut self, now: Time) -> u64 {
        let mut early = 0;
        while self.order.len() > self.cap {
            if let Some(stamp) = self.forget_front() {
                early += u64::from(stamp + self.retention > now);
            }
        }
        early
    }

    /// Pops the oldest stamp; returns it if it was its entry's (a replaced
    /// entry keeps its first stamp, so a later one is not dropped with it).
    fn forget_front(&mut self) -> Option<Time> {
        let (stamp, key) = self.order.pop_front()?;
        if self.entries.get(&key).is_some_and(|(s, _)| *s == stamp) {
            self.entries.remove(&key);
            return Some(stamp);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn forgets_by_age_and_by_cap() {
        let t0 = Utc::now();
        let mut m = Expiring::new(Duration::seconds(10), 3);
        m.insert("a", 1, t0);
        m.insert("b", 2, t0 + Duration::seconds(5));
        assert_eq!(m.evict(t0 + Duration::seconds(9)), 0);
        assert_eq!(m.get("a"), Some(&1));
        assert_eq!(m.evict(t0 + Duration::seconds(10)), 0);
        assert_eq!(m.get("a"), None);
        assert_eq!(m.get("b"), Some(&2));
        for (i, k) in ["c", "d", "e"].into_iter().enumerate() {
            m.insert(k, i, t0 + Duration::seconds(6));
        }
        assert_eq!(m.evict(t0 + Duration::seconds(6)), 1, "b went early");
        assert_eq!(m.len(), 3);
        assert_eq!(m.get("b"), None, "oldest goes first over the cap");
        *m.get_or_insert_with("c", t0, || 99) += 10;
        assert_eq!(m.get("c"), Some(&10));
    }
}
