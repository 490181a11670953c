//! Inode numbers of the mount: one per (view, entry) pair, allocated on first sight and stable
//! for the life of the mount. A view is the workspace at one instant: view 0 is the mount's
//! time T, the others are the `/.history/<T>/` folders.

use std::collections::HashMap;
use std::sync::Arc;

use crate::parsec::device::Id;
use crate::parsec::DateTime;

/// The mount root: the workspace root at the mount's T.
pub const ROOT_INO: u64 = 1;
/// The virtual `/.history` folder.
pub const HISTORY_INO: u64 = 2;
/// `readdir` of `/.history` reports these placeholder inode numbers for instants not looked up
/// yet, so that listing 100k instants does not allocate 100k views.
pub const HISTORY_PLACEHOLDER_BASE: u64 = 1 << 62;

/// A workspace entry as seen in one view.
#[derive(Debug, Clone)]
pub struct Node {
    pub view: u32,
    pub id: Id,
    /// Inode of the folder it was found in (itself for a view root).
    pub parent: u64,
    pub name: Arc<str>,
}

pub struct Inodes {
    by_key: HashMap<(u32, Id), u64>,
    /// Index = inode number; 0 and [`HISTORY_INO`] are not entries.
    nodes: Vec<Option<Node>>,
    views: Vec<DateTime>,
    view_by_time: HashMap<DateTime, u32>,
}

impl Inodes {
    pub fn new(realm_id: Id, at: DateTime) -> Self {
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
        Inodes {
            by_key,
            nodes: vec![None, Some(root), None],
            views: vec![at],
            view_by_time,
        }
    }

    pub fn get(&self, ino: u64) -> Option<Node> {
        self.nodes.get(ino as usize).cloned().flatten()
    }

    /// The inode of `id` in `view`, allocated if new.
    pub fn intern(&mut self, view: u32, id: Id, parent: u64, name: &str) -> u64 {
        if let Some(ino) = self.by_key.get(&(view, id)) {
            return *ino;
        }
        let ino = self.nodes.len() as u64;
        self.nodes.push(Some(Node {
            view,
            id,
            parent,
            name: Arc::from(name),
        }));
        self.by_key.insert((view, id), ino);
        ino
    }

    pub fn view_time(&self, view: u32) -> DateTime {
        self.views[view as usize]
    }

    /// The view of instant `t`, created if new.
    pub fn view_for(&mut self, t: DateTime) -> u32 {
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
    pub fn lineage(&self, mut ino: u64, limit: usize) -> Vec<Id> {
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
    pub fn path_of(&self, mut ino: u64) -> String {
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
