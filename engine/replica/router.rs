//! The volume client's extent I/O in a cluster: writes go to the extent's
//! primary (a function call when that is this node), reads go to the local
//! replica when there is one and it may serve, else to the primary.
//!
//! Failures are handled here, so front ends see a write either done or
//! failed: a stale view is refreshed from meta; a primary that cannot be
//! reached is reported to meta (which promotes the next replica) and the
//! request goes to the new primary; `Unavailable` answers (too few replicas
//! to acknowledge safely) are retried with backoff for a bounded time
//! ([`RETRY_FOR`] by default), then returned.

use super::proto::{ExtentCtx, Header, Op, Status, FLAG_DEALLOCATE};
use super::service::{ExtentRecord, MetaRefusal, ReplicaError, ReplicaService};
use super::transport::Request;
use crate::bdev::DmaBuf;
use crate::rt;
use crate::volume::client::{ExtentIo, ExtentMeta, VolumeMeta};
use crate::volume::{AccessState, IoError};
use prost::Message;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a request keeps retrying before it fails.
pub const RETRY_FOR: Duration = Duration::from_secs(30);

/// [`ExtentIo`] over the replication service.
pub struct ReplicaRouter {
    svc: Arc<ReplicaService>,
    records: Mutex<HashMap<u64, ExtentRecord>>,
    retry_for: Duration,
}

impl ReplicaRouter {
    pub fn new(svc: Arc<ReplicaService>, retry_for: Duration) -> Arc<Self> {
        Arc::new(Self {
            svc,
            records: Mutex::new(HashMap::new()),
            retry_for,
        })
    }

    /// The newest record known: the volume's cached one or ours.
    fn latest(&self, ext: &ExtentMeta) -> ExtentRecord {
        let mine = self
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ext.id)
            .cloned();
        match mine {
            Some(r) if r.generation >= ext.generation => r,
            _ => ExtentRecord {
                id: ext.id,
                index: ext.index,
                replicas: ext.replicas.clone(),
                learners: Vec::new(),
                generation: ext.generation,
            },
        }
    }

    fn keep(&self, rec: ExtentRecord) {
        let mut m = self.records.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(&rec.id) {
            Some(old) if old.generation >= rec.generation => {}
            _ => {
                m.insert(rec.id, rec);
            }
        }
    }

    fn ctx(vol: &VolumeMeta, ext: &ExtentMeta) -> ExtentCtx {
        ExtentCtx {
            volume: vol.name.clone(),
            extent_size: vol.extent_size,
            index: ext.index,
            min_replicas: vol.min_replicas,
        }
    }

    fn io_error(
        vol: &VolumeMeta,
        ext: &ExtentMeta,
        offset: u64,
        status: Status,
        msg: String,
    ) -> IoError {
        let volume = vol.name.clone();
        let base = ext.index * vol.extent_size;
        match status {
            Status::Checksum => IoError::Checksum {
                volume,
                extent: ext.id,
                offset: base + offset,
            },
            Status::NoSpace => IoError::NoSpace {
                volume,
                detail: msg,
            },
            Status::OutOfRange => IoError::OutOfRange {
                volume,
                offset: base + offset,
                len: 0,
                size: vol.size,
            },
            Status::Unavailable
            | Status::StaleGeneration
            | Status::NotPrimary
            | Status::NotReplica => IoError::Unavailable {
                volume,
                detail: msg,
            },
            _ => IoError::Device {
                volume,
                detail: msg,
            },
        }
    }

    /// Sends one request to the remote primary at `addr`.
    /// Sends one request to the remote primary at `addr`. `base` is the
    /// volume offset of the extent, to place a compare mismatch.
    fn remote(
        &self,
        vol: &VolumeMeta,
        base: u64,
        addr: &str,
        header: Header,
        body: Vec<u8>,
        payload: &[u8],
    ) -> Result<Vec<u8>, ReplicaError> {
        let req_offset = header.offset;
        match self.svc.transport().call(
            addr,
            Request {
                header,
                body,
                payload,
            },
        ) {
            Ok(f) if f.header.status == Status::Ok as i32 => Ok(f.payload),
            // The primary names the first differing byte, relative to the
            // compared range, in `aux`.
            Ok(f) if f.header.status == Status::CompareMismatch as i32 => {
                Err(ReplicaError::Io(IoError::CompareMismatch {
                    volume: vol.name.clone(),
                    offset: base + req_offset + f.header.aux as u64,
                }))
            }
            Ok(f) => Err(ReplicaError::Refused(
                Status::from_i32(f.header.status),
                f.error_message(),
            )),
            Err(e) => Err(ReplicaError::Transport(e)),
        }
    }

    /// A write through the extent's primary: this node's service when it
    /// is the primary (from `shared`'s blocks without a copy when given),
    /// the primary's node otherwise.
    fn write_via_primary(
        &self,
        vol: &VolumeMeta,
        ext: &ExtentMeta,
        offset: u64,
        data: &[u8],
        shared: Option<&Arc<DmaBuf>>,
    ) -> Result<(), IoError> {
        let ctx = Self::ctx(vol, ext);
        self.with_primary(vol, ext, offset, |rec, addr| match addr {
            None => self
                .svc
                .write_as_primary(ext.id, rec.generation, &ctx, offset, data, shared),
            Some(a) => {
                let h = Header {
                    op: Op::Write as u8,
                    extent: ext.id,
                    generation: rec.generation,
                    offset,
                    ..Default::default()
                };
                // Encoded only here: a local primary's write needs no body.
                let body = ctx.encode_to_vec();
                self.remote(vol, ext.index * vol.extent_size, &a, h, body, data)
                    .map(|_| ())
            }
        })
    }

    /// Runs `op` against the extent's primary, handling stale views,
    /// failed primaries and temporary unavailability.
    fn with_primary<T>(
        &self,
        vol: &VolumeMeta,
        ext: &ExtentMeta,
        offset: u64,
        mut op: impl FnMut(&ExtentRecord, Option<String>) -> Result<T, ReplicaError>,
    ) -> Result<T, IoError> {
        let deadline = Instant::now() + self.retry_for;
        let mut backoff = Duration::from_millis(20);
        let mut last = String::new();
        while Instant::now() < deadline {
            let rec = self.latest(ext);
            let Some(primary) = rec.primary().map(str::to_string) else {
                return Err(IoError::Unavailable {
                    volume: vol.name.clone(),
                    detail: format!("extent {} has no replica", ext.id),
                });
            };
            let addr = if primary == self.svc.node_id() {
                None
            } else {
                self.svc.addr_of(&primary)
            };
            match op(&rec, addr) {
                Ok(v) => return Ok(v),
                Err(ReplicaError::Refused(
                    s @ (Status::StaleGeneration | Status::NotPrimary | Status::NotReplica),
                    m,
                )) => {
                    last = format!("{s:?}: {m}");
                    match self.svc.meta().get_extent(ext.id) {
                        Ok(r) if r.generation > rec.generation => {
                            self.keep(r);
                            continue;
                        }
                        Ok(r) => self.keep(r),
                        Err(e) => last = e,
                    }
                }
                Err(ReplicaError::Transport(e)) => {
                    last = e.to_string();
                    match self.svc.report_failure(ext.id, rec.generation, &primary) {
                        Ok(r) => {
                            self.keep(r);
                            continue;
                        }
                        Err(MetaRefusal::LastCopy(m)) | Err(MetaRefusal::Unavailable(m)) => {
                            last = format!("{last}; {m}")
                        }
                    }
                }
                Err(ReplicaError::Refused(Status::Unavailable, m)) => last = m,
                Err(ReplicaError::Refused(s, m)) => {
                    return Err(Self::io_error(vol, ext, offset, s, m))
                }
                Err(ReplicaError::Io(e)) => return Err(e),
            }
            rt::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
        Err(IoError::Unavailable {
            volume: vol.name.clone(),
            detail: format!("extent {}: {last}", ext.id),
        })
    }
}

impl ExtentIo for ReplicaRouter {
    fn read(
        &self,
        vol: &VolumeMeta,
        ext: &ExtentMeta,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), IoError> {
        let ctx = Self::ctx(vol, ext);
        let rec = self.latest(ext);
        let me = self.svc.node_id().to_string();
        let mut local_bad = false;
        if rec.replicas.contains(&me) {
            match self
                .svc
                .read_local(ext.id, rec.generation, Some(&ctx), offset, buf, false)
            {
                Ok(()) => return Ok(()),
                Err(ReplicaError::Io(IoError::Checksum { .. })) => local_bad = true,
                Err(ReplicaError::Io(e)) => return Err(e),
                Err(_) => {} // not confirmed here now: read from the primary
            }
        }
        let body = ctx.encode_to_vec();
        let len = buf.len();
        let data = self.with_primary(vol, ext, offset, |rec, addr| match addr {
            None => {
                let mut b = vec![0u8; len];
                self.svc
                    .read_local(ext.id, rec.generation, Some(&ctx), offset, &mut b, false)
                    .map(|_| b)
            }
            Some(a) => {
                let h = Header {
                    op: Op::Read as u8,
                    extent: ext.id,
                    generation: rec.generation,
                    offset,
                    aux: len as u32,
                    ..Default::default()
                };
                self.remote(vol, ext.index * vol.extent_size, &a, h, body.clone(), &[])
            }
        })?;
        if data.len() != len {
            return Err(IoError::Device {
                volume: vol.name.clone(),
                detail: format!("extent {}: short read of {} bytes", ext.id, data.len()),
            });
        }
        buf.copy_from_slice(&data);
        if local_bad {
            // Our copy is bad: ask the primary to push a good one back.
            let rec = self.latest(ext);
            if let Some(addr) = rec
                .primary()
                .filter(|p| *p != me)
                .and_then(|p| self.svc.addr_of(p))
            {
                let h = Header {
                    op: Op::Repair as u8,
                    extent: ext.id,
                    generation: rec.generation,
                    offset,
                    aux: len as u32,
                    ..Default::default()
                };
                if let Err(e) = self.remote(
                    vol,
                    ext.index * vol.extent_size,
                    &addr,
                    h,
                    Vec::new(),
                    me.as_bytes(),
                ) {
                    log::warn!(
                        "replica: extent {}: asking the primary to repair our copy: {e:?}",
                        ext.id
                    );
                }
            }
        }
        Ok(())
    }

    fn write(
        &self,
        vol: &VolumeMeta,
        ext: &ExtentMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), IoError> {
        self.write_via_primary(vol, ext, offset, data, None)
    }

    fn write_shared(
        &self,
        vol: &VolumeMeta,
        ext: &ExtentMeta,
        offset: u64,
        data: &Arc<DmaBuf>,
    ) -> Result<(), IoError> {
        self.write_via_primary(vol, ext, offset, data.as_slice(), Some(data))
    }

    fn write_zeroes(
        &self,
        vol: &VolumeMeta,
        ext: &ExtentMeta,
        offset: u64,
        len: u64,
        deallocate: bool,
    ) -> Result<(), IoError> {
        let ctx = Self::ctx(vol, ext);
        let body = ctx.encode_to_vec();
        self.with_primary(vol, ext, offset, |rec, addr| match addr {
            None => self
                .svc
                .zero_as_primary(ext.id, rec.generation, &ctx, offset, len, deallocate),
            Some(a) => {
                let flags = if deallocate { FLAG_DEALLOCATE } else { 0 };
                let h = Header {
                    op: Op::Zero as u8,
                    flags,
                    extent: ext.id,
                    generation: rec.generation,
                    offset,
                    aux: len as u32,
                    ..Default::default()
                };
                self.remote(vol, ext.index * vol.extent_size, &a, h, body.clone(), &[])
                    .map(|_| ())
            }
        })
    }

    fn compare_and_write(
        &self,
        vol: &VolumeMeta,
        ext: &ExtentMeta,
        offset: u64,
        compare: &[u8],
        write: &[u8],
    ) -> Result<(), IoError> {
        let ctx = Self::ctx(vol, ext);
        let body = ctx.encode_to_vec();
        let mut both = Vec::with_capacity(compare.len() * 2);
        both.extend_from_slice(compare);
        both.extend_from_slice(write);
        self.with_primary(vol, ext, offset, |rec, addr| match addr {
            None => self.svc.compare_and_write_as_primary(
                ext.id,
                rec.generation,
                &ctx,
                offset,
                compare,
                write,
            ),
            Some(a) => {
                let h = Header {
                    op: Op::CompareWrite as u8,
                    extent: ext.id,
                    generation: rec.generation,
                    offset,
                    ..Default::default()
                };
                self.remote(vol, ext.index * vol.extent_size, &a, h, body.clone(), &both)
                    .map(|_| ())
            }
        })
    }

    fn flush(&self) -> Result<(), IoError> {
        // Every write is durable on its replicas when it is acknowledged.
        Ok(())
    }

    fn access_state(&self, ext: &ExtentMeta) -> AccessState {
        let rec = self.latest(ext);
        if rec.replicas.len() > 1 && !self.svc.confirmed_recently(Duration::from_secs(10)) {
            // Cut off from meta for long: another path should take the I/O.
            return AccessState::Inaccessible;
        }
        if rec.replicas.iter().any(|r| r == self.svc.node_id()) {
            AccessState::Optimized
        } else {
            AccessState::NonOptimized
        }
    }
}
