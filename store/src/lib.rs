//! The storage trait every stateful part of vBus KMS writes through.
//!
//! Narrow and transactional on purpose (DESIGN.md, "Durability and scale"):
//! `get`, an ordered `scan`, and `commit` of a batch of conditional writes
//! that all apply or none do. That is what a PostgreSQL backend can offer
//! just as well as sled, so two appliances can later share one state.
//!
//! The appliance's sled backend lives in `kms` (the only crate linking
//! sled); [`MemoryStore`] here serves unit tests of the pure crates.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Mutex;

/// A keyspace. Each holds its own ordered keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Tree {
    /// Certificates by certificate serial (lowercase hex).
    Certificates,
    /// Device records by module serial.
    Devices,
    /// Module serial by hardware UUID (a UUID belongs to one device).
    HardwareIds,
    /// Module serial by SHA-256 of the device public key (SPKI).
    PublicKeys,
    /// Station and officer credentials by identity.
    Clients,
    /// Provisioning records by module serial.
    Records,
    /// Revocations by certificate serial (lowercase hex), every CA.
    Revocations,
    /// Small appliance counters (the CRL numbers) by name.
    Counters,
    /// Firmware signing keys (`key/<product>/<key id>`) and each product's
    /// releases (`release/<product>`).
    Firmware,
    /// M-of-N approval requests by id.
    Approvals,
    /// Escrowed device secrets (wrapped under the token KEK) by
    /// `<module serial>/<purpose>`.
    Escrow,
}

impl Tree {
    /// Every tree, for backends that create them up front.
    pub const ALL: [Tree; 11] = [
        Tree::Certificates,
        Tree::Devices,
        Tree::HardwareIds,
        Tree::PublicKeys,
        Tree::Clients,
        Tree::Records,
        Tree::Revocations,
        Tree::Counters,
        Tree::Firmware,
        Tree::Approvals,
        Tree::Escrow,
    ];

    /// The tree whose [`Tree::name`] is `name` (backups name trees so).
    pub fn from_name(name: &str) -> Option<Tree> {
        Tree::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Stable name, used as the sled tree name.
    pub fn name(self) -> &'static str {
        match self {
            Tree::Certificates => "certificates",
            Tree::Devices => "devices",
            Tree::HardwareIds => "hardware_ids",
            Tree::PublicKeys => "public_keys",
            Tree::Clients => "clients",
            Tree::Records => "records",
            Tree::Revocations => "revocations",
            Tree::Counters => "counters",
            Tree::Firmware => "firmware",
            Tree::Approvals => "approvals",
            Tree::Escrow => "escrow",
        }
    }
}

/// One conditional write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Store `value` under `key`, which must not exist yet.
    Insert {
        /// Keyspace.
        tree: Tree,
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
    },
    /// Replace the value under `key`, which must currently be `expected`
    /// (`None`: absent). Compare-and-swap.
    Replace {
        /// Keyspace.
        tree: Tree,
        /// Key.
        key: Vec<u8>,
        /// The value the caller read.
        expected: Option<Vec<u8>>,
        /// The new value.
        value: Vec<u8>,
    },
}

impl Write {
    fn target(&self) -> (Tree, &[u8]) {
        match self {
            Write::Insert { tree, key, .. } | Write::Replace { tree, key, .. } => (*tree, key),
        }
    }

    fn expected(&self) -> Option<&[u8]> {
        match self {
            Write::Insert { .. } => None,
            Write::Replace { expected, .. } => expected.as_deref(),
        }
    }

    fn value(&self) -> &[u8] {
        match self {
            Write::Insert { value, .. } | Write::Replace { value, .. } => value,
        }
    }
}

/// A commit whose condition did not hold: nothing was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The keyspace of the first failed condition.
    pub tree: Tree,
    /// Its key.
    pub key: Vec<u8>,
    /// What is there now.
    pub current: Option<Vec<u8>>,
}

/// Storage failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend could not read or write (disk full, I/O error, lock).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored data is not what the schema says (a bug or a damaged store).
    #[error("stored data damaged: {0}")]
    Corrupt(String),
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The storage trait.
pub trait Store: Send + Sync {
    /// The value under `key`.
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Up to `limit` entries with keys `>= from`, in key order.
    fn scan(&self, tree: Tree, from: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Apply every write if every condition holds, else none. Durable
    /// (flushed to stable storage) when it returns `Ok(Ok(()))`.
    fn commit(&self, writes: &[Write]) -> Result<std::result::Result<(), Conflict>>;

    /// [`Store::commit`] for writes the caller has already journaled
    /// durably elsewhere (the audit log, from which start-up reconciliation
    /// re-applies whatever the store lacks): visible to every reader when it
    /// returns, but the backend may make it durable later, with the next
    /// flushed commit or within its own flush interval. Saves the issuance
    /// path a second fsync. The default is a flushed commit.
    fn commit_journaled(&self, writes: &[Write]) -> Result<std::result::Result<(), Conflict>> {
        self.commit(writes)
    }

    /// Number of entries in `tree`.
    fn len(&self, tree: Tree) -> Result<usize>;

    /// Call `visit(tree, key, value)` with every entry of every tree (trees
    /// in [`Tree::ALL`] order, keys in order) as of one moment: a commit is
    /// seen whole or not at all. For backups; returns the number of entries.
    ///
    /// A backend must provide it: paging through [`Store::scan`] is not
    /// one moment while anything commits, so the default refuses
    /// (`Unavailable`) rather than hand a backup a silently torn store.
    /// sled holds commits off for the visit; a database would read in one
    /// snapshot-isolated transaction. `visit` must not call back into the
    /// store.
    fn snapshot_each(&self, visit: &mut SnapshotVisitor<'_>) -> Result<u64> {
        let _ = visit;
        Err(Error::Unavailable(
            "this store backend has no consistent snapshot: it cannot be backed up".into(),
        ))
    }
}

/// What [`Store::snapshot_each`] calls with each entry: (tree, key, value).
pub type SnapshotVisitor<'a> = dyn FnMut(Tree, &[u8], &[u8]) -> Result<()> + 'a;

/// Every tree's entries, in order.
pub type Snapshot = BTreeMap<Tree, BTreeMap<Vec<u8>, Vec<u8>>>;

/// An in-memory store for unit tests. Not durable.
#[derive(Debug, Default)]
pub struct MemoryStore {
    trees: Mutex<Snapshot>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Snapshot>> {
        self.trees
            .lock()
            .map_err(|_| Error::Unavailable("memory store lock poisoned".into()))
    }

    /// Everything, for tests that check "nothing changed".
    pub fn snapshot(&self) -> Result<Snapshot> {
        Ok(self.lock()?.clone())
    }
}

impl Store for MemoryStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.lock()?.get(&tree).and_then(|t| t.get(key)).cloned())
    }

    fn scan(&self, tree: Tree, from: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .lock()?
            .get(&tree)
            .map(|t| {
                t.range(from.to_vec()..)
                    .take(limit)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn commit(&self, writes: &[Write]) -> Result<std::result::Result<(), Conflict>> {
        let mut trees = self.lock()?;
        // Check every condition against the state as this batch would leave
        // it, so a batch cannot insert the same key twice.
        let mut staged: BTreeMap<(Tree, Vec<u8>), Option<Vec<u8>>> = BTreeMap::new();
        for w in writes {
            let (tree, key) = w.target();
            let current = match staged.get(&(tree, key.to_vec())) {
                Some(v) => v.clone(),
                None => trees.get(&tree).and_then(|t| t.get(key)).cloned(),
            };
            if current.as_deref() != w.expected() {
                return Ok(Err(Conflict {
                    tree,
                    key: key.to_vec(),
                    current,
                }));
            }
            staged.insert((tree, key.to_vec()), Some(w.value().to_vec()));
        }
        for ((tree, key), value) in staged {
            if let Some(value) = value {
                trees.entry(tree).or_default().insert(key, value);
            }
        }
        Ok(Ok(()))
    }

    fn len(&self, tree: Tree) -> Result<usize> {
        Ok(self.lock()?.get(&tree).map_or(0, BTreeMap::len))
    }

    fn snapshot_each(&self, visit: &mut SnapshotVisitor<'_>) -> Result<u64> {
        // Under the lock: no commit lands meanwhile.
        let trees = self.lock()?;
        let mut n = 0u64;
        for tree in Tree::ALL {
            for (k, v) in trees.get(&tree).into_iter().flatten() {
                visit(tree, k, v)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(tree: Tree, k: &str, v: &str) -> Write {
        Write::Insert {
            tree,
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn a_batch_applies_whole_or_not_at_all() {
        let s = MemoryStore::new();
        s.commit(&[insert(Tree::Devices, "a", "1")])
            .unwrap()
            .unwrap();
        let before = s.snapshot().unwrap();
        let conflict = s
            .commit(&[
                insert(Tree::Devices, "b", "2"),
                insert(Tree::Devices, "a", "3"),
            ])
            .unwrap()
            .unwrap_err();
        assert_eq!(conflict.key, b"a");
        assert_eq!(conflict.current.as_deref(), Some(&b"1"[..]));
        assert_eq!(s.snapshot().unwrap(), before);
        // The same key twice in one batch is a conflict too.
        assert!(s
            .commit(&[
                insert(Tree::Devices, "c", "1"),
                insert(Tree::Devices, "c", "2")
            ])
            .unwrap()
            .is_err());
    }

    #[test]
    fn tree_names_round_trip() {
        for t in Tree::ALL {
            assert_eq!(Tree::from_name(t.name()), Some(t));
        }
        assert_eq!(Tree::from_name("nonsense"), None);
    }

    /// A store that only has the trait's default `snapshot_each`.
    struct Paged(MemoryStore);

    impl Store for Paged {
        fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
            self.0.get(tree, key)
        }
        fn scan(&self, tree: Tree, from: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
            self.0.scan(tree, from, limit)
        }
        fn commit(&self, writes: &[Write]) -> Result<std::result::Result<(), Conflict>> {
            self.0.commit(writes)
        }
        fn len(&self, tree: Tree) -> Result<usize> {
            self.0.len(tree)
        }
    }

    #[test]
    fn a_snapshot_visits_every_entry_once_in_order() {
        let mem = MemoryStore::new();
        // More than one page in one tree, and a few in others.
        let mut writes: Vec<Write> = (0..2500)
            .map(|i| insert(Tree::Certificates, &format!("{i:05}"), "c"))
            .collect();
        writes.push(insert(Tree::Devices, "d", "x"));
        writes.push(insert(Tree::Escrow, "e/psk", "blob"));
        mem.commit(&writes).unwrap().unwrap();
        let expected = mem.snapshot().unwrap();
        // A backend without a snapshot of its own refuses, rather than
        // page through a store that may change meanwhile.
        let paged = Paged(MemoryStore::new());
        paged.commit(&writes).unwrap().unwrap();
        let mut visited = 0;
        let err = paged
            .snapshot_each(&mut |_, _, _| {
                visited += 1;
                Ok(())
            })
            .unwrap_err();
        assert!(err.to_string().contains("no consistent snapshot"), "{err}");
        assert_eq!(visited, 0);
        {
            let store: &dyn Store = &mem;
            let mut seen: Snapshot = BTreeMap::new();
            let mut order = Vec::new();
            let n = store
                .snapshot_each(&mut |t, k, v| {
                    order.push((t, k.to_vec()));
                    assert!(seen
                        .entry(t)
                        .or_default()
                        .insert(k.to_vec(), v.to_vec())
                        .is_none());
                    Ok(())
                })
                .unwrap();
            assert_eq!(n, 2502);
            assert_eq!(seen, expected);
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(order, sorted, "trees in ALL order, keys in order");
        }
        // A visitor's error stops the visit and comes back.
        let err = mem
            .snapshot_each(&mut |_, _, _| Err(Error::Unavailable("disk full".into())))
            .unwrap_err();
        assert!(err.to_string().contains("disk full"));
    }

    #[test]
    fn replace_is_compare_and_swap() {
        let s = MemoryStore::new();
        let cas = |expected: Option<&str>, v: &str| Write::Replace {
            tree: Tree::Devices,
            key: b"k".to_vec(),
            expected: expected.map(Into::into),
            value: v.into(),
        };
        s.commit(&[cas(None, "1")]).unwrap().unwrap();
        assert!(s.commit(&[cas(None, "2")]).unwrap().is_err());
        assert!(s.commit(&[cas(Some("0"), "2")]).unwrap().is_err());
        s.commit(&[cas(Some("1"), "2")]).unwrap().unwrap();
        assert_eq!(
            s.get(Tree::Devices, b"k").unwrap().as_deref(),
            Some(&b"2"[..])
        );
        assert_eq!(s.scan(Tree::Devices, b"", 10).unwrap().len(), 1);
        assert_eq!(s.len(Tree::Devices).unwrap(), 1);
    }
}
