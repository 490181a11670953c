//! Inode numbers of the mount: one per (view, entry) pair the kernel holds. A view is the
//! workspace at one instant: view 0 is the mount's time T, the others are the `/.history/<T>/`
//! folders.
//!
//! The table is bounded by what the kernel caches, not by what was ever walked: each `lookup`
//! reply counts one reference (FUSE lookup count), `forget` gives them back, and a node no longer
//! referenced is dropped. Numbers come from a counter and are never reused within a mount, so a
//! forgotten entry looked up again gets a new number (the kernel never sees a stale one reused).

use std::collections::HashMap;
use std::sync::Arc;

use crate::parsec::device::Id;
use crate::parsec::DateTime;

/// The mount root: the workspace root at the mount's T.
pub(super) const ROOT_INO: u64 = 1;
/// The virtual `/.history` folder.
pub(super) const HISTORY_INO: u64 = 2;
/// `readdir` of `/.history` reports these placeholder inode numbers for instants not looked up
/// yet, so that listing 100k instants does not allocate 100k views.
pub(super) const HISTORY_PLACEHOLDER_BASE: u64 = 1 << 62;

/// A workspace entry as seen in one view.
#[derive(Debug, Clone)]
pub(super) struct Node {
    pub view: u32,
    pub id: Id,
    /// Inode of the folder it was found in (itself for a view root).
    pub parent: u64,
    pub name: Arc<str>,
}

struct Slot {
    node: Node,
    /// Lookup replies the kernel has not yet forgotten.
    lookups: u64,
}

pub(super) struct Inodes {
    by_key: HashMap<(u32, Id), u64>,
    /// 0 and [`HISTORY_INO`] are not entries.
    nodes: HashMap<u64, Slot>,
    next_ino: u64,
    views: Vec<DateTime>,
    view_by_time: HashMap<DateTime, u32>,
}

impl Inodes {
    pub(super) fn new(realm_id: Id, at: DateTime) -> Self {
        let mut by_key = HashMap::new();
        by_key.insert((0, realm_id), ROOT_INO);
        let root = Node {
            view: 0,
            id: realm_id,
            parent: ROOT_INO,
            name: Arc::from(""),
        };
        // View 0 is not in `view_by_time`: a `/.history/<T>` folder must never alias the mount
        // root's inode, even for the same T (the kernel refuses a directory with two parents).
        let view_by_time = HashMap::new();
        let mut nodes = HashMap::new();
        // The root is never forgotten (the kernel holds it for the life of the mount).
        nodes.insert(
            ROOT_INO,
            Slot {
                node: root,
                lookups: 1,
            },
        );
        Inodes {
            by_key,
            nodes,
            next_ino: HISTORY_INO + 1,
            views: vec![at],
            view_by_time,
        }
    }

    pub(super) fn get(&self, ino: u64) -> Option<Node> {
        self.nodes.get(&ino).map(|s| s.node.clone())
    }

    /// Nodes in the table (the root included): what the kernel holds, plus nothing else.
    pub(super) fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The inode of `id` in `view` for a `lookup` reply: allocated if new, and counted once (the
    /// caller must send it to the kernel, which will `forget` it).
    pub(super) fn lookup(&mut self, view: u32, id: Id, parent: u64, name: &str) -> u64 {
        if let Some(ino) = self.by_key.get(&(view, id)) {
            if let Some(slot) = self.nodes.get_mut(ino) {
                slot.lookups += 1;
                return *ino;
            }
        }
        let ino = self.fresh_ino();
        self.nodes.insert(
            ino,
            Slot {
                node: Node {
                    view,
                    id,
                    parent,
                    name: Arc::from(name),
                },
                lookups: 1,
            },
        );
        self.by_key.insert((view, id), ino);
        ino
    }

    /// The number a `readdir` reports for `id` in `view`: its inode if the kernel holds it,
    /// else a number never used (plain `readdir` is not a lookup: the kernel keeps no reference,
    /// so nothing is stored, and a later `lookup` allocates the node).
    pub(super) fn listing_ino(&mut self, view: u32, id: Id) -> u64 {
        match self.by_key.get(&(view, id)) {
            Some(ino) => *ino,
            None => self.fresh_ino(),
        }
    }

    fn fresh_ino(&mut self) -> u64 {
        let ino = self.next_ino;
        // 2^62 numbers before the `/.history` placeholders: never reached in a mount's life.
        self.next_ino += 1;
        ino
    }

    /// The kernel's `forget`: `nlookup` of the node's lookups are given back; a node left with
    /// none is removed (never the root). Unknown numbers are ignored.
    pub(super) fn forget(&mut self, ino: u64, nlookup: u64) {
        if ino == ROOT_INO {
            return;
        }
        let Some(slot) = self.nodes.get_mut(&ino) else {
            return;
        };
        slot.lookups = slot.lookups.saturating_sub(nlookup);
        if slot.lookups > 0 {
            return;
        }
        let key = (slot.node.view, slot.node.id);
        self.nodes.remove(&ino);
        if self.by_key.get(&key) == Some(&ino) {
            self.by_key.remove(&key);
        }
    }

    pub(super) fn view_time(&self, view: u32) -> DateTime {
        self.views[view as usize]
    }

    /// The view of instant `t`, created if new.
    pub(super) fn view_for(&mut self, t: DateTime) -> u32 {
        if let Some(v) = self.view_by_time.get(&t) {
            return *v;
        }
        let v = self.views.len() as u32;
        self.views.push(t);
        self.view_by_time.insert(t, v);
        v
    }

    /// The entry IDs of `ino` and its ancestors up to its view's root (bounded: at most
    /// `limit` + 1 IDs). The number of IDs minus one is the depth of `ino` below the root.
    pub(super) fn lineage(&self, mut ino: u64, limit: usize) -> Vec<Id> {
        let mut ids = Vec::new();
        while ids.len() <= limit {
            let Some(node) = self.get(ino) else { break };
            ids.push(node.id);
            if node.parent == ino || node.parent == HISTORY_INO {
                break;
            }
            ino = node.parent;
        }
        ids
    }

    /// A readable path for log lines: `/a/b` or `/.history/<T>/a/b`.
    pub(super) fn path_of(&self, mut ino: u64) -> String {
        let mut names = Vec::new();
        let mut view = 0;
        for _ in 0..4096 {
            let Some(node) = self.get(ino) else { break };
            view = node.view;
            if node.parent == ino || node.parent == HISTORY_INO {
                break;
            }
            names.push(node.name.clone());
            ino = node.parent;
        }
        names.reverse();
        let mut path = if view == 0 {
            String::new()
        } else {
            format!("/.history/{}", self.view_time(view))
        };
        for n in names {
            path.push('/');
            path.push_str(&n);
        }
        if path.is_empty() {
            path.push('/');
        }
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Id {
        [n; 16]
    }

    #[test]
    fn lookups_are_counted_and_forget_frees_the_node() {
        let mut t = Inodes::new(id(0), DateTime::from_micros(0));
        assert_eq!(t.node_count(), 1);
        let a = t.lookup(0, id(1), ROOT_INO, "a");
        assert_eq!(
            t.lookup(0, id(1), ROOT_INO, "a"),
            a,
            "same entry, same number"
        );
        let b = t.lookup(0, id(2), a, "b");
        assert_eq!(t.node_count(), 3);
        assert_eq!(t.path_of(b), "/a/b");
        // A listing of a known entry reports its inode; of an unknown one, a fresh number
        // without storing anything.
        assert_eq!(t.listing_ino(0, id(1)), a);
        let unknown = t.listing_ino(0, id(3));
        assert!(unknown > b);
        assert_eq!(t.node_count(), 3);

        t.forget(a, 1);
        assert_eq!(
            t.get(a).unwrap().name.as_ref(),
            "a",
            "one lookup still held"
        );
        t.forget(b, 1);
        assert!(t.get(b).is_none());
        t.forget(a, 1);
        assert!(t.get(a).is_none());
        assert_eq!(t.node_count(), 1);
        // Forgetting too much, twice, or an unknown number is harmless; the root stays.
        t.forget(a, 5);
        t.forget(999, 1);
        t.forget(ROOT_INO, 10);
        assert!(t.get(ROOT_INO).is_some());

        // Looked up again: a new number, never a reused one.
        let a2 = t.lookup(0, id(1), ROOT_INO, "a");
        assert!(a2 > unknown);
        assert_eq!(t.listing_ino(0, id(1)), a2);
        t.forget(a2, 1);
        assert_eq!(t.node_count(), 1);
    }

    #[test]
    fn views_keep_separate_nodes() {
        let mut t = Inodes::new(id(0), DateTime::from_micros(0));
        let v = t.view_for(DateTime::from_micros(5));
        let r = t.lookup(v, id(0), HISTORY_INO, "x");
        assert_ne!(r, ROOT_INO);
        let a0 = t.lookup(0, id(1), ROOT_INO, "a");
        let a1 = t.lookup(v, id(1), r, "a");
        assert_ne!(a0, a1);
        t.forget(a0, 1);
        assert_eq!(t.get(a1).unwrap().view, v);
        t.forget(a1, 1);
        t.forget(r, 1);
        assert_eq!(t.node_count(), 1);
    }
}
