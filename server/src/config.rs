//! Configuration: one typed [`Config`] with defaults, read from an optional TOML
//! file and then from environment variables, validated before the server starts.
//!
//! Precedence: defaults < TOML file (`--config`) < environment. `Debug` never
//! prints secrets (the JWT secret) nor passwords inside database or Redis URLs.
//! `switchboard config print` prints [`DEFAULT_TOML`], which a test keeps equal
//! to [`Config::default`].

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A string that `Debug` and `Display` never reveal.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"[redacted]\"")
    }
}

/// A URL that may carry a password; `Debug` shows it with the password redacted.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct ServiceUrl(String);

impl ServiceUrl {
    pub fn new(s: impl Into<String>) -> Self {
        ServiceUrl(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The URL with any password replaced, fit for logs.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("redacted"));
                u.to_string()
            }
            Ok(u) => u.to_string(),
            Err(_) => "[unparseable url]".to_string(),
        }
    }
}

impl fmt::Debug for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Bounds that protect the server from clients and clients from each other.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest WebSocket frame accepted; larger closes with 1009.
    pub max_frame_bytes: usize,
    /// Frames queued per connection before it counts as a slow consumer (4008).
    pub outbound_queue: usize,
    /// Sustained client frames per second per connection.
    pub rate_per_sec: u32,
    /// Burst of client frames above the sustained rate.
    pub rate_burst: u32,
    /// Rejected frames within 10 s that close the connection with 4029.
    pub rate_strikes: u32,
    /// Seconds between client heartbeats; silence for 3 × this closes the connection.
    pub heartbeat_s: u64,
    /// Seconds a new connection has to send `auth`.
    pub auth_timeout_s: u64,
    /// Seconds after sending during which the sender may recall a message.
    pub recall_window_s: u64,
    /// Largest upload in bytes.
    pub upload_max_bytes: usize,
    /// Lifetime of access tokens in seconds.
    pub access_token_ttl_s: u64,
    /// Lifetime of refresh tokens in seconds.
    pub refresh_token_ttl_s: u64,
    /// Default lifetime of quick-register links in seconds.
    pub quick_link_ttl_s: u64,
    /// Seconds a shutdown waits for connections to close and work to finish.
    pub shutdown_drain_s: u64,
    /// Seconds without a message after which an active service conversation
    /// is closed automatically; 0 turns auto-close off.
    pub idle_close_s: u64,
    /// Background jobs one node runs at the same time.
    pub job_concurrency: usize,
    /// Seconds a node holds a claimed job; a job whose node died runs again
    /// after this. A job's handler is stopped after half of it.
    pub job_lease_s: u64,
    /// Longest wait, in ms, before an idle node looks for due jobs again.
    pub job_poll_ms: u64,
    /// Occurrences of a recurring schedule missed (every node down) by more
    /// than this many seconds are skipped instead of caught up.
    pub schedule_misfire_s: u64,
    /// Seconds a finished job is kept (and its unique key honoured).
    pub job_retention_s: u64,
    /// Seconds after which a resolved ticket the customer did not reopen is
    /// closed automatically; 0 turns auto-close off.
    pub ticket_auto_close_s: u64,
    /// Whether a visitor may start as a new temporary customer without a
    /// quick link or a signed identity (`POST /auth/anonymous`); off answers
    /// 403 there.
    pub anonymous_customers: bool,
    /// New anonymous customers one client IP address (IPv6: one /64) may
    /// start per minute on one node; beyond it 429. 0 turns the per-IP bound
    /// off (for example behind a proxy that limits instead).
    pub anonymous_per_ip_per_min: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 * 1024,
            outbound_queue: 1024,
            rate_per_sec: 50,
            rate_burst: 100,
            rate_strikes: 20,
            heartbeat_s: 25,
            auth_timeout_s: 10,
            recall_window_s: 120,
            upload_max_bytes: 20 * 1024 * 1024,
            access_token_ttl_s: 15 * 60,
            refresh_token_ttl_s: 30 * 24 * 3600,
            quick_link_ttl_s: 7 * 24 * 3600,
            shutdown_drain_s: 10,
            idle_close_s: 1800,
            job_concurrency: 8,
            job_lease_s: 60,
            job_poll_ms: 500,
            schedule_misfire_s: 3600,
            job_retention_s: 7 * 24 * 3600,
            ticket_auto_close_s: 3 * 24 * 3600,
            // On, so that the one-command run chats from a plain /widget.
            anonymous_customers: true,
            // Why 20: a household or office behind one address starts a few
            // chats a minute; a script creating customers is held to 20.
            anonymous_per_ip_per_min: 20,
        }
    }
}

/// Everything the server needs to start.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// SQLite file, uploads and the generated JWT secret live here.
    pub data_dir: PathBuf,
    /// `postgres://…` switches the store to PostgreSQL; unset means SQLite in `data_dir`.
    pub database_url: Option<ServiceUrl>,
    /// `redis://…` switches the bus to Redis; unset means the in-process bus.
    pub redis_url: Option<ServiceUrl>,
    /// Prefix of Redis channel and key names, so several deployments can share one Redis.
    pub redis_prefix: String,
    /// HMAC secret of access tokens; unset means one generated into `data_dir`
    /// (every node of a cluster must then be given the same one).
    pub jwt_secret: Option<Secret>,
    /// HMAC secret shared with a website's backend that signs its logged-in
    /// customers' identity for the widget (`POST /auth/identity`); unset turns
    /// signed identities off.
    pub widget_identity_secret: Option<Secret>,
    /// Origins allowed to open `/ws`: empty = same origin only, `"*"` = any.
    pub allowed_origins: Vec<String>,
    /// Public base URL used in links the server hands out (quick links, uploads).
    pub public_url: Option<String>,
    /// This node's name in metrics and logs; unset means a random one.
    pub node_id: Option<String>,
    pub log_format: LogFormat,
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: "0.0.0.0:8080".parse().expect("valid default address"),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            redis_url: None,
            redis_prefix: "switchboard".into(),
            jwt_secret: None,
            widget_identity_secret: None,
            allowed_origins: Vec::new(),
            public_url: None,
            node_id: None,
            log_format: LogFormat::Text,
            limits: Limits::default(),
        }
    }
}

/// The commented defaults that `switchboard config print` shows.
pub const DEFAULT_TOML: &str = r#"# Switchboard configuration. Every key is optional; these are the defaults.
# Environment variables override the file: SWITCHBOARD_ADDR, SWITCHBOARD_DATA_DIR,
# DATABASE_URL, REDIS_URL, SWITCHBOARD_REDIS_PREFIX, SWITCHBOARD_JWT_SECRET,
# SWITCHBOARD_WIDGET_IDENTITY_SECRET, SWITCHBOARD_ALLOWED_ORIGINS (comma-separated), SWITCHBOARD_PUBLIC_URL,
# SWITCHBOARD_NODE_ID, SWITCHBOARD_LOG_FORMAT, and SWITCHBOARD_<LIMIT> for each
# key of [limits] (for example SWITCHBOARD_MAX_FRAME_BYTES).

# Address to listen on.
addr = "0.0.0.0:8080"
# SQLite file (switchboard.db), uploads/ and a generated jwt-secret live here.
data_dir = "./data"
# database_url = "postgres://user:pass@host/db"   # PostgreSQL instead of SQLite
# redis_url = "redis://127.0.0.1:6379"            # Redis bus: several nodes act as one
# Prefix of Redis channels and keys.
redis_prefix = "switchboard"
# jwt_secret = "at least 32 characters"            # default: generated into data_dir
# widget_identity_secret = "at least 32 characters" # signed customer identity in the widget; default: off
# Origins allowed to open /ws: [] = same origin only, ["*"] = any.
allowed_origins = []
# public_url = "https://chat.example.com"          # base of links the server hands out
# node_id = "node-a"                               # default: random
# "text" or "json"
log_format = "text"

[limits]
# Largest WebSocket frame in bytes (close 1009 beyond it).
max_frame_bytes = 65536
# Frames queued per connection before it is closed as a slow consumer (4008).
outbound_queue = 1024
# Client frames per second per connection, sustained and burst.
rate_per_sec = 50
rate_burst = 100
# Rejected frames within 10 s that close the connection (4029).
rate_strikes = 20
# Heartbeat interval; silence for 3x this closes the connection.
heartbeat_s = 25
# Seconds a new connection has to send auth (close 4001).
auth_timeout_s = 10
# Seconds a sender may recall a message.
recall_window_s = 120
# Largest upload in bytes.
upload_max_bytes = 20971520
# Token lifetimes in seconds.
access_token_ttl_s = 900
refresh_token_ttl_s = 2592000
quick_link_ttl_s = 604800
# Seconds a shutdown waits for connections and work to drain.
shutdown_drain_s = 10
# Seconds without a message before an active service conversation closes (0 = never).
idle_close_s = 1800
# Background jobs (scheduled messages, timers) one node runs at once.
job_concurrency = 8
# Seconds a node holds a claimed job; a job whose node died runs again after this.
job_lease_s = 60
# Longest wait in ms before an idle node looks for due jobs again.
job_poll_ms = 500
# Schedule occurrences missed by more than this many seconds (all nodes down) are skipped.
schedule_misfire_s = 3600
# Seconds finished jobs are kept.
job_retention_s = 604800
# Seconds after which a resolved ticket not reopened closes by itself (0 = never).
ticket_auto_close_s = 259200
# Visitors may start as new temporary customers without a quick link or a signed
# identity (POST /api/v1/auth/anonymous; false = 403 there). Env: true/false, 1/0, on/off, yes/no.
anonymous_customers = true
# New anonymous customers per client IP (IPv6: per /64) per minute, counted on each
# node; 0 = no per-IP bound. Behind a reverse proxy every client has the proxy's IP.
anonymous_per_ip_per_min = 20
"#;

/// A switch from the environment: `true`/`false`, `1`/`0`, `on`/`off`, `yes`/`no`
/// (any case), since operators write all of them.
fn parse_bool(name: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "on" | "yes" => Ok(true),
        "false" | "0" | "off" | "no" => Ok(false),
        other => Err(ConfigError::Env {
            name: name.to_string(),
            message: format!("expected true or false, got {other:?}"),
        }),
    }
}

/// A configuration that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid environment variable {name}: {message}")]
    Env { name: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, then the TOML file if given, then the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with(path, |name| std::env::var(name).ok())
    }

    /// Like [`Config::load`] with an injected environment, for tests.
    pub fn load_with(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?
            }
            None => Config::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parsed<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ConfigError>
        where
            T::Err: fmt::Display,
        {
            value.trim().parse().map_err(|e: T::Err| ConfigError::Env {
                name: name.to_string(),
                message: e.to_string(),
            })
        }
        let non_empty = |name: &str| env(name).filter(|v| !v.trim().is_empty());

        if let Some(v) = non_empty("SWITCHBOARD_ADDR") {
            self.addr = parsed("SWITCHBOARD_ADDR", &v)?;
        }
        if let Some(v) = non_empty("SWITCHBOARD_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = non_empty("DATABASE_URL") {
            self.database_url = Some(ServiceUrl::new(v));
        }
        if let Some(v) = non_empty("REDIS_URL") {
            self.redis_url = Some(ServiceUrl::new(v));
        }
        if let Some(v) = non_empty("SWITCHBOARD_REDIS_PREFIX") {
            self.redis_prefix = v;
        }
        if let Some(v) = non_empty("SWITCHBOARD_JWT_SECRET") {
            self.jwt_secret = Some(Secret::new(v));
        }
        if let Some(v) = non_empty("SWITCHBOARD_WIDGET_IDENTITY_SECRET") {
            self.widget_identity_secret = Some(Secret::new(v));
        }
        if let Some(v) = env("SWITCHBOARD_ALLOWED_ORIGINS") {
            self.allowed_origins = v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(v) = non_empty("SWITCHBOARD_PUBLIC_URL") {
            self.public_url = Some(v);
        }
        if let Some(v) = non_empty("SWITCHBOARD_NODE_ID") {
            self.node_id = Some(v);
        }
        if let Some(v) = non_empty("SWITCHBOARD_ANONYMOUS_CUSTOMERS") {
            self.limits.anonymous_customers = parse_bool("SWITCHBOARD_ANONYMOUS_CUSTOMERS", &v)?;
        }
        if let Some(v) = non_empty("SWITCHBOARD_LOG_FORMAT") {
            self.log_format = match v.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(ConfigError::Env {
                        name: "SWITCHBOARD_LOG_FORMAT".into(),
                        message: format!("expected text or json, got {other:?}"),
                    })
                }
            };
        }
        macro_rules! limit_env {
            ($($field:ident),* $(,)?) => {$(
                let name = concat!("SWITCHBOARD_", stringify!($field)).to_ascii_uppercase();
                if let Some(v) = non_empty(&name) {
                    self.limits.$field = parsed(&name, &v)?;
                }
            )*};
        }
        limit_env!(
            max_frame_bytes,
            outbound_queue,
            rate_per_sec,
            rate_burst,
            rate_strikes,
            heartbeat_s,
            auth_timeout_s,
            recall_window_s,
            upload_max_bytes,
            access_token_ttl_s,
            refresh_token_ttl_s,
            quick_link_ttl_s,
            shutdown_drain_s,
            idle_close_s,
            job_concurrency,
            job_lease_s,
            job_poll_ms,
            schedule_misfire_s,
            job_retention_s,
            ticket_auto_close_s,
            anonymous_per_ip_per_min,
        );
        Ok(())
    }

    /// Rejects values the server cannot run with, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if let Some(url) = &self.database_url {
            let u = url.expose();
            if !(u.starts_with("postgres://")
                || u.starts_with("postgresql://")
                || u.starts_with("sqlite:"))
            {
                return bad(format!(
                    "database_url must start with postgres:// or sqlite: (got {})",
                    url.redacted()
                ));
            }
        }
        if let Some(url) = &self.redis_url {
            let u = url.expose();
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                return bad(format!(
                    "redis_url must start with redis:// or rediss:// (got {})",
                    url.redacted()
                ));
            }
        }
        if let Some(secret) = &self.jwt_secret {
            if secret.expose().len() < 32 {
                return bad("jwt_secret must be at least 32 characters".into());
            }
        }
        if let Some(secret) = &self.widget_identity_secret {
            if secret.expose().len() < 32 {
                return bad("widget_identity_secret must be at least 32 characters".into());
            }
        }
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(char::is_whitespace) {
            return bad("redis_prefix must be non-empty and without spaces".into());
        }
        let l = &self.limits;
        if !(1024..=16 * 1024 * 1024).contains(&l.max_frame_bytes) {
            return bad("limits.max_frame_bytes must be between 1024 and 16777216".into());
        }
        if l.outbound_queue < 16 {
            return bad("limits.outbound_queue must be at least 16".into());
        }
        if l.rate_per_sec == 0 || l.rate_burst == 0 || l.rate_strikes == 0 {
            return bad("limits.rate_per_sec, rate_burst and rate_strikes must be positive".into());
        }
        if l.heartbeat_s == 0 || l.auth_timeout_s == 0 {
            return bad("limits.heartbeat_s and auth_timeout_s must be positive".into());
        }
        if l.access_token_ttl_s < 10 || l.refresh_token_ttl_s < l.access_token_ttl_s {
            return bad(
                "limits.access_token_ttl_s must be >= 10 and <= refresh_token_ttl_s".into(),
            );
        }
        if l.upload_max_bytes == 0 {
            return bad("limits.upload_max_bytes must be positive".into());
        }
        if !(1..=256).contains(&l.job_concurrency) {
            return bad("limits.job_concurrency must be between 1 and 256".into());
        }
        if l.ticket_auto_close_s > 10 * 366 * 24 * 3600 {
            return bad("limits.ticket_auto_close_s must be at most ten years".into());
        }
        // Why at most 10,000: far above any real visitor's need, and a typo
        // like 2000000 should not silently remove the bound (0 does that, on purpose).
        if l.anonymous_per_ip_per_min > 10_000 {
            return bad(
                "limits.anonymous_per_ip_per_min must be at most 10000 (0 = no bound)".into(),
            );
        }
        if l.job_lease_s < 2 {
            return bad("limits.job_lease_s must be at least 2".into());
        }
        if !(10..=60_000).contains(&l.job_poll_ms) {
            return bad("limits.job_poll_ms must be between 10 and 60000".into());
        }
        for origin in &self.allowed_origins {
            if origin != "*" && url::Url::parse(origin).is_err() {
                return bad(format!(
                    "allowed_origins entry {origin:?} is neither \"*\" nor a URL like https://example.com"
                ));
            }
        }
        Ok(())
    }

    /// Whether the store is PostgreSQL.
    pub fn uses_postgres(&self) -> bool {
        self.database_url
            .as_ref()
            .is_some_and(|u| u.expose().starts_with("postgres"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn printed_defaults_are_the_defaults() {
        let parsed: Config = toml::from_str(DEFAULT_TOML).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn environment_overrides_defaults() {
        let c = Config::load_with(
            None,
            env_of(&[
                ("SWITCHBOARD_ADDR", "127.0.0.1:9000"),
                ("DATABASE_URL", "postgres://u:hunter2@localhost/db"),
                ("SWITCHBOARD_ALLOWED_ORIGINS", "https://a.example, *"),
                ("SWITCHBOARD_MAX_FRAME_BYTES", "2048"),
            ]),
        )
        .unwrap();
        assert_eq!(c.addr.port(), 9000);
        assert!(c.uses_postgres());
        assert_eq!(c.allowed_origins, vec!["https://a.example", "*"]);
        assert_eq!(c.limits.max_frame_bytes, 2048);
    }

    #[test]
    fn ticket_auto_close_from_the_environment() {
        assert_eq!(Config::default().limits.ticket_auto_close_s, 259_200);
        let c =
            Config::load_with(None, env_of(&[("SWITCHBOARD_TICKET_AUTO_CLOSE_S", "2")])).unwrap();
        assert_eq!(c.limits.ticket_auto_close_s, 2);
        let e = Config::load_with(
            None,
            env_of(&[("SWITCHBOARD_TICKET_AUTO_CLOSE_S", "999999999999")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("ticket_auto_close_s"), "{e}");
    }

    #[test]
    fn anonymous_customers_from_the_environment() {
        let d = Config::default().limits;
        assert!(d.anonymous_customers);
        assert_eq!(d.anonymous_per_ip_per_min, 20);
        for (value, want) in [
            ("false", false),
            ("0", false),
            ("OFF", false),
            ("no", false),
        ]
        .into_iter()
        .chain([("true", true), ("1", true), ("on", true), ("Yes", true)])
        {
            let c = Config::load_with(None, env_of(&[("SWITCHBOARD_ANONYMOUS_CUSTOMERS", value)]))
                .unwrap();
            assert_eq!(c.limits.anonymous_customers, want, "{value}");
        }
        let e = Config::load_with(
            None,
            env_of(&[("SWITCHBOARD_ANONYMOUS_CUSTOMERS", "maybe")]),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("SWITCHBOARD_ANONYMOUS_CUSTOMERS"),
            "{e}"
        );
        let c = Config::load_with(
            None,
            env_of(&[("SWITCHBOARD_ANONYMOUS_PER_IP_PER_MIN", "3")]),
        )
        .unwrap();
        assert_eq!(c.limits.anonymous_per_ip_per_min, 3);
        let e = Config::load_with(
            None,
            env_of(&[("SWITCHBOARD_ANONYMOUS_PER_IP_PER_MIN", "2000000")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("anonymous_per_ip_per_min"), "{e}");
        let e = Config::load_with(
            None,
            env_of(&[("SWITCHBOARD_ANONYMOUS_PER_IP_PER_MIN", "-1")]),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("SWITCHBOARD_ANONYMOUS_PER_IP_PER_MIN"),
            "{e}"
        );
    }

    #[test]
    fn debug_redacts_secrets_and_passwords() {
        let c = Config {
            database_url: Some(ServiceUrl::new("postgres://u:hunter2@localhost/db")),
            jwt_secret: Some(Secret::new("x".repeat(40))),
            widget_identity_secret: Some(Secret::new("y".repeat(40))),
            ..Config::default()
        };
        let text = format!("{c:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains(&"x".repeat(40)), "{text}");
        assert!(!text.contains(&"y".repeat(40)), "{text}");
        assert!(text.contains("redacted"));
    }

    #[test]
    fn invalid_values_are_rejected_with_their_name() {
        let e = Config::load_with(None, env_of(&[("SWITCHBOARD_ADDR", "nowhere")])).unwrap_err();
        assert!(e.to_string().contains("SWITCHBOARD_ADDR"), "{e}");
        let e =
            Config::load_with(None, env_of(&[("SWITCHBOARD_JWT_SECRET", "short")])).unwrap_err();
        assert!(e.to_string().contains("jwt_secret"), "{e}");
        let e = Config::load_with(
            None,
            env_of(&[("SWITCHBOARD_WIDGET_IDENTITY_SECRET", "short")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("widget_identity_secret"), "{e}");
        let c = Config::load_with(
            None,
            env_of(&[("SWITCHBOARD_WIDGET_IDENTITY_SECRET", &"k".repeat(32))]),
        )
        .unwrap();
        assert_eq!(
            c.widget_identity_secret.as_ref().map(Secret::expose),
            Some("k".repeat(32).as_str())
        );
        let e = Config::load_with(None, env_of(&[("REDIS_URL", "http://x")])).unwrap_err();
        assert!(e.to_string().contains("redis_url"), "{e}");
        let e = Config::load_with(None, env_of(&[("SWITCHBOARD_RATE_PER_SEC", "0")])).unwrap_err();
        assert!(e.to_string().contains("rate_per_sec"), "{e}");
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "adress = \"127.0.0.1:1\"\n").unwrap();
        let e = Config::load_with(Some(&path), env_of(&[])).unwrap_err();
        assert!(e.to_string().contains("adress"), "{e}");
    }
}
