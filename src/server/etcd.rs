//! The config kept in etcd: `--config etcd://HOST:PORT[,HOST:PORT...]/KEY` loads the TOML
//! document stored under KEY, then watches the key and applies each new revision through the
//! same validated, transactional reload as a file (an invalid revision is logged with its
//! revision number and `line:column`, and the running config stays).
//!
//! It speaks etcd's v3 JSON gateway ([`crate::fleet::etcd`]). When the watch breaks (etcd
//! restarting, a compacted revision), it reads the key again after a short pause and watches
//! on from there; revisions already applied are not applied twice.

use std::sync::Arc;

use super::dns::System;
use super::ReloadHandle;
use crate::config::address::split_etcd_url;
use crate::config::Config;
use crate::fleet::etcd::{Backoff, Gateway};

/// Where the config lives: `etcd://HOST:PORT[,HOST:PORT...]/KEY`.
#[derive(Debug, Clone)]
pub struct EtcdSource {
    /// `HOST:PORT` of the etcd cluster's client endpoints, comma-separated.
    pub endpoint: String,
    /// The key holding the TOML document.
    pub key: String,
    /// The members, remembering which answered last; shared by clones, so the watch starts
    /// on the member the start read from.
    gateway: Arc<Gateway>,
}

impl PartialEq for EtcdSource {
    fn eq(&self, other: &EtcdSource) -> bool {
        (&self.endpoint, &self.key) == (&other.endpoint, &other.key)
    }
}

impl Eq for EtcdSource {}

/// Why the config could not be read from etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// etcd could not be reached or answered something else than the gateway's JSON.
    #[error("etcd at {endpoint}: {why}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// What happened.
        why: String,
    },
    /// The key does not exist.
    #[error(
        "etcd at {endpoint}: no key {key:?}; put the config there first (etcdctl put {key} \"$(cat steelyard.toml)\")"
    )]
    Missing {
        /// The endpoint.
        endpoint: String,
        /// The key.
        key: String,
    },
    /// The document under the key is not a valid config.
    #[error("{0}")]
    Invalid(String),
}

/// One revision of the key.
#[derive(Debug)]
struct Revision {
    /// The key's `mod_revision`.
    number: i64,
    /// The store's revision when it was read (the watch starts after it).
    store: i64,
    text: String,
}

impl EtcdSource {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...]/KEY`; `None` when `s` is not an etcd URL.
    pub fn parse(s: &str) -> Option<Result<EtcdSource, String>> {
        s.strip_prefix("etcd://")?;
        Some(match split_etcd_url(s) {
            Some((endpoint, key)) => Ok(EtcdSource {
                endpoint: endpoint.to_owned(),
                key: key.to_owned(),
                gateway: Arc::new(Gateway::new(endpoint)),
            }),
            None => Err(format!("{s:?} is not etcd://HOST:PORT[,HOST:PORT...]/KEY")),
        })
    }

    /// The URL it was given as.
    pub fn url(&self) -> String {
        format!("etcd://{}{}", self.endpoint, self.key)
    }

    /// Reads and validates the config at the key, returning it with the revision to watch
    /// from.
    pub async fn load(&self) -> Result<(Config, i64), EtcdError> {
        let rev = self.read().await?;
        let config = self.parse_revision(&rev).map_err(EtcdError::Invalid)?;
        Ok((config, rev.number))
    }

    fn parse_revision(&self, rev: &Revision) -> Result<Config, String> {
        let name = format!("{}@{}", self.url(), rev.number);
        Config::from_toml(&rev.text, &name, &System).map_err(|e| e.to_string())
    }

    async fn read(&self) -> Result<Revision, EtcdError> {
        let range = self
            .gateway
            .range(&self.key, None)
            .await
            .map_err(|why| self.unreachable(why))?;
        let Some(kv) = range.kvs.into_iter().next() else {
            return Err(EtcdError::Missing {
                endpoint: self.endpoint.clone(),
                key: self.key.clone(),
            });
        };
        Ok(Revision {
            number: kv.mod_revision,
            store: range.store,
            text: kv.value,
        })
    }

    fn unreachable(&self, why: String) -> EtcdError {
        EtcdError::Unreachable {
            endpoint: self.endpoint.clone(),
            why,
        }
    }

    /// Watches the key forever from after revision `applied`, applying each new revision
    /// through `reload` after `adjust` (the command line's overrides) has been applied to it.
    pub async fn watch(self, mut applied: i64, reload: ReloadHandle, adjust: impl Fn(&mut Config) + Send) {
        let mut backoff = Backoff::default();
        loop {
            let Err(why) = self.follow(&mut applied, &reload, &adjust, &mut backoff).await;
            tracing::warn!(source = %self.url(), "etcd watch broken: {why}; reading the key again in {:?}", backoff.pause());
            backoff.wait().await;
        }
    }

    /// Catches up with the key, then applies its changes until the watch ends (with why).
    async fn follow(
        &self,
        applied: &mut i64,
        reload: &ReloadHandle,
        adjust: &impl Fn(&mut Config),
        backoff: &mut Backoff,
    ) -> Result<std::convert::Infallible, String> {
        let current = match self.read().await {
            Ok(rev) => rev,
            Err(EtcdError::Missing { .. }) => return Err("the key is gone; the running config stays".into()),
            Err(e) => return Err(e.to_string()),
        };
        let from = current.store + 1;
        if current.number > *applied {
            self.apply(current, applied, reload, adjust).await;
        }
        let mut watch = self.gateway.watch(&self.key, None, from).await?;
        loop {
            let events = watch.next().await?;
            backoff.reset();
            for event in events {
                let number = event.kv.mod_revision;
                if event.deleted {
                    tracing::warn!(source = %self.url(), revision = number, "the config key was deleted; the running config stays");
                    continue;
                }
                if number > *applied {
                    let rev = Revision {
                        number,
                        store: number,
                        text: event.kv.value,
                    };
                    self.apply(rev, applied, reload, adjust).await;
                }
            }
        }
    }

    /// Validates and applies one revision; an invalid one is logged and skipped.
    async fn apply(&self, rev: Revision, applied: &mut i64, reload: &ReloadHandle, adjust: &impl Fn(&mut Config)) {
        *applied = rev.number;
        match self.parse_revision(&rev) {
            Err(errors) => {
                tracing::error!(source = %self.url(), revision = rev.number, "etcd revision {} is not a valid config; the running config stays:\n{errors}", rev.number)
            }
            Ok(mut config) => {
                adjust(&mut config);
                match reload.apply(config).await {
                    Ok(_) => {
                        tracing::info!(source = %self.url(), revision = rev.number, "applied etcd revision {}", rev.number)
                    }
                    Err(e) => {
                        tracing::error!(source = %self.url(), revision = rev.number, "etcd revision {} not applied: {e}; the running config stays", rev.number)
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let source = EtcdSource::parse("etcd://127.0.0.1:2379/steelyard/config").and_then(Result::ok);
        let parts = source.as_ref().map(|s| (s.endpoint.as_str(), s.key.as_str()));
        assert_eq!(parts, Some(("127.0.0.1:2379", "/steelyard/config")));
        assert!(EtcdSource::parse("etcd://127.0.0.1:2379").expect("etcd").is_err());
        assert_eq!(EtcdSource::parse("/etc/steelyard.toml"), None);
    }
}
