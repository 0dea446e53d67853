//! The etcd key layout. Every key of the cluster lives under [`ROOT`];
//! names and ids are validated (no `/`) before they reach a key, so a
//! prefix ending in `/` never matches a longer sibling name.

/// Everything Ferrite stores in etcd lives under this prefix.
pub const ROOT: &str = "/ferrite/v1/";

/// Prefix of the pool records (`pools/<name>` → JSON `PoolRecord`).
pub const POOLS: &str = "/ferrite/v1/pools/";
/// Prefix of the volume records (`volumes/<name>` → JSON `VolumeRecord`).
pub const VOLUMES: &str = "/ferrite/v1/volumes/";
/// Prefix of the pool membership index (`pool-volumes/<pool>/<volume>` →
/// volume uuid). Deleting a pool compares this range to be empty, which is
/// how "delete if empty" stays atomic against a concurrent volume create.
pub const POOL_VOLUMES: &str = "/ferrite/v1/pool-volumes/";
/// Prefix of the extent records (`extents/<volume uuid>/<index as 16 hex
/// digits>` → JSON `ExtentRecord`). Keyed by uuid, not name, so a volume
/// deleted and created again under the same name never sees old extents,
/// and a volume's extents are one range (deleted with one operation).
pub const EXTENTS: &str = "/ferrite/v1/extents/";
/// The extent id counter: the next unused extent id, in decimal.
pub const EXTENT_ID_COUNTER: &str = "/ferrite/v1/counters/extent-id";
/// Prefix of the node records (`nodes/<id>` → JSON `NodeRecord`).
pub const NODES: &str = "/ferrite/v1/nodes/";
/// Prefix of the node liveness keys (`node-alive/<id>`), each attached to
/// the node's lease: the key vanishes when the lease expires.
pub const NODE_ALIVE: &str = "/ferrite/v1/node-alive/";
/// Prefix of the per-node extent index (`node-extents/<node>/<volume
/// uuid>/<index as 16 hex digits>` → JSON `ExtentEntry`, a copy of the
/// extent record with its volume's name and policy). One key per replica
/// and per learner, written in the same transaction as the extent record,
/// so a range over one node is a consistent list of what it holds. Keyed
/// by volume uuid so that deleting a volume deletes one prefix per node.
pub const NODE_EXTENTS: &str = "/ferrite/v1/node-extents/";
/// Prefix of the repair index (`repair/<volume uuid>/<index>` → JSON
/// `ExtentEntry`): the extents whose replica count differs from their
/// pool's or that have learners. Kept in the same transactions as the
/// extents; the re-replication scheduler ranges it.
pub const REPAIR: &str = "/ferrite/v1/repair/";
/// Prefix of the extent id index (`extent-ids/<id as 16 hex digits>` →
/// JSON `ExtentRef`). Written with the extent; removed after the volume
/// is deleted, by the sweeper (see [`DELETED_VOLUMES`]). A lookup checks
/// that the extent still exists.
pub const EXTENT_IDS: &str = "/ferrite/v1/extent-ids/";
/// Prefix of the tombstones of deleted volumes (`deleted-volumes/<uuid>`
/// → JSON `DeletedVolume` with its extent id range): the leader deletes
/// their id index keys in batches, then the tombstone.
pub const DELETED_VOLUMES: &str = "/ferrite/v1/deleted-volumes/";
/// Index layout version. Written once the indexes above are complete
/// (built from the extents by the first leader that knows them); until
/// then `ListNodeExtents` is refused, since a missing index entry would
/// tell a node to delete a replica.
pub const SCHEMA: &str = "/ferrite/v1/schema";
/// The schema version this code writes.
pub const SCHEMA_VERSION: &str = "2";
/// The etcd election the `ferrite-meta` processes campaign in.
pub const LEADER_ELECTION: &str = "/ferrite/v1/meta/leader";

/// Key of pool `name`.
pub fn pool(name: &str) -> String {
    format!("{POOLS}{name}")
}

/// Key of volume `name`.
pub fn volume(name: &str) -> String {
    format!("{VOLUMES}{name}")
}

/// Membership key of volume `volume` in pool `pool`.
pub fn pool_volume(pool: &str, volume: &str) -> String {
    format!("{POOL_VOLUMES}{pool}/{volume}")
}

/// Prefix of the membership keys of pool `pool`.
pub fn pool_volumes(pool: &str) -> String {
    format!("{POOL_VOLUMES}{pool}/")
}

/// Key of extent `index` of the volume with `uuid`. Fixed-width hex keeps
/// etcd's key order equal to index order.
pub fn extent(uuid: &str, index: u64) -> String {
    format!("{EXTENTS}{uuid}/{index:016x}")
}

/// Prefix of all extents of the volume with `uuid`.
pub fn extents(uuid: &str) -> String {
    format!("{EXTENTS}{uuid}/")
}

/// Key of node `id`.
pub fn node(id: &str) -> String {
    format!("{NODES}{id}")
}

/// Liveness key of node `id`.
pub fn node_alive(id: &str) -> String {
    format!("{NODE_ALIVE}{id}")
}

/// Index key of extent `index` of volume `uuid` on node `node`.
pub fn node_extent(node: &str, uuid: &str, index: u64) -> String {
    format!("{NODE_EXTENTS}{node}/{uuid}/{index:016x}")
}

/// Prefix of node `node`'s index keys.
pub fn node_extents(node: &str) -> String {
    format!("{NODE_EXTENTS}{node}/")
}

/// Prefix of node `node`'s index keys of volume `uuid`.
pub fn node_volume_extents(node: &str, uuid: &str) -> String {
    format!("{NODE_EXTENTS}{node}/{uuid}/")
}

/// Repair index key of extent `index` of volume `uuid`.
pub fn repair(uuid: &str, index: u64) -> String {
    format!("{REPAIR}{uuid}/{index:016x}")
}

/// Prefix of the repair index keys of volume `uuid`.
pub fn repairs(uuid: &str) -> String {
    format!("{REPAIR}{uuid}/")
}

/// Id index key of extent `id`; fixed-width hex keeps key order equal to
/// id order (the sweeper ranges over a volume's id span).
pub fn extent_id(id: u64) -> String {
    format!("{EXTENT_IDS}{id:016x}")
}

/// Tombstone key of the deleted volume `uuid`.
pub fn deleted_volume(uuid: &str) -> String {
    format!("{DELETED_VOLUMES}{uuid}")
}

/// The name part of a key under `prefix`, if the key is under it.
pub fn name_under<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    key.strip_prefix(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_keys_sort_by_index() {
        let a = extent("u", 9);
        let b = extent("u", 10);
        let c = extent("u", 0x1_0000);
        assert!(a < b && b < c);
        assert!(a.starts_with(&extents("u")));
    }

    #[test]
    fn prefixes_do_not_match_siblings() {
        assert!(!pool_volume("p2", "v").starts_with(&pool_volumes("p")));
        assert!(pool_volume("p", "v").starts_with(&pool_volumes("p")));
        assert_eq!(name_under(&node("n1"), NODES), Some("n1"));
        assert!(!node_extent("n10", "u", 0).starts_with(&node_extents("n1")));
        assert!(node_extent("n1", "u", 0).starts_with(&node_extents("n1")));
        assert!(node_extent("n1", "u", 0).starts_with(&node_volume_extents("n1", "u")));
        assert!(repair("u", 3).starts_with(&repairs("u")));
    }

    #[test]
    fn extent_id_keys_sort_by_id() {
        assert!(extent_id(9) < extent_id(10));
        assert!(extent_id(0xffff) < extent_id(0x1_0000));
    }
}
