//! Loss injection for tests: on the send path, a packet is dropped,
//! duplicated or held back behind the next one (reordered) at configured
//! rates. Set by `ferrited --dpdk-loss drop=0.02,dup=0.01,reorder=0.02`
//! or the environment variable `FERRITE_DPDK_LOSS` (same syntax).

/// Rates in [0, 1], and the generator's seed.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LossSpec {
    pub drop: f64,
    pub dup: f64,
    pub reorder: f64,
    pub seed: u64,
}

impl LossSpec {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut l = LossSpec {
            seed: 0x5eed,
            ..Default::default()
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("loss spec '{part}' is not key=value"))?;
            if k == "seed" {
                l.seed = v
                    .parse()
                    .map_err(|_| format!("loss seed '{v}' is not a number"))?;
                continue;
            }
            let r: f64 = v
                .parse()
                .map_err(|_| format!("loss rate '{v}' is not a number"))?;
            if !(0.0..=0.5).contains(&r) {
                return Err(format!("loss rate {k}={r} is outside 0..0.5"));
            }
            match k {
                "drop" => l.drop = r,
                "dup" => l.dup = r,
                "reorder" => l.reorder = r,
                _ => {
                    return Err(format!(
                        "unknown loss kind '{k}' (drop, dup, reorder, seed)"
                    ))
                }
            }
        }
        Ok(l)
    }

    pub fn active(&self) -> bool {
        self.drop > 0.0 || self.dup > 0.0 || self.reorder > 0.0
    }
}

/// What to do with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Send,
    Drop,
    Duplicate,
    /// Send after the next packet.
    Delay,
}

/// The per-queue injector (a xorshift generator: reproducible runs).
pub struct Injector {
    spec: LossSpec,
    x: u64,
}

impl Injector {
    pub fn new(spec: LossSpec, stream: u64) -> Self {
        Self {
            spec,
            x: (spec.seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1,
        }
    }

    fn next(&mut self) -> f64 {
        self.x ^= self.x << 13;
        self.x ^= self.x >> 7;
        self.x ^= self.x << 17;
        (self.x >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn fate(&mut self) -> Fate {
        if !self.spec.active() {
            return Fate::Send;
        }
        let r = self.next();
        let s = &self.spec;
        if r < s.drop {
            Fate::Drop
        } else if r < s.drop + s.dup {
            Fate::Duplicate
        } else if r < s.drop + s.dup + s.reorder {
            Fate::Delay
        } else {
            Fate::Send
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_rates() {
        let l = LossSpec::parse("drop=0.1, dup=0.05,reorder=0.05,seed=3").unwrap();
        assert_eq!((l.drop, l.dup, l.reorder, l.seed), (0.1, 0.05, 0.05, 3));
        assert!(LossSpec::parse("drop=2").is_err());
        assert!(LossSpec::parse("lose=0.1").is_err());
        assert!(!LossSpec::parse("").unwrap().active());
        let mut i = Injector::new(l, 1);
        let n = 100_000;
        let drops = (0..n).filter(|_| i.fate() == Fate::Drop).count();
        assert!((8_000..12_000).contains(&drops), "{drops}");
    }
}
