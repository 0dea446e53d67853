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
    }
}
