//! A small bounded LRU cache, weighted (entries count or bytes), safe to share between threads.
//!
//! The lock is held only for map operations, never while decrypting or querying SQLite.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex};

struct Inner<K, V> {
    map: HashMap<K, (Arc<V>, u64, usize)>,
    order: BTreeMap<u64, K>,
    tick: u64,
    weight: usize,
}

/// LRU keyed by `K`, values shared as `Arc<V>`, bounded by the sum of the weights.
pub struct LruCache<K, V> {
    inner: Mutex<Inner<K, V>>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> LruCache<K, V> {
    /// `capacity`: maximum total weight kept (entries heavier than it are not cached).
    pub fn new(capacity: usize) -> Self {
        LruCache {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: BTreeMap::new(),
                tick: 0,
                weight: 0,
            }),
            capacity,
        }
    }

    pub fn get(&self, key: &K) -> Option<Arc<V>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.tick += 1;
        let tick = inner.tick;
        let (value, old_tick) = {
            let entry = inner.map.get_mut(key)?;
            let old = entry.1;
            entry.1 = tick;
            (entry.0.clone(), old)
        };
        inner.order.remove(&old_tick);
        inner.order.insert(tick, key.clone());
        Some(value)
    }

    pub fn insert(&self, key: K, value: Arc<V>, weight: usize) {
        if weight > self.capacity {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.tick += 1;
        let tick = inner.tick;
        if let Some((_, old_tick, old_weight)) =
            inner.map.insert(key.clone(), (value, tick, weight))
        {
            inner.order.remove(&old_tick);
            inner.weight -= old_weight;
        }
        inner.order.insert(tick, key);
        inner.weight += weight;
        while inner.weight > self.capacity {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            if let Some((_, _, w)) = inner.map.remove(&oldest) {
                inner.weight -= w;
            }
        }
    }

    /// Maximum total weight.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Current total weight.
    pub fn weight(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).weight
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_by_weight() {
        let c = LruCache::new(10);
        c.insert(1, Arc::new("a"), 4);
        c.insert(2, Arc::new("b"), 4);
        assert!(c.get(&1).is_some()); // 1 becomes most recent
        c.insert(3, Arc::new("c"), 4); // evicts 2
        assert!(c.get(&2).is_none());
        assert!(c.get(&1).is_some());
        assert!(c.get(&3).is_some());
        assert_eq!(c.weight(), 8);
        c.insert(4, Arc::new("too big"), 11);
        assert!(c.get(&4).is_none());
    }
}
