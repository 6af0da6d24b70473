//! Configuration of history and idempotent publish: one serde struct, validated in one place.
//! Deliberately absent: parsing command lines (main.rs) and any I/O.

use std::time::Duration;

use serde::Deserialize;

/// Which groups keep a history, and every bound on the history and idempotency stores.
///
/// History is off by default: with no rule, no group keeps anything and a publish pays
/// nothing for this feature.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Per group-name pattern (globs, `*` matches any run, `:` and `/` included): how many
    /// messages and how long a group keeps. The first matching rule applies.
    pub rules: Vec<HistoryRule>,
    /// Groups that may have a history at once (their position is kept even when their last
    /// message has aged out). Past it, the group published to least recently is forgotten
    /// (counted in `history_groups_evicted`) and starts a new epoch on its next publish.
    pub groups_max: usize,
    /// Bytes all histories may hold together (payloads, their enveloped frames and a fixed
    /// per-message overhead). Past it, a group's oldest messages are evicted (counted).
    pub bytes_max: usize,
    /// How long an idempotency key is remembered after its publish was answered.
    #[serde(with = "humantime_serde_compat")]
    pub idempotency_window: Duration,
    /// Idempotency keys remembered at once. Past it the oldest key is forgotten early
    /// (counted in `idempotency_keys_evicted`): a repeat of it would be delivered again.
    pub idempotency_keys_max: usize,
}

/// One history rule: `pattern=messages,age`, e.g. `chat:*=1000,10m`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRule {
    /// Glob over group ids.
    pub pattern: String,
    /// Messages one group keeps (the newest).
    pub messages_max: usize,
    /// How long a message is kept.
    #[serde(with = "humantime_serde_compat")]
    pub age_max: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            rules: Vec::new(),
            groups_max: 100_000,
            bytes_max: 256 << 20,
            idempotency_window: Duration::from_secs(120),
            idempotency_keys_max: 100_000,
        }
    }
}

/// Longest idempotency key accepted, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;
/// Bytes of idempotency keys and remembered answers held at once (a batch's answer can be
/// large); past it the oldest keys are forgotten early (counted).
pub const IDEMPOTENCY_BYTES_MAX: usize = 64 << 20;
/// Most messages one group may keep.
pub const HISTORY_MESSAGES_MAX: usize = 1_000_000;

impl HistoryConfig {
    /// Whether any group keeps a history.
    pub fn enabled(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Check every bound and pattern; the error says which setting is wrong and why.
    pub fn validate(&self) -> Result<(), String> {
        for r in &self.rules {
            if r.messages_max == 0 || r.messages_max > HISTORY_MESSAGES_MAX {
                return Err(format!(
                    "history rule {:?}: messages must be between 1 and {HISTORY_MESSAGES_MAX}",
                    r.pattern
                ));
            }
            if r.age_max.is_zero() {
                return Err(format!("history rule {:?}: age must be more than 0s", r.pattern));
            }
        }
        super::Rules::new(&self.rules)?;
        if self.groups_max == 0 {
            return Err("history groups_max must be at least 1".into());
        }
        if self.bytes_max < 4096 {
            return Err("history bytes_max must be at least 4096".into());
        }
        if self.idempotency_keys_max == 0 {
            return Err("idempotency_keys_max must be at least 1".into());
        }
        if self.idempotency_window.is_zero() {
            return Err("idempotency_window must be more than 0s".into());
        }
        Ok(())
    }
}

impl std::str::FromStr for HistoryRule {
    type Err = String;

    /// `PATTERN=MESSAGES,AGE`, e.g. `chat:*=1000,10m` (split at the last `=`, so a pattern
    /// may contain `=`).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("bad history rule {s:?}: expected PATTERN=MESSAGES,AGE (chat:*=1000,10m)");
        let (pattern, limits) = s.rsplit_once('=').ok_or_else(bad)?;
        let (messages, age) = limits.split_once(',').ok_or_else(bad)?;
        if pattern.is_empty() {
            return Err(bad());
        }
        let messages_max = messages.trim().parse().map_err(|_| bad())?;
        let age_max = humantime::parse_duration(age.trim()).map_err(|_| bad())?;
        Ok(HistoryRule { pattern: pattern.to_owned(), messages_max, age_max })
    }
}

/// Durations as humantime strings ("30s", "10m") in configuration files.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_validate() {
        let r: HistoryRule = "chat:*=1000,10m".parse().unwrap();
        assert_eq!(r.pattern, "chat:*");
        assert_eq!((r.messages_max, r.age_max), (1000, Duration::from_secs(600)));
        assert!("chat".parse::<HistoryRule>().is_err());
        assert!("=1,1s".parse::<HistoryRule>().is_err());
        assert!("a=x,1s".parse::<HistoryRule>().is_err());
        let mut c = HistoryConfig { rules: vec![r], ..Default::default() };
        assert!(c.validate().is_ok());
        c.rules[0].messages_max = 0;
        assert!(c.validate().unwrap_err().contains("messages"));
        c.rules[0] = "[=1,1s".parse().unwrap();
        assert!(c.validate().unwrap_err().contains("pattern"));
        assert!(!HistoryConfig::default().enabled());
        assert!(HistoryConfig::default().validate().is_ok());
    }

    #[test]
    fn toml_shaped_input_is_checked() {
        let c: HistoryConfig = serde_json::from_str(
            r#"{"rules":[{"pattern":"g*","messages_max":5,"age_max":"1m"}],"idempotency_window":"30s"}"#,
        )
        .unwrap();
        assert_eq!(c.idempotency_window, Duration::from_secs(30));
        assert_eq!(c.rules[0].age_max, Duration::from_secs(60));
        assert!(serde_json::from_str::<HistoryConfig>(r#"{"nope":1}"#).is_err());
    }
}
