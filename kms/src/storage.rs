//! The appliance's [`store::Store`] on sled 0.34.
//!
//! One sled tree per [`Tree`]. A commit is one sled transaction over every
//! tree (all writes or none) followed by a flush, so `Ok` means durable.
//! Flushes are group-committed: a commit waits for one flush that started
//! after it, and concurrent commits share it instead of each fsyncing.
//! One process at a time may open the database (sled takes a file lock).

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use sled::transaction::{abort, TransactionError};
use sled::Transactional as _;
use store::{Conflict, Error, Result, Store, Tree, Write};

/// sled-backed store.
pub struct SledStore {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    path: PathBuf,
    flush: GroupFlush,
}

/// Shares one flush between the commits that finished before it began.
#[derive(Default)]
struct GroupFlush {
    state: Mutex<FlushState>,
    done: Condvar,
}

#[derive(Default)]
struct FlushState {
    /// Tickets handed out to finished commits.
    issued: u64,
    /// Every ticket up to this one is durable.
    flushed: u64,
    flushing: bool,
    failed: Option<String>,
    flushes: u64,
}

impl GroupFlush {
    /// Make everything committed before this call durable.
    fn flush(&self, db: &sled::Db) -> std::result::Result<(), String> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.issued += 1;
        let mine = st.issued;
        loop {
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            if st.flushed >= mine {
                return Ok(());
            }
            if !st.flushing {
                st.flushing = true;
                let target = st.issued;
                drop(st);
                let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
                st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                st.flushing = false;
                st.flushes += 1;
                match result {
                    Ok(()) => st.flushed = target,
                    // Like the audit log: never trust a later flush after a failed one.
                    Err(e) => st.failed = Some(format!("flush failed: {e}")),
                }
                self.done.notify_all();
                continue;
            }
            st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn unavailable(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("{}: {e}", path.display()))
}

impl SledStore {
    /// Open (or create) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    Error::Unavailable(format!(
                        "{} is in use by another process (is kmsd running?)",
                        path.display()
                    ))
                }
                other => unavailable(path, other),
            })?;
        let trees = Tree::ALL
            .iter()
            .map(|t| db.open_tree(t.name()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| unavailable(path, e))?;
        Ok(Self {
            db,
            trees,
            path: path.to_owned(),
            flush: GroupFlush::default(),
        })
    }

    fn tree(&self, t: Tree) -> Result<&sled::Tree> {
        Tree::ALL
            .iter()
            .position(|x| *x == t)
            .and_then(|i| self.trees.get(i))
            .ok_or_else(|| Error::Corrupt(format!("tree {} not opened", t.name())))
    }

    /// Commits and flushes since open: group commit at work when the
    /// second is smaller.
    pub fn stats(&self) -> (u64, u64) {
        let st = self.flush.state.lock().unwrap_or_else(|p| p.into_inner());
        (st.issued, st.flushes)
    }

    fn index(t: Tree) -> usize {
        Tree::ALL.iter().position(|x| *x == t).unwrap_or(0)
    }
}

impl Store for SledStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tree(tree)?
            .get(key)
            .map_err(|e| unavailable(&self.path, e))?
            .map(|v| v.to_vec()))
    }

    fn scan(&self, tree: Tree, from: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.tree(tree)?
            .range(from..)
            .take(limit)
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|e| unavailable(&self.path, e))
            })
            .collect()
    }

    fn commit(&self, writes: &[Write]) -> Result<std::result::Result<(), Conflict>> {
        let trees: Vec<&sled::Tree> = self.trees.iter().collect();
        let outcome = trees[..].transaction(|views| {
            for w in writes {
                let (tree, key, expected, value) = match w {
                    Write::Insert { tree, key, value } => (*tree, key, None, value),
                    Write::Replace {
                        tree,
                        key,
                        expected,
                        value,
                    } => (*tree, key, expected.as_deref(), value),
                };
                let view = &views[Self::index(tree)];
                let current = view.get(key)?;
                if current.as_deref() != expected {
                    return abort(Conflict {
                        tree,
                        key: key.clone(),
                        current: current.map(|v| v.to_vec()),
                    });
                }
                view.insert(key.as_slice(), value.as_slice())?;
            }
            Ok(())
        });
        match outcome {
            Ok(()) => {
                self.flush
                    .flush(&self.db)
                    .map_err(|e| unavailable(&self.path, e))?;
                Ok(Ok(()))
            }
            Err(TransactionError::Abort(conflict)) => Ok(Err(conflict)),
            Err(TransactionError::Storage(e)) => Err(unavailable(&self.path, e)),
        }
    }

    fn len(&self, tree: Tree) -> Result<usize> {
        Ok(self.tree(tree)?.len())
    }
}

/// Every entry of `tree` whose key starts with `prefix` (all of them for an
/// empty prefix), read in pages of 1,000 and stopping where the prefix ends,
/// rather than loading the rest of the tree.
pub fn scan_prefix(
    store: &dyn Store,
    tree: Tree,
    prefix: &[u8],
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    const PAGE: usize = 1000;
    let mut out = Vec::new();
    let mut from = prefix.to_vec();
    loop {
        let page = store.scan(tree, &from, PAGE)?;
        let full = page.len() == PAGE;
        for (k, v) in page {
            if !k.starts_with(prefix) {
                return Ok(out);
            }
            from = k.clone();
            from.push(0); // the next key after k
            out.push((k, v));
        }
        if !full {
            return Ok(out);
        }
    }
}
