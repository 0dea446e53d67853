//! Core sets, written SPDK style as a mask (`-m 0x3`) or as a list
//! (`--cores 0-1,4`).

use std::fmt;
use std::str::FromStr;

/// An ordered set of CPU core numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreSet(Vec<usize>);

impl CoreSet {
    pub fn from_list(mut v: Vec<usize>) -> Self {
        v.sort_unstable();
        v.dedup();
        Self(v)
    }

    /// Parses a hexadecimal mask such as `0x3` or `3` (bit n = core n).
    pub fn parse_mask(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let hex = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("'{s}' is not a hexadecimal core mask like 0x3"));
        }
        let mut cores = Vec::new();
        for (i, c) in hex.chars().rev().enumerate() {
            let v = c.to_digit(16).expect("checked hex digit");
            for b in 0..4 {
                if v & (1 << b) != 0 {
                    cores.push(i * 4 + b);
                }
            }
        }
        if cores.is_empty() {
            return Err(format!("core mask '{s}' selects no core"));
        }
        Ok(Self::from_list(cores))
    }

    /// Parses a list such as `0-1,4` or `[0,2]`.
    pub fn parse_list(s: &str) -> Result<Self, String> {
        let t = s.trim().trim_start_matches('[').trim_end_matches(']');
        let mut cores = Vec::new();
        for part in t.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad =
                || format!("'{part}' in core list '{s}' is not a core number or range like 0-3");
            match part.split_once('-') {
                Some((a, b)) => {
                    let a: usize = a.trim().parse().map_err(|_| bad())?;
                    let b: usize = b.trim().parse().map_err(|_| bad())?;
                    if b < a || b - a > 4096 {
                        return Err(bad());
                    }
                    cores.extend(a..=b);
                }
                None => cores.push(part.parse().map_err(|_| bad())?),
            }
        }
        if cores.is_empty() {
            return Err(format!("core list '{s}' selects no core"));
        }
        Ok(Self::from_list(cores))
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The mask form, e.g. `0x3`.
    pub fn to_mask(&self) -> String {
        let max = self.0.iter().copied().max().unwrap_or(0);
        let mut nibbles = vec![0u8; max / 4 + 1];
        for &c in &self.0 {
            nibbles[c / 4] |= 1 << (c % 4);
        }
        let s: String = nibbles
            .iter()
            .rev()
            .map(|n| char::from_digit(*n as u32, 16).expect("nibble"))
            .collect();
        let digits = s.trim_start_matches('0');
        format!("0x{}", if digits.is_empty() { "0" } else { digits })
    }
}

impl FromStr for CoreSet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("0x") || s.starts_with("0X") {
            Self::parse_mask(s)
        } else {
            Self::parse_list(s)
        }
    }
}

impl fmt::Display for CoreSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_mask())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_lists() {
        assert_eq!(
            CoreSet::parse_mask("0x3").unwrap(),
            CoreSet::from_list(vec![0, 1])
        );
        assert_eq!(
            CoreSet::parse_mask("0x11").unwrap(),
            CoreSet::from_list(vec![0, 4])
        );
        assert_eq!(
            CoreSet::parse_list("0-1,4").unwrap(),
            CoreSet::from_list(vec![0, 1, 4])
        );
        assert_eq!(
            CoreSet::parse_list("[2]").unwrap(),
            CoreSet::from_list(vec![2])
        );
        assert_eq!("0x3".parse::<CoreSet>().unwrap().to_mask(), "0x3");
        assert_eq!(CoreSet::from_list(vec![0, 4]).to_mask(), "0x11");
        assert!(CoreSet::parse_mask("0x0").is_err());
        assert!(CoreSet::parse_mask("zz").is_err());
        assert!(CoreSet::parse_list("3-1").is_err());
        assert!(CoreSet::parse_list("").is_err());
    }
}
