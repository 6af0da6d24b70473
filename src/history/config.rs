//! Configuration of history and idempotent publish (`[history]` in the config file): one
//! serde struct, validated in one place. Deliberately absent: parsing command lines (main.rs)
//! and any I/O.
//!
//! ```toml
//! [history]
//! rules = [
//!     { pattern = "chat:*", messages_max = 1000, age_max = "10m" },
//!     "feed:*=100,1h",            # the same, as the --history-rule flag writes it
//! ]
//! groups_max = 100000
//! bytes_max = 268435456
//! idempotency_window = "2m"
//! idempotency_keys_max = 100000
//! recovery_held_messages_max = 10000
//! ```

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// Which groups keep a history, and every bound on the history and idempotency stores.
///
/// History is off by default: with no rule, no group keeps anything and a publish pays
/// nothing for this feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// A clustered node (history in Redis): live messages of a group held for one recovering
    /// member while its history read is in flight. Past it the held messages are dropped
    /// (counted in `recovery_held_dropped`) and the join answers `recovered: false`.
    pub recovery_held_messages_max: usize,
}

/// One history rule: `pattern=messages,age`, e.g. `chat:*=1000,10m`. In the config file
/// either a table (`{ pattern = "chat:*", messages_max = 1000, age_max = "10m" }`) or that
/// string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryRule {
    /// Glob over group ids.
    pub pattern: String,
    /// Messages one group keeps (the newest).
    pub messages_max: usize,
    /// How long a message is kept.
    #[serde(with = "humantime_serde_compat")]
    pub age_max: Duration,
}

/// The table form of a rule.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleTable {
    pattern: String,
    messages_max: usize,
    #[serde(with = "humantime_serde_compat")]
    age_max: Duration,
}

impl<'de> Deserialize<'de> for HistoryRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Table(RuleTable),
        }
        match Form::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "a history rule is \"PATTERN=MESSAGES,AGE\" or \
                 { pattern = \"..\", messages_max = N, age_max = \"10m\" }",
            )
        })? {
            Form::Text(s) => s.parse().map_err(serde::de::Error::custom),
            Form::Table(t) => Ok(HistoryRule {
                pattern: t.pattern,
                messages_max: t.messages_max,
                age_max: t.age_max,
            }),
        }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            rules: Vec::new(),
            groups_max: 100_000,
            bytes_max: 256 << 20,
            idempotency_window: Duration::from_secs(120),
            idempotency_keys_max: 100_000,
            recovery_held_messages_max: 10_000,
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
        self.validate_keyed().map_err(|(key, m)| format!("history.{key}: {m}"))
    }

    /// [`HistoryConfig::validate`], naming the key at fault (`rules`, `groups_max`...).
    pub fn validate_keyed(&self) -> Result<(), (&'static str, String)> {
        for r in &self.rules {
            if r.messages_max == 0 || r.messages_max > HISTORY_MESSAGES_MAX {
                return Err((
                    "rules",
                    format!(
                        "rule {:?}: messages must be between 1 and {HISTORY_MESSAGES_MAX} \
                         (got {})",
                        r.pattern, r.messages_max
                    ),
                ));
            }
            if r.age_max.is_zero() {
                return Err(("rules", format!("rule {:?}: age must be more than 0s", r.pattern)));
            }
        }
        super::Rules::new(&self.rules).map_err(|e| ("rules", e))?;
        if self.groups_max == 0 {
            return Err(("groups_max", "must be at least 1".into()));
        }
        if self.recovery_held_messages_max == 0 {
            return Err(("recovery_held_messages_max", "must be at least 1".into()));
        }
        if self.bytes_max < 4096 {
            return Err(("bytes_max", format!("must be at least 4096 (got {})", self.bytes_max)));
        }
        if self.idempotency_keys_max == 0 {
            return Err(("idempotency_keys_max", "must be at least 1".into()));
        }
        if self.idempotency_window.is_zero() {
            return Err(("idempotency_window", "must be longer than 0s".into()));
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

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

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
        let c: HistoryConfig = serde_json::from_str(
            r#"{"rules":["a:*=3,2s",{"pattern":"b","messages_max":1,"age_max":"1h"}]}"#,
        )
        .unwrap();
        assert_eq!(c.rules[0], "a:*=3,2s".parse().unwrap());
        assert_eq!(c.rules[1].age_max, Duration::from_secs(3600));
        assert!(serde_json::from_str::<HistoryConfig>(r#"{"rules":["nope"]}"#).is_err());
        assert!(serde_json::from_str::<HistoryConfig>(
            r#"{"rules":[{"pattern":"b","messages_max":1,"age_max":"1h","x":1}]}"#
        )
        .is_err());
        assert_eq!(c.validate_keyed(), Ok(()));
        let bad = HistoryConfig { groups_max: 0, ..c };
        assert_eq!(bad.validate_keyed().unwrap_err().0, "groups_max");
    }
}
