//! `[security]`: who may reach the service and with what (TLS files, the
//! token file, per-token write rates). See README, "Security", for the
//! threat model.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// TLS, bearer tokens and per-token rates. Everything is off by default,
/// which `vecrec serve` allows only on a loopback address (or with
/// `--insecure`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// PEM certificate chain served over TLS (with `tls_key`); re-read on
    /// SIGHUP. Default none: plain TCP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: when set, clients must present a certificate
    /// signed by one of them (mutual TLS). Default none.
    pub tls_client_ca: Option<PathBuf>,
    /// TOML file of bearer tokens (`[[tokens]]` with `name`, `role` =
    /// "read" | "write" | "admin", `sha256` of the token); written by
    /// `vecrec-admin token new`, re-read on SIGHUP. When set, every call but
    /// health needs `authorization: Bearer <token>`. Default none.
    pub tokens_file: Option<PathBuf>,
    /// Write calls (UpsertItems, DeleteItems, RecordEvents) per second per
    /// token (one bucket for callers without a token); 0: no limit.
    /// Default 0.
    pub write_rate: f64,
    /// Write calls a token may make in a burst. Default 50.
    pub write_burst: f64,
    /// Events recorded per second per token; 0: no limit. Default 0.
    pub event_rate: f64,
    /// Events a token may record in a burst. Default 2560.
    pub event_burst: f64,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tokens_file: None,
            write_rate: 0.0,
            write_burst: 50.0,
            event_rate: 0.0,
            event_burst: 2560.0,
        }
    }
}

impl SecurityConfig {
    /// Whether TLS is configured.
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// Checks that files come in pairs and rates are sensible.
    pub fn validate(&self) -> Result<(), String> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("security.tls_cert and security.tls_key go together".into());
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err("security.tls_client_ca needs security.tls_cert and tls_key".into());
        }
        for (name, x) in [
            ("write_rate", self.write_rate),
            ("write_burst", self.write_burst),
            ("event_rate", self.event_rate),
            ("event_burst", self.event_burst),
        ] {
            if !(x >= 0.0 && x.is_finite()) {
                return Err(format!(
                    "security.{name} must be a finite number ≥ 0, got {x}"
                ));
            }
        }
        if (self.write_rate > 0.0 && self.write_burst < 1.0)
            || (self.event_rate > 0.0 && self.event_burst < 1.0)
        {
            return Err("a rate needs a burst of at least 1".into());
        }
        Ok(())
    }
}
