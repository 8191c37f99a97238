//! `[admin]`: where the admin API listens and who may use it.

use std::net::SocketAddr;

use toml::Spanned;

use super::address::parse_listen_address;
use super::{file, Checker};

/// The admin listener: API, metrics, dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// When set, every admin request needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// False for the default address: if it is taken, Steelyard runs without the admin API
    /// rather than not at all.
    pub explicit: bool,
    /// Host names accepted in an admin request's `Host` besides IP literals and `localhost`
    /// (a DNS-rebinding defence: a page served from another name is refused).
    pub hosts: Vec<String>,
}

/// Where the admin listener goes unless told otherwise.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9901);

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: DEFAULT_ADMIN_LISTEN,
            token: None,
            explicit: false,
            hosts: Vec::new(),
        }
    }
}

pub(super) fn validate(section: &Option<Spanned<file::AdminSection>>, check: &mut Checker) -> Option<AdminConfig> {
    let Some(section) = section else {
        return Some(AdminConfig::default());
    };
    let a = section.get_ref();
    if a.enabled == Some(false) {
        return None;
    }
    let listen = match &a.listen {
        None => DEFAULT_ADMIN_LISTEN,
        Some(l) => match parse_listen_address(l.get_ref(), check.resolver) {
            Ok(addr) => addr,
            Err(msg) => {
                check.error(l.span(), format!("admin.listen: {msg}"));
                DEFAULT_ADMIN_LISTEN
            }
        },
    };
    let token = match (&a.token, &a.token_env) {
        (Some(t), None) if !t.get_ref().is_empty() => Some(t.get_ref().clone()),
        (Some(t), None) => {
            check.error(t.span(), "admin.token: must not be empty");
            None
        }
        (None, Some(var)) => match std::env::var(var.get_ref()) {
            Ok(t) if !t.is_empty() => Some(t),
            _ => {
                check.error(
                    var.span(),
                    format!("admin.token_env: environment variable {:?} is not set", var.get_ref()),
                );
                None
            }
        },
        (Some(t), Some(_)) => {
            check.error(t.span(), "admin: give token or token_env, not both");
            None
        }
        (None, None) => None,
    };
    if !listen.ip().is_loopback() && token.is_none() {
        let span = a.listen.as_ref().map_or(section.span(), |l| l.span());
        check.error(
            span,
            format!(
                "admin.listen: {listen} is reachable from other machines; set admin.token (or token_env) to protect it"
            ),
        );
    }
    let hosts = a.hosts.as_ref().map_or_else(Vec::new, |h| {
        for name in h.get_ref() {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !valid {
                check.error(h.span(), format!("admin.hosts: {name:?} is not a host name"));
            }
        }
        h.get_ref().iter().map(|n| n.to_ascii_lowercase()).collect()
    });
    Some(AdminConfig {
        listen,
        token,
        explicit: a.listen.is_some(),
        hosts,
    })
}
