//! Checks of request fields, each failing with a message that names the
//! field and the value, so that a caller sees what to fix.

use crate::proto::{FailureDomain, Provisioning};

/// Longest name or id accepted (they become parts of etcd keys, NQNs and
/// IQNs).
pub const MAX_NAME_LEN: usize = 128;
/// Extent size when a pool is created with 0.
pub const DEFAULT_EXTENT_SIZE: u64 = 256 << 20;
/// Smallest extent size.
pub const MIN_EXTENT_SIZE: u64 = 1 << 20;
/// Largest extent size: beyond it a single extent would be a large share
/// of a device and placement would be too coarse.
pub const MAX_EXTENT_SIZE: u64 = 64 << 30;
/// Block size when a volume is created with 0.
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;

/// Checks a pool, volume or node name: 1 to 128 of `[A-Za-z0-9._-]`,
/// starting with a letter or digit. `what` names the field ("pool name").
pub fn name(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(format!(
            "{what} '{}…' is longer than {MAX_NAME_LEN} bytes",
            &value[..value.char_indices().nth(32).map_or(value.len(), |(i, _)| i)]
        ));
    }
    let first_ok = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let all_ok = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !first_ok || !all_ok {
        return Err(format!(
            "{what} '{value}' is invalid: use letters, digits, '.', '_' and '-', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a zone name: empty (no zone) or a valid name.
pub fn zone(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    name("zone", value)
}

/// Checks a `host:port` address; `what` names the field.
pub fn address(what: &str, value: &str) -> Result<(), String> {
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(format!("{what} '{value}' is not host:port"));
    };
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("{what} '{value}' is not host:port"));
    }
    Ok(())
}

/// Checks a pool's replica count (1 to 3).
pub fn replica_count(pool: &str, value: u32) -> Result<(), String> {
    if !(1..=3).contains(&value) {
        return Err(format!(
            "pool '{pool}': replica count {value} is invalid: it must be 1, 2 or 3"
        ));
    }
    Ok(())
}

/// Resolves and checks a pool's extent size (0 means the default).
pub fn extent_size(pool: &str, value: u64) -> Result<u64, String> {
    let v = if value == 0 {
        DEFAULT_EXTENT_SIZE
    } else {
        value
    };
    if !v.is_power_of_two() || !(MIN_EXTENT_SIZE..=MAX_EXTENT_SIZE).contains(&v) {
        return Err(format!(
            "pool '{pool}': extent size {v} is invalid: it must be a power of two from 1 MiB to 64 GiB"
        ));
    }
    Ok(v)
}

/// Resolves a requested provisioning (unspecified means thin).
pub fn provisioning(pool: &str, value: i32) -> Result<Provisioning, String> {
    match Provisioning::try_from(value) {
        Ok(Provisioning::Unspecified) | Ok(Provisioning::Thin) => Ok(Provisioning::Thin),
        Ok(Provisioning::Thick) => Ok(Provisioning::Thick),
        Err(_) => Err(format!("pool '{pool}': provisioning {value} is unknown")),
    }
}

/// Resolves a requested failure domain (unspecified means node).
pub fn failure_domain(pool: &str, value: i32) -> Result<FailureDomain, String> {
    match FailureDomain::try_from(value) {
        Ok(FailureDomain::Unspecified) | Ok(FailureDomain::Node) => Ok(FailureDomain::Node),
        Ok(FailureDomain::Zone) => Ok(FailureDomain::Zone),
        Err(_) => Err(format!("pool '{pool}': failure domain {value} is unknown")),
    }
}

/// Resolves and checks a volume's block size (0 means 4096).
pub fn block_size(volume: &str, value: u32) -> Result<u32, String> {
    match value {
        0 => Ok(DEFAULT_BLOCK_SIZE),
        512 | 4096 => Ok(value),
        _ => Err(format!(
            "volume '{volume}': block size {value} is invalid: it must be 512 or 4096"
        )),
    }
}

/// Checks a volume size against its block size.
pub fn volume_size(volume: &str, size: u64, block_size: u32) -> Result<(), String> {
    if size == 0 {
        return Err(format!("volume '{volume}': size is zero"));
    }
    if !size.is_multiple_of(u64::from(block_size)) {
        return Err(format!(
            "volume '{volume}': size {size} is not a multiple of the block size {block_size}"
        ));
    }
    Ok(())
}

/// Number of extents that cover `size` bytes.
pub fn extent_count(size: u64, extent_size: u64) -> u64 {
    size.div_ceil(extent_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name("pool name", "pool0").is_ok());
        assert!(name("pool name", "a.b_c-d").is_ok());
        assert!(name("pool name", "").unwrap_err().contains("empty"));
        assert!(name("pool name", "a/b").unwrap_err().contains("'a/b'"));
        assert!(name("pool name", "-a").is_err());
        assert!(name("pool name", &"x".repeat(129)).is_err());
        assert!(name("pool name", &"é".repeat(100)).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(extent_size("p", 0).unwrap(), 256 << 20);
        assert!(extent_size("p", 3 << 20).is_err());
        assert!(extent_size("p", 512 << 10).is_err());
        assert_eq!(extent_size("p", 1 << 20).unwrap(), 1 << 20);
        assert_eq!(block_size("v", 0).unwrap(), 4096);
        assert!(block_size("v", 1024).is_err());
        assert!(volume_size("v", 0, 512).unwrap_err().contains("zero"));
        assert!(volume_size("v", 1000, 512)
            .unwrap_err()
            .contains("multiple"));
        assert!(volume_size("v", 1024, 512).is_ok());
        assert_eq!(extent_count(1, 4), 1);
        assert_eq!(extent_count(8, 4), 2);
        assert_eq!(extent_count(9, 4), 3);
    }

    #[test]
    fn enums_and_addresses() {
        assert_eq!(provisioning("p", 0).unwrap(), Provisioning::Thin);
        assert!(provisioning("p", 7).is_err());
        assert_eq!(failure_domain("p", 2).unwrap(), FailureDomain::Zone);
        assert!(replica_count("p", 0).is_err());
        assert!(replica_count("p", 4).is_err());
        assert!(address("gateway", "127.0.0.1:10809").is_ok());
        assert!(address("gateway", "127.0.0.1").is_err());
        assert!(address("gateway", ":80").is_err());
        assert!(zone("").is_ok());
    }
}
