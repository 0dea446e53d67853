//! etcd access: typed reads of JSON records with their revisions, and
//! transactions that are guarded by `mod_revision` compares and fenced by
//! the leadership key, so that a deposed leader can never write.

use std::fmt;

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, TxnOp, TxnOpResponse,
};
use serde::{de::DeserializeOwned, Serialize};

/// Most keys fetched per range request; larger listings are paged at one
/// revision so they stay a consistent snapshot.
const PAGE: i64 = 1000;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// etcd could not be reached or refused the request.
    #[error("etcd {op}: {source}")]
    Etcd {
        /// What was being done.
        op: String,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// A record did not decode: something other than meta wrote it, or a
    /// newer meta with an incompatible format.
    #[error("corrupt record at {key}: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The fence compare failed: this process no longer leads.
    #[error("this ferrite-meta lost its leadership")]
    LostLeadership,
}

/// A record with the revision it was last written at.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    /// The decoded record.
    pub value: T,
    /// etcd's mod revision of the key.
    pub mod_rev: i64,
}

/// The leadership this process holds: the election key and its creation
/// revision. Every transaction compares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The leader's election key.
    pub key: Vec<u8>,
    /// Its creation revision; also names the leadership term.
    pub rev: i64,
}

/// A transaction under construction: compares and operations.
#[derive(Default)]
pub struct Txn {
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
    what: String,
}

impl fmt::Debug for Txn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Txn")
            .field("what", &self.what)
            .field("compares", &self.compares.len())
            .field("ops", &self.ops.len())
            .finish()
    }
}

impl Txn {
    /// A new, empty transaction; `what` names it in errors and logs.
    pub fn new(what: impl Into<String>) -> Self {
        Txn {
            what: what.into(),
            ..Default::default()
        }
    }

    /// Requires `key` not to exist.
    pub fn expect_absent(&mut self, key: &str) -> &mut Self {
        self.compares
            .push(Compare::create_revision(key, CompareOp::Equal, 0));
        self
    }

    /// Requires `key` to be unchanged since `mod_rev`.
    pub fn expect_rev(&mut self, key: &str, mod_rev: i64) -> &mut Self {
        self.compares
            .push(Compare::mod_revision(key, CompareOp::Equal, mod_rev));
        self
    }

    /// Requires `key` to be at `mod_rev`, or absent when `mod_rev` is None.
    pub fn expect(&mut self, key: &str, mod_rev: Option<i64>) -> &mut Self {
        match mod_rev {
            Some(r) => self.expect_rev(key, r),
            None => self.expect_absent(key),
        }
    }

    /// Requires no key under `prefix` (a range compare; etcd ≥ 3.3).
    pub fn expect_empty_prefix(&mut self, prefix: &str) -> &mut Self {
        self.compares
            .push(Compare::create_revision(prefix, CompareOp::Equal, 0).with_prefix());
        self
    }

    /// Writes `value` as JSON at `key`.
    pub fn put_json<T: Serialize>(&mut self, key: &str, value: &T) -> &mut Self {
        // Records are plain structs of strings and numbers: encoding
        // cannot fail.
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        self.ops.push(TxnOp::put(key, bytes, None));
        self
    }

    /// Writes raw bytes at `key`, attached to `lease` when given.
    pub fn put_raw(&mut self, key: &str, value: Vec<u8>, lease: Option<i64>) -> &mut Self {
        let opts = lease.map(|l| etcd_client::PutOptions::new().with_lease(l));
        self.ops.push(TxnOp::put(key, value, opts));
        self
    }

    /// Deletes `key`.
    pub fn delete(&mut self, key: &str) -> &mut Self {
        self.ops.push(TxnOp::delete(key, None));
        self
    }

    /// Deletes every key under `prefix`.
    pub fn delete_prefix(&mut self, prefix: &str) -> &mut Self {
        self.ops.push(TxnOp::delete(
            prefix,
            Some(DeleteOptions::new().with_prefix()),
        ));
        self
    }

    /// Operations so far (etcd limits them per transaction).
    pub fn op_count(&self) -> usize {
        self.ops.len()
    }

    /// Compares so far (etcd limits them per transaction too).
    pub fn compare_count(&self) -> usize {
        self.compares.len()
    }
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Applied, at this revision (the new mod revision of every key it
    /// wrote).
    Applied(i64),
    /// A compare failed: something changed since it was read; re-read and
    /// try again.
    Conflict,
}

/// Access to etcd, optionally as the fenced leader.
#[derive(Clone)]
pub struct Store {
    client: Client,
    fence: Option<Fence>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("fence", &self.fence).finish()
    }
}

fn etcd_err(op: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> StoreError {
    let op = op.into();
    move |source| StoreError::Etcd { op, source }
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<Versioned<T>, StoreError> {
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    let value = serde_json::from_slice(kv.value()).map_err(|e| StoreError::Corrupt {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    Ok(Versioned {
        value,
        mod_rev: kv.mod_revision(),
    })
}

impl Store {
    /// A store over `client`; writes are fenced by `fence` when given
    /// (every write path of the service passes one).
    pub fn new(client: Client, fence: Option<Fence>) -> Self {
        Store { client, fence }
    }

    /// The fence this store writes under.
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// The etcd client (for leases).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Reads and decodes one record.
    pub async fn get<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
        let resp = self
            .client
            .kv_client()
            .get(key, None)
            .await
            .map_err(etcd_err(format!("get {key}")))?;
        resp.kvs().first().map(decode).transpose()
    }

    /// Reads one raw value with its mod revision.
    pub async fn get_raw(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
        let resp = self
            .client
            .kv_client()
            .get(key, None)
            .await
            .map_err(etcd_err(format!("get {key}")))?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
    }

    /// Every key-value under `prefix`, in key order, as one snapshot.
    async fn range(&self, prefix: &str, keys_only: bool) -> Result<Vec<KeyValue>, StoreError> {
        self.range_between(prefix, prefix_end(prefix.as_bytes()), keys_only)
            .await
    }

    /// Every key-value from `from` (included) to `end` (excluded), in key
    /// order, as one snapshot.
    async fn range_between(
        &self,
        from: &str,
        end: Vec<u8>,
        keys_only: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let prefix = from;
        let mut out = Vec::new();
        let mut start = from.as_bytes().to_vec();
        let mut revision = 0;
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(PAGE)
                .with_revision(revision);
            if keys_only {
                opts = opts.with_keys_only();
            }
            let resp = self
                .client
                .kv_client()
                .get(start.clone(), Some(opts))
                .await
                .map_err(etcd_err(format!("list {prefix}")))?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            let kvs = resp.kvs();
            out.extend_from_slice(kvs);
            match kvs.last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    /// Every record under `prefix`, in key order.
    pub async fn list<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<Versioned<T>>, StoreError> {
        self.range(prefix, false)
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    /// Every record from key `from` (included) to key `to` (excluded), with
    /// its key, in key order.
    pub async fn list_between<T: DeserializeOwned>(
        &self,
        from: &str,
        to: &str,
    ) -> Result<Vec<(String, Versioned<T>)>, StoreError> {
        self.range_between(from, to.as_bytes().to_vec(), false)
            .await?
            .iter()
            .map(|kv| Ok((String::from_utf8_lossy(kv.key()).into_owned(), decode(kv)?)))
            .collect()
    }

    /// Every record under `prefix` with its key, in key order.
    pub async fn list_keyed<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, Versioned<T>)>, StoreError> {
        self.range(prefix, false)
            .await?
            .iter()
            .map(|kv| Ok((String::from_utf8_lossy(kv.key()).into_owned(), decode(kv)?)))
            .collect()
    }

    /// How many keys are under `prefix` (etcd counts; nothing is fetched).
    pub async fn count(&self, prefix: &str) -> Result<u64, StoreError> {
        let opts = GetOptions::new().with_prefix().with_count_only();
        let resp = self
            .client
            .kv_client()
            .get(prefix, Some(opts))
            .await
            .map_err(etcd_err(format!("count {prefix}")))?;
        Ok(resp.count().max(0) as u64)
    }

    /// The keys under `prefix`, without it.
    pub async fn list_names(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .range(prefix, true)
            .await?
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned())
            .collect())
    }

    /// Applies `txn` if all its compares hold and this process still leads
    /// (when fenced).
    pub async fn commit(&self, mut txn: Txn) -> Result<Commit, StoreError> {
        let mut failure = Vec::new();
        if let Some(f) = &self.fence {
            txn.compares.push(Compare::create_revision(
                f.key.clone(),
                CompareOp::Equal,
                f.rev,
            ));
            // On failure, read the fence to tell "lost leadership" from an
            // ordinary conflict.
            failure.push(TxnOp::get(f.key.clone(), None));
        }
        let what = txn.what.clone();
        let req = etcd_client::Txn::new()
            .when(txn.compares)
            .and_then(txn.ops)
            .or_else(failure);
        let resp = self
            .client
            .kv_client()
            .txn(req)
            .await
            .map_err(etcd_err(format!("txn {what}")))?;
        if resp.succeeded() {
            let rev = resp.header().map_or(0, |h| h.revision());
            log::debug!("txn {what}: applied at revision {rev}");
            return Ok(Commit::Applied(rev));
        }
        if let Some(f) = &self.fence {
            let held = resp.op_responses().into_iter().any(|r| match r {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .is_some_and(|kv| kv.create_revision() == f.rev),
                _ => false,
            });
            if !held {
                log::warn!("txn {what}: refused, this process no longer leads");
                return Err(StoreError::LostLeadership);
            }
        }
        log::debug!("txn {what}: conflict");
        Ok(Commit::Conflict)
    }
}

/// The end of the range of keys that start with `prefix` (etcd's
/// convention: the prefix with its last byte incremented).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (never for our keys): to the end of the key space.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    }
}
