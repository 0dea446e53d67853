//! What is stored in etcd: one JSON record per key (readable with
//! `etcdctl get --prefix /ferrite/v1/`), and its conversion to the
//! protocol's messages. Records are the source of truth; the protocol
//! types are views of them.

use serde::{Deserialize, Serialize};

use crate::proto;

/// Thin or thick provisioning, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provisioning {
    /// Extents are placed on first write.
    Thin,
    /// Extents are placed when the volume is created or grown.
    Thick,
}

/// Failure-domain level, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureDomain {
    /// Replicas on distinct nodes.
    Node,
    /// Replicas in distinct zones where enough zones exist.
    Zone,
}

/// A node's state, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Registered and (as far as meta knows) alive.
    Up,
    /// Its lease expired and the grace period passed.
    Down,
    /// Being emptied (`DrainNode`): gets no new extents, and the
    /// scheduler moves its replicas to other nodes.
    Draining,
}

/// A volume's state, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeState {
    /// Usable.
    Ready,
    /// A thick volume whose extents take more than one transaction and are
    /// not all placed yet.
    Creating,
}

/// `/ferrite/v1/pools/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    /// Pool name (also the key's last part).
    pub name: String,
    /// 1 to 3.
    pub replica_count: u32,
    /// Thin or thick.
    pub provisioning: Provisioning,
    /// Bytes per extent, a power of two.
    pub extent_size: u64,
    /// Failure-domain level.
    pub failure_domain: FailureDomain,
    /// Creation time, Unix milliseconds.
    pub created_unix_ms: u64,
    /// Replicas that must have a write durably before it is acknowledged;
    /// 0 (records written before issue 5) means the default, see
    /// [`default_min_replicas`].
    #[serde(default)]
    pub min_replicas: u32,
}

/// The default write quorum: 1 when `replica_count` ≤ 2, else 2.
pub fn default_min_replicas(replica_count: u32) -> u32 {
    if replica_count <= 2 {
        1
    } else {
        2
    }
}

fn resolve_min_replicas(stored: u32, replica_count: u32) -> u32 {
    if stored == 0 {
        default_min_replicas(replica_count)
    } else {
        stored
    }
}

impl PoolRecord {
    /// The write quorum, with the default applied.
    pub fn resolved_min_replicas(&self) -> u32 {
        resolve_min_replicas(self.min_replicas, self.replica_count)
    }
}

/// `/ferrite/v1/volumes/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// Volume name.
    pub name: String,
    /// Random (v4) uuid, fixed for the volume's life.
    pub uuid: String,
    /// Pool name.
    pub pool: String,
    /// Bytes.
    pub size: u64,
    /// 512 or 4096.
    pub block_size: u32,
    /// Bumped on every change of size or extent map. Invariant: every
    /// transaction that writes one of the volume's extents also writes
    /// this record, so its mod revision guards the whole extent set.
    pub generation: u64,
    /// Creation time, Unix milliseconds.
    pub created_unix_ms: u64,
    /// Copied from the pool (pool policy never changes).
    pub extent_size: u64,
    /// Copied from the pool.
    pub replica_count: u32,
    /// Copied from the pool.
    pub provisioning: Provisioning,
    /// Copied from the pool.
    pub failure_domain: FailureDomain,
    /// Ready, or creating (see [`VolumeState`]).
    pub state: VolumeState,
    /// For a creating volume: the leadership term (creation revision of the
    /// leader key) that started it. A later leader rolls back creates
    /// left by an earlier term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creating_term: Option<i64>,
    /// Copied from the pool; 0 means the default.
    #[serde(default)]
    pub min_replicas: u32,
}

impl VolumeRecord {
    /// The write quorum, with the default applied.
    pub fn resolved_min_replicas(&self) -> u32 {
        resolve_min_replicas(self.min_replicas, self.replica_count)
    }
}

/// `/ferrite/v1/extents/<volume uuid>/<index>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentRecord {
    /// Cluster-unique id from the extent id counter.
    pub id: u64,
    /// Owning volume's uuid.
    pub volume_uuid: String,
    /// Index in the volume (offset / extent size).
    pub index: u64,
    /// Node ids, primary first. Serve reads and ack every write.
    pub replicas: Vec<String>,
    /// Bumped on every change of `replicas` or `learners`.
    pub generation: u64,
    /// Nodes the primary is filling: they get forwarded writes, serve no
    /// reads and are not durable copies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learners: Vec<String>,
}

impl ExtentRecord {
    /// Whether `node` is a replica or a learner.
    pub fn holds(&self, node: &str) -> bool {
        self.replicas.iter().any(|r| r == node) || self.learners.iter().any(|l| l == node)
    }

    /// Replicas then learners.
    pub fn members(&self) -> impl Iterator<Item = &String> {
        self.replicas.iter().chain(self.learners.iter())
    }

    /// Whether the extent belongs in the repair index: a replica count
    /// other than the pool's, or learners being filled.
    pub fn needs_repair(&self, replica_count: u32) -> bool {
        self.replicas.len() != replica_count as usize || !self.learners.is_empty()
    }
}

/// The value of the node-extent and repair index keys: a copy of the
/// extent record (written in the same transaction, so its mod revision is
/// the record's) with what a node needs to know of its volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentEntry {
    /// Volume name.
    pub volume: String,
    /// The volume's extent size.
    pub extent_size: u64,
    /// The volume's replica count.
    pub replica_count: u32,
    /// The volume's failure domain.
    pub failure_domain: FailureDomain,
    /// The extent record as written.
    pub extent: ExtentRecord,
}

impl ExtentEntry {
    /// The entry of `extent` of `volume`.
    pub fn new(volume: &VolumeRecord, extent: &ExtentRecord) -> Self {
        ExtentEntry {
            volume: volume.name.clone(),
            extent_size: volume.extent_size,
            replica_count: volume.replica_count,
            failure_domain: volume.failure_domain,
            extent: extent.clone(),
        }
    }
}

/// `/ferrite/v1/extent-ids/<id>`: where extent `id` lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentRef {
    /// Volume name (volumes are never renamed).
    pub volume: String,
    /// Volume uuid (a volume created again under the name has another).
    pub volume_uuid: String,
    /// Index in the volume.
    pub index: u64,
}

/// `/ferrite/v1/deleted-volumes/<uuid>`: a deleted volume whose extent id
/// keys are still to be removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedVolume {
    /// Its name, for logs.
    pub volume: String,
    /// Its uuid (the id keys name it).
    pub volume_uuid: String,
    /// Smallest and largest id of its extents.
    pub first_id: u64,
    /// See `first_id`.
    pub last_id: u64,
}

/// `/ferrite/v1/nodes/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id.
    pub id: String,
    /// Front-end host:port.
    pub gateway_address: String,
    /// Replica protocol host:port.
    pub replica_address: String,
    /// Zone ("" when none).
    pub zone: String,
    /// Bytes of storage the node has.
    pub capacity_total: u64,
    /// Bytes free as last reported by the node.
    pub capacity_free: u64,
    /// Bytes of extents placed on the node by meta (extent size per
    /// replica). Changed in the same transaction as the extents.
    pub allocated: u64,
    /// Up, down or draining.
    pub state: NodeState,
    /// The etcd lease its liveness key hangs on.
    pub lease_id: i64,
    /// Last registration time, Unix milliseconds.
    pub registered_unix_ms: u64,
    /// Set by `DrainNode` and kept until the node is removed: a drained
    /// node that goes down and registers again comes back draining.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drain: bool,
    /// Unique among the node records (1, 2, ...; 0 in records written
    /// before it existed, until the node registers again). Kept while the
    /// record exists.
    #[serde(default)]
    pub gateway_index: u32,
}

impl NodeRecord {
    /// Bytes meta may still place on the node: what is not yet promised
    /// to extents, and never more than the node says is free (a device
    /// shared with something else fills without meta's knowledge).
    pub fn available(&self) -> u64 {
        self.capacity_total
            .saturating_sub(self.allocated)
            .min(self.capacity_free)
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl From<Provisioning> for proto::Provisioning {
    fn from(p: Provisioning) -> Self {
        match p {
            Provisioning::Thin => proto::Provisioning::Thin,
            Provisioning::Thick => proto::Provisioning::Thick,
        }
    }
}

impl From<proto::Provisioning> for Provisioning {
    fn from(p: proto::Provisioning) -> Self {
        match p {
            proto::Provisioning::Thick => Provisioning::Thick,
            _ => Provisioning::Thin,
        }
    }
}

impl From<FailureDomain> for proto::FailureDomain {
    fn from(d: FailureDomain) -> Self {
        match d {
            FailureDomain::Node => proto::FailureDomain::Node,
            FailureDomain::Zone => proto::FailureDomain::Zone,
        }
    }
}

impl From<proto::FailureDomain> for FailureDomain {
    fn from(d: proto::FailureDomain) -> Self {
        match d {
            proto::FailureDomain::Zone => FailureDomain::Zone,
            _ => FailureDomain::Node,
        }
    }
}

impl From<NodeState> for proto::NodeState {
    fn from(s: NodeState) -> Self {
        match s {
            NodeState::Up => proto::NodeState::Up,
            NodeState::Down => proto::NodeState::Down,
            NodeState::Draining => proto::NodeState::Draining,
        }
    }
}

impl From<&PoolRecord> for proto::Pool {
    fn from(p: &PoolRecord) -> Self {
        proto::Pool {
            name: p.name.clone(),
            replica_count: p.replica_count,
            provisioning: proto::Provisioning::from(p.provisioning) as i32,
            extent_size: p.extent_size,
            failure_domain: proto::FailureDomain::from(p.failure_domain) as i32,
            created_unix_ms: p.created_unix_ms,
            min_replicas: p.resolved_min_replicas(),
        }
    }
}

impl From<&VolumeRecord> for proto::Volume {
    fn from(v: &VolumeRecord) -> Self {
        proto::Volume {
            name: v.name.clone(),
            uuid: v.uuid.clone(),
            pool: v.pool.clone(),
            size: v.size,
            block_size: v.block_size,
            generation: v.generation,
            created_unix_ms: v.created_unix_ms,
            extent_size: v.extent_size,
            replica_count: v.replica_count,
            provisioning: proto::Provisioning::from(v.provisioning) as i32,
            state: match v.state {
                VolumeState::Ready => proto::VolumeState::Ready,
                VolumeState::Creating => proto::VolumeState::Creating,
            } as i32,
            min_replicas: v.resolved_min_replicas(),
            health: None,
        }
    }
}

impl From<&ExtentRecord> for proto::Extent {
    fn from(e: &ExtentRecord) -> Self {
        proto::Extent {
            id: e.id,
            volume_uuid: e.volume_uuid.clone(),
            index: e.index,
            replicas: e.replicas.clone(),
            generation: e.generation,
            learners: e.learners.clone(),
        }
    }
}

impl NodeRecord {
    /// The protocol view; `alive` says whether its liveness key exists.
    pub fn to_proto(&self, alive: bool) -> proto::Node {
        proto::Node {
            id: self.id.clone(),
            addresses: Some(proto::NodeAddresses {
                gateway: self.gateway_address.clone(),
                replica: self.replica_address.clone(),
            }),
            zone: self.zone.clone(),
            capacity_total: self.capacity_total,
            capacity_free: self.capacity_free,
            allocated: self.allocated,
            state: proto::NodeState::from(self.state) as i32,
            lease_id: self.lease_id,
            alive,
            registered_unix_ms: self.registered_unix_ms,
            replicas: 0,
            learners: 0,
            resync_bytes_done: 0,
            resync_bytes_total: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_field_names() {
        let v = VolumeRecord {
            name: "vol0".into(),
            uuid: "u".into(),
            pool: "pool0".into(),
            size: 4096,
            block_size: 512,
            generation: 1,
            created_unix_ms: 5,
            extent_size: 1 << 20,
            replica_count: 2,
            provisioning: Provisioning::Thick,
            failure_domain: FailureDomain::Zone,
            state: VolumeState::Ready,
            creating_term: None,
            min_replicas: 0,
        };
        let s = serde_json::to_string(&v).unwrap();
        assert!(s.contains("\"provisioning\":\"thick\""), "{s}");
        assert!(!s.contains("creating_term"), "{s}");
        assert_eq!(serde_json::from_str::<VolumeRecord>(&s).unwrap(), v);
        assert_eq!(v.resolved_min_replicas(), 1);
    }

    #[test]
    fn records_of_issue_4_still_decode() {
        let e: ExtentRecord = serde_json::from_str(
            r#"{"id":7,"volume_uuid":"u","index":0,"replicas":["a","b"],"generation":3}"#,
        )
        .unwrap();
        assert!(e.learners.is_empty());
        assert!(e.holds("b") && !e.holds("c"));
        assert!(!serde_json::to_string(&e).unwrap().contains("learners"));
        assert!(e.needs_repair(3) && !e.needs_repair(2));
        let p: PoolRecord = serde_json::from_str(
            r#"{"name":"p","replica_count":3,"provisioning":"thin","extent_size":1048576,"failure_domain":"node","created_unix_ms":0}"#,
        )
        .unwrap();
        assert_eq!(p.resolved_min_replicas(), 2);
        assert_eq!(default_min_replicas(1), 1);
        assert_eq!(default_min_replicas(2), 1);
        let n: NodeRecord = serde_json::from_str(
            r#"{"id":"n","gateway_address":"h:1","replica_address":"h:2","zone":"","capacity_total":1,"capacity_free":1,"allocated":0,"state":"up","lease_id":1,"registered_unix_ms":0}"#,
        )
        .unwrap();
        assert!(!n.drain);
        assert!(!serde_json::to_string(&n).unwrap().contains("drain"));
    }

    #[test]
    fn available_is_the_smaller_of_unpromised_and_reported_free() {
        let mut n = NodeRecord {
            id: "n".into(),
            gateway_address: "h:1".into(),
            replica_address: "h:2".into(),
            zone: String::new(),
            capacity_total: 100,
            capacity_free: 100,
            allocated: 30,
            state: NodeState::Up,
            lease_id: 1,
            registered_unix_ms: 0,
            drain: false,
            gateway_index: 1,
        };
        assert_eq!(n.available(), 70);
        n.capacity_free = 10;
        assert_eq!(n.available(), 10);
        n.allocated = 200;
        assert_eq!(n.available(), 0);
    }
}
