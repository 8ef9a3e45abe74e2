//! Shares of a bound per key (a connection, a caller): how much each key holds now, each at
//! most a limit. Load shedding counts calls in progress with it, the request reader bytes being
//! read. An entry lives only while something of its key is held, so the map is no larger than
//! what is in progress.

use std::hash::Hash;
use std::sync::Arc;

use dashmap::DashMap;

/// What each key holds, each at most `limit`.
#[derive(Debug)]
pub struct PerKey<K: Eq + Hash> {
    held: DashMap<K, u64>,
    limit: u64,
}

impl<K: Eq + Hash + Clone> PerKey<K> {
    /// Each key may hold at most `limit` (at least 1).
    pub fn new(limit: u64) -> Self {
        Self { held: DashMap::new(), limit: limit.max(1) }
    }

    /// `amount` more for `key`, or `None` when that would take it over the limit.
    pub fn try_acquire(self: &Arc<Self>, key: K, amount: u64) -> Option<KeyPermit<K>> {
        self.try_add(&key, amount).then(|| KeyPermit { owner: self.clone(), key, amount })
    }

    fn try_add(&self, key: &K, amount: u64) -> bool {
        let mut held = self.held.entry(key.clone()).or_insert(0);
        if held.saturating_add(amount) > self.limit {
            let empty = *held == 0;
            drop(held);
            if empty {
                self.held.remove_if(key, |_, held| *held == 0);
            }
            return false;
        }
        *held += amount;
        true
    }

    /// What `key` holds now.
    #[cfg(test)]
    pub fn held(&self, key: &K) -> u64 {
        self.held.get(key).map_or(0, |h| *h)
    }
}

/// A share of one key; given back when dropped.
#[derive(Debug)]
pub struct KeyPermit<K: Eq + Hash + Clone> {
    owner: Arc<PerKey<K>>,
    key: K,
    amount: u64,
}

impl<K: Eq + Hash + Clone> KeyPermit<K> {
    /// Takes `amount` more into this share; `false`, taking nothing, when the key would go
    /// over its limit.
    pub fn try_grow(&mut self, amount: u64) -> bool {
        let grown = self.owner.try_add(&self.key, amount);
        if grown {
            self.amount += amount;
        }
        grown
    }
}

impl<K: Eq + Hash + Clone> Drop for KeyPermit<K> {
    fn drop(&mut self) {
        let amount = self.amount;
        self.owner.held.remove_if_mut(&self.key, |_, held| {
            *held -= amount;
            *held == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_holds_at_most_its_limit_and_gives_back_what_it_held() {
        let per_key = Arc::new(PerKey::new(10));
        let mut a = per_key.try_acquire("a", 6).expect("within the limit");
        assert!(per_key.try_acquire("a", 5).is_none(), "6 + 5 is over 10");
        assert_eq!(per_key.held(&"a"), 6, "a refusal takes nothing");
        let b = per_key.try_acquire("b", 10).expect("another key has its own limit");
        assert!(a.try_grow(4));
        assert!(!a.try_grow(1), "10 held");
        assert_eq!(per_key.held(&"a"), 10);
        drop(a);
        assert_eq!(per_key.held(&"a"), 0);
        assert!(!per_key.held.contains_key("a"), "an empty key leaves the map");
        drop(b);
        assert!(per_key.held.is_empty());
        assert!(per_key.try_acquire("c", 11).is_none());
        assert!(per_key.held.is_empty(), "a refused first share leaves no entry");
    }
}
