//! The DPoP `jti` replay cache (RFC 9449 §11.1), shared by every worker.
//!
//! Envoy runs one VM per worker; a proof replayed on another connection lands on another
//! worker, so the cache lives in proxy-wasm shared data (one store per VM id, visible to all
//! workers), updated with compare-and-swap. The store has no delete, so the cache is a fixed
//! set of buckets (keys), each holding up to [`WAYS`] records: `entries` bounds the whole, an
//! expired record is dropped when its bucket is next written, and a full bucket evicts its
//! oldest record first.
//!
//! A record is (digest of `jkt` and `jti`, expiry, writer tag). The tag settles the one race
//! CAS cannot: two workers creating the same bucket at once (a first write has no CAS value to
//! compare). After such a write the writer reads back; only its own tagged record proves it
//! won, and a same-digest record with another tag is a concurrent replay.
#![forbid(unsafe_code)]

use std::collections::HashMap;

/// Records per bucket.
pub const WAYS: usize = 8;
const RECORD: usize = 16 + 8 + 4;
/// CAS attempts before we give up and refuse (503) rather than risk accepting a replay.
const MAX_ATTEMPTS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    CasMismatch,
    Failed,
}

/// The key/value store with compare-and-swap that proxy-wasm shared data provides.
pub trait SharedStore {
    /// The value and its CAS token, or `None` when the key was never written.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes `value`; with `cas != 0` only if the key's CAS token is still `cas`.
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// This proof was seen before within its validity window.
    Replayed,
    /// The store could not be updated; refusing is the only safe answer.
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    digest: [u8; 16],
    expires_at: u64,
    tag: u32,
}

fn decode(bytes: &[u8]) -> Vec<Record> {
    bytes
        .chunks_exact(RECORD)
        .filter_map(|c| {
            let digest: [u8; 16] = c.get(..16)?.try_into().ok()?;
            let expires_at = u64::from_be_bytes(c.get(16..24)?.try_into().ok()?);
            let tag = u32::from_be_bytes(c.get(24..28)?.try_into().ok()?);
            Some(Record { digest, expires_at, tag })
        })
        .collect()
}

fn encode(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * RECORD);
    for r in records {
        out.extend_from_slice(&r.digest);
        out.extend_from_slice(&r.expires_at.to_be_bytes());
        out.extend_from_slice(&r.tag.to_be_bytes());
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayCache {
    buckets: u32,
}

impl ReplayCache {
    /// A cache holding about `entries` proofs.
    pub fn new(entries: u32) -> ReplayCache {
        ReplayCache { buckets: entries.div_ceil(WAYS as u32).max(1) }
    }

    pub fn capacity(&self) -> u64 {
        u64::from(self.buckets) * WAYS as u64
    }

    /// The digest a proof is remembered by: its key's thumbprint and its `jti`, so two clients
    /// that happen to pick the same `jti` do not collide.
    pub fn digest(jkt: &str, jti: &str) -> [u8; 16] {
        let mut hasher = hmac_sha256::Hash::new();
        hasher.update(jkt.as_bytes());
        hasher.update([0u8]);
        hasher.update(jti.as_bytes());
        let full = hasher.finalize();
        let mut digest = [0u8; 16];
        digest.copy_from_slice(full.get(..16).unwrap_or(&[0u8; 16]));
        digest
    }

    fn bucket_key(&self, digest: &[u8; 16]) -> String {
        let n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % self.buckets;
        // The bucket count is part of the key so a resized cache never misreads an old layout.
        format!("mcp-guard/jti/{}/{n}", self.buckets)
    }

    /// Remembers the proof `digest` until `expires_at`, or reports that it was seen already.
    /// `tag` must differ between concurrent writers (each worker draws its own).
    pub fn check_and_remember(
        &self,
        store: &mut dyn SharedStore,
        digest: [u8; 16],
        expires_at: u64,
        now: u64,
        tag: u32,
    ) -> Result<(), ReplayError> {
        let key = self.bucket_key(&digest);
        let mine = Record { digest, expires_at, tag };
        for _ in 0..MAX_ATTEMPTS {
            let (mut records, cas) = match store.get(&key) {
                Some((bytes, cas)) => (decode(&bytes), cas),
                None => (Vec::new(), 0),
            };
            records.retain(|r| r.expires_at > now);
            if records.iter().any(|r| r.digest == digest) {
                return Err(ReplayError::Replayed);
            }
            if records.len() >= WAYS {
                // Oldest out: the record that expires first.
                if let Some((i, _)) = records.iter().enumerate().min_by_key(|(_, r)| r.expires_at) {
                    records.remove(i);
                }
            }
            records.push(mine);
            match store.set(&key, &encode(&records), cas) {
                Ok(()) if cas != 0 => return Ok(()),
                Ok(()) => {
                    // A first write cannot be compared-and-swapped: read back to see who won.
                    let now_there = store.get(&key).map(|(b, _)| decode(&b)).unwrap_or_default();
                    if now_there.contains(&mine) {
                        return Ok(());
                    }
                    if now_there.iter().any(|r| r.digest == digest) {
                        return Err(ReplayError::Replayed);
                    }
                    // Our write was overwritten by another first write: try again.
                }
                Err(StoreError::CasMismatch) => {}
                Err(StoreError::Failed) => return Err(ReplayError::Unavailable),
            }
        }
        Err(ReplayError::Unavailable)
    }
}

/// An in-memory [`SharedStore`] with Envoy's CAS rules, for native use and tests.
#[derive(Debug, Default)]
pub struct MemoryStore {
    values: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
}

impl MemoryStore {
    pub fn key_count(&self) -> usize {
        self.values.len()
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.values.get(key).cloned()
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        if let Some((_, current)) = self.values.get(key) {
            if cas != 0 && cas != *current {
                return Err(StoreError::CasMismatch);
            }
        }
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        self.values.insert(key.to_string(), (value.to_vec(), self.next_cas));
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// The digest is the first half of SHA-256(jkt, a zero byte, jti): the separator keeps
    /// ("ab", "c") and ("a", "bc") apart.
    #[test]
    fn digest_is_sha256_of_jkt_zero_jti() {
        let full = crate::jose::sha256(b"jkt-1\0jti-1");
        assert_eq!(ReplayCache::digest("jkt-1", "jti-1").as_slice(), &full[..16]);
        assert_ne!(ReplayCache::digest("ab", "c"), ReplayCache::digest("a", "bc"));
    }

    #[test]
    fn a_proof_is_accepted_once_within_its_window() {
        let cache = ReplayCache::new(1000);
        let mut store = MemoryStore::default();
        let d = ReplayCache::digest("jkt", "jti-1");
        assert_eq!(cache.check_and_remember(&mut store, d, 160, 100, 1), Ok(()));
        assert_eq!(cache.check_and_remember(&mut store, d, 160, 120, 2), Err(ReplayError::Replayed));
        // Another key with the same jti is another proof.
        let other = ReplayCache::digest("jkt-2", "jti-1");
        assert_eq!(cache.check_and_remember(&mut store, other, 160, 120, 1), Ok(()));
        // Once expired the record is gone (the proof itself is then too old to pass).
        assert_eq!(cache.check_and_remember(&mut store, d, 260, 200, 1), Ok(()));
    }

    #[test]
    fn bounded_by_entries_oldest_evicted_first() {
        let cache = ReplayCache::new(64);
        let mut store = MemoryStore::default();
        for i in 0..10_000u64 {
            let d = ReplayCache::digest("k", &format!("jti-{i}"));
            cache.check_and_remember(&mut store, d, 1_000_000 + i, 0, 1).unwrap();
        }
        assert_eq!(store.key_count(), 8, "64 entries = 8 buckets, never more keys");
        let total: usize = store.values.values().map(|(v, _)| v.len() / RECORD).sum();
        assert!(total <= 64);
        // The newest are remembered; the first were evicted.
        let newest = ReplayCache::digest("k", "jti-9999");
        assert_eq!(cache.check_and_remember(&mut store, newest, 2_000_000, 0, 1), Err(ReplayError::Replayed));
    }

    /// A store whose first `get` of a key reports it missing even when another writer already
    /// created it: the interleaving of two workers racing to create the same bucket.
    struct RacingStore {
        inner: MemoryStore,
        intruder: Option<(String, Vec<u8>)>,
    }

    impl SharedStore for RacingStore {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.inner.get(key)
        }
        fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            self.inner.set(key, value, cas)?;
            // Right after our first write, the other worker's first write lands on top.
            if let Some((k, v)) = self.intruder.take() {
                self.inner.set(&k, &v, 0)?;
            }
            Ok(())
        }
    }

    #[test]
    fn concurrent_first_writes_of_the_same_proof_let_only_one_through() {
        let cache = ReplayCache::new(64);
        let d = ReplayCache::digest("k", "same");
        let key = cache.bucket_key(&d);
        let theirs = encode(&[Record { digest: d, expires_at: 500, tag: 99 }]);
        let mut store = RacingStore { inner: MemoryStore::default(), intruder: Some((key, theirs)) };
        assert_eq!(cache.check_and_remember(&mut store, d, 500, 100, 1), Err(ReplayError::Replayed));
    }

    #[test]
    fn an_overwritten_first_write_is_retried_not_lost() {
        let cache = ReplayCache::new(64);
        let d = ReplayCache::digest("k", "mine");
        let other = ReplayCache::digest("k", "theirs");
        let key = cache.bucket_key(&d);
        // Force the other record into the same bucket key.
        let theirs = encode(&[Record { digest: other, expires_at: 500, tag: 7 }]);
        let mut store = RacingStore { inner: MemoryStore::default(), intruder: Some((key.clone(), theirs)) };
        assert_eq!(cache.check_and_remember(&mut store, d, 500, 100, 1), Ok(()));
        let records = decode(&store.inner.get(&key).unwrap().0);
        assert!(records.iter().any(|r| r.digest == d) && records.iter().any(|r| r.digest == other));
    }

    struct BrokenStore;
    impl SharedStore for BrokenStore {
        fn get(&self, _: &str) -> Option<(Vec<u8>, u32)> {
            Some((Vec::new(), 1))
        }
        fn set(&mut self, _: &str, _: &[u8], _: u32) -> Result<(), StoreError> {
            Err(StoreError::CasMismatch)
        }
    }

    #[test]
    fn endless_contention_fails_closed() {
        let cache = ReplayCache::new(64);
        let d = ReplayCache::digest("k", "x");
        assert_eq!(cache.check_and_remember(&mut BrokenStore, d, 500, 100, 1), Err(ReplayError::Unavailable));
    }
}
