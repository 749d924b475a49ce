//! The appliance's [`store::Store`] on sled 0.34.
//!
//! One sled tree per [`Tree`]. A commit is one sled transaction over the
//! trees it writes (all writes or none) followed by a flush, so `Ok` means
//! durable. Flushes are group-committed: a commit waits for one flush that
//! started after it, and concurrent commits share it instead of each
//! fsyncing. A journaled commit (issuance, already durable in the audit
//! log) skips the flush: sled writes it out within [`FLUSH_EVERY_MS`] or
//! with the next flushed commit, and the store is flushed when dropped.
//! One process at a time may open the database (sled takes a file lock).

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, RwLock};

use sled::transaction::{abort, TransactionError};
use sled::Transactional as _;
use store::{Conflict, Error, Result, SnapshotVisitor, Store, Tree, Write};

/// How often sled writes out commits that did not ask for a flush
/// ([`Store::commit_journaled`]) unless `storage.flush_every_ms` says
/// otherwise; sled's own default.
pub const FLUSH_EVERY_MS: u64 = 500;

/// sled's page cache. Its default (1 GiB) let `kmsd`'s memory grow with
/// the store (106 MiB after 44,000 issuances); the kernel's page cache
/// still holds what sled evicts.
pub const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// sled-backed store.
pub struct SledStore {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    path: PathBuf,
    flush: GroupFlush,
    /// Commits hold it shared; [`Store::snapshot_each`] holds it alone, so
    /// a backup never sees half of a commit (sled has no snapshots).
    gate: RwLock<()>,
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
        Self::open_with(path, FLUSH_EVERY_MS)
    }

    /// [`SledStore::open`] writing journaled commits out every
    /// `flush_every_ms` (at least 1).
    pub fn open_with(path: &Path, flush_every_ms: u64) -> Result<Self> {
        let config = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(flush_every_ms.max(1)))
            .cache_capacity(CACHE_BYTES);
        // sled releases its file lock when its last background thread lets
        // go of the database, a moment after the handle is dropped: a
        // reopen in the same process (restore, tests) waits that moment out.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let opened = loop {
            match config.open() {
                Err(sled::Error::Io(io))
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        && std::time::Instant::now() < give_up =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other,
            }
        };
        let db = opened.map_err(|e| match e {
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
            gate: RwLock::new(()),
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

    /// One sled transaction over the trees `writes` touch (only those: a
    /// transaction locks every tree it spans), not yet flushed.
    fn apply(&self, writes: &[Write]) -> Result<std::result::Result<(), Conflict>> {
        if writes.is_empty() {
            // Nothing to write (sled cannot run a transaction over no tree).
            return Ok(Ok(()));
        }
        let mut touched: Vec<usize> = writes
            .iter()
            .map(|w| match w {
                Write::Insert { tree, .. } | Write::Replace { tree, .. } => Self::index(*tree),
            })
            .collect();
        touched.sort_unstable();
        touched.dedup();
        let trees: Vec<&sled::Tree> = touched.iter().filter_map(|&i| self.trees.get(i)).collect();
        let view_of = |tree: Tree| touched.binary_search(&Self::index(tree)).unwrap_or(0);
        let _no_snapshot_meanwhile = self.gate.read().unwrap_or_else(|p| p.into_inner());
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
                let view = &views[view_of(tree)];
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
            Ok(()) => Ok(Ok(())),
            Err(TransactionError::Abort(conflict)) => Ok(Err(conflict)),
            Err(TransactionError::Storage(e)) => Err(unavailable(&self.path, e)),
        }
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        // Journaled commits not yet written out: make them durable now, so
        // a clean stop leaves nothing for start-up reconciliation.
        if let Err(e) = self.db.flush() {
            tracing::error!(path = %self.path.display(), error = %e, "final store flush failed");
        }
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
        let applied = self.apply(writes)?;
        if applied.is_ok() {
            self.flush
                .flush(&self.db)
                .map_err(|e| unavailable(&self.path, e))?;
        }
        Ok(applied)
    }

    fn commit_journaled(&self, writes: &[Write]) -> Result<std::result::Result<(), Conflict>> {
        // sled writes it out within `FLUSH_EVERY_MS`, or with the next
        // flushed commit, whichever comes first.
        self.apply(writes)
    }

    fn len(&self, tree: Tree) -> Result<usize> {
        Ok(self.tree(tree)?.len())
    }

    fn snapshot_each(&self, visit: &mut SnapshotVisitor<'_>) -> Result<u64> {
        // Commits wait (journaled ones too) while every tree is read: the
        // visit sees the store as of one moment. Reads go on meanwhile.
        let _alone = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let mut n = 0u64;
        for t in Tree::ALL {
            for entry in self.tree(t)?.iter() {
                let (k, v) = entry.map_err(|e| unavailable(&self.path, e))?;
                visit(t, &k, &v)?;
                n += 1;
            }
        }
        Ok(n)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(tree: Tree, key: &str, value: &str) -> Write {
        Write::Insert {
            tree,
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn an_empty_commit_changes_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = SledStore::open(&dir.path().join("db")).expect("open");
        assert_eq!(s.commit(&[]).expect("commit"), Ok(()));
        assert_eq!(s.commit_journaled(&[]).expect("commit"), Ok(()));
        for t in Tree::ALL {
            assert_eq!(s.len(t).expect("len"), 0);
        }
    }

    #[test]
    fn a_commit_over_some_trees_applies_whole_or_not_at_all() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = SledStore::open(&dir.path().join("db")).expect("open");
        let first = [
            insert(Tree::Certificates, "01", "a"),
            insert(Tree::Devices, "d", "x"),
        ];
        assert_eq!(s.commit_journaled(&first).expect("commit"), Ok(()));
        // The second write conflicts: the first of this batch must not land.
        let second = [
            insert(Tree::PublicKeys, "k", "d"),
            insert(Tree::Certificates, "01", "b"),
        ];
        let conflict = s.commit(&second).expect("commit").expect_err("conflict");
        assert_eq!(
            (conflict.tree, conflict.key, conflict.current),
            (Tree::Certificates, b"01".to_vec(), Some(b"a".to_vec()))
        );
        assert_eq!(s.get(Tree::PublicKeys, b"k").expect("get"), None);
        assert_eq!(s.len(Tree::PublicKeys).expect("len"), 0);
    }

    #[test]
    fn a_snapshot_never_sees_half_a_commit() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = std::sync::Arc::new(SledStore::open(&dir.path().join("db")).expect("open"));
        let writer = {
            let s = s.clone();
            std::thread::spawn(move || {
                // Each commit spans two trees: a snapshot must see both
                // halves or neither.
                for i in 0..400 {
                    let k = format!("{i:04}");
                    let w = [
                        insert(Tree::Certificates, &k, "c"),
                        insert(Tree::Devices, &k, "d"),
                    ];
                    let done = if i % 2 == 0 {
                        s.commit(&w)
                    } else {
                        s.commit_journaled(&w)
                    };
                    assert_eq!(done.expect("commit"), Ok(()));
                }
            })
        };
        let mut snapshots = 0;
        while !writer.is_finished() || snapshots == 0 {
            let (mut certs, mut devices) = (Vec::new(), Vec::new());
            let n = s
                .snapshot_each(&mut |t, k, _| {
                    match t {
                        Tree::Certificates => certs.push(k.to_vec()),
                        Tree::Devices => devices.push(k.to_vec()),
                        _ => {}
                    }
                    Ok(())
                })
                .expect("snapshot");
            assert_eq!(n as usize, certs.len() + devices.len());
            assert_eq!(certs, devices, "a commit seen by halves");
            snapshots += 1;
        }
        writer.join().expect("writer");
        assert_eq!(s.len(Tree::Devices).expect("len"), 400);
    }

    #[test]
    fn a_journaled_commit_is_visible_at_once_and_durable_after_a_clean_close() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("db");
        {
            let s = SledStore::open(&path).expect("open");
            let w = [insert(Tree::Certificates, "02", "c")];
            assert_eq!(s.commit_journaled(&w).expect("commit"), Ok(()));
            assert_eq!(
                s.get(Tree::Certificates, b"02").expect("get"),
                Some(b"c".to_vec())
            );
            // No flushed commit since: the group flush never ran.
            assert_eq!(s.stats(), (0, 0));
        }
        let s = SledStore::open(&path).expect("reopen");
        assert_eq!(
            s.get(Tree::Certificates, b"02").expect("get"),
            Some(b"c".to_vec())
        );
    }
}
