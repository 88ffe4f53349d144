//! The operator's configuration (`config/convoy.toml`, SPEC section 3).
//!
//! Trusted, but typos must not silently become defaults: unknown keys are
//! errors, and every error names the key. Every key can be overridden by an
//! environment variable `CONVOY_<SECTION>_<KEY>` (drivers:
//! `CONVOY_DRIVERS_<NAME>_<KEY>`), which is how secrets usually arrive.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::duration::parse_duration;

/// A configuration error: one line that names the key (or the file position)
/// and says what is wrong. `convoy serve` prints it and exits 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// A value that must never reach a log line.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub github: GithubConfig,
    pub database: DatabaseConfig,
    pub drivers: BTreeMap<String, DriverConfig>,
    pub drift: DriftConfig,
    pub limits: LimitsConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Without a trailing slash.
    pub public_url: String,
    /// Where convoy keeps its git cache and other files it owns.
    pub data_dir: PathBuf,
    /// How long a replica's claim on a piece of work (a delivery, a
    /// rollout) lasts without renewal: the longest a replica that died
    /// holds up its work before another takes it over.
    pub lease: Duration,
}

#[derive(Debug, Clone)]
pub struct GithubConfig {
    pub app_id: u64,
    /// `None` when no key is configured: convoy then takes deliveries but
    /// cannot call GitHub.
    pub private_key: Option<PrivateKey>,
    /// One or more secrets; a delivery signed with any of them is accepted.
    pub webhook_secrets: Vec<Secret>,
    pub api_url: String,
    pub git_url: String,
    pub command_prefix: String,
    pub min_update_interval: Duration,
    pub progress_interval: Duration,
    pub writes_per_minute: u32,
}

/// The App's RS256 private key, read and checked at startup.
#[derive(Clone)]
pub struct PrivateKey {
    pub path: PathBuf,
    pub pem: Secret,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// A SQLite file; its folder is created when missing.
    Sqlite(PathBuf),
    Postgres(String),
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: DatabaseUrl,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DriverConfig {
    HttpAgent(HttpAgentDriver),
    Command(CommandDriver),
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpAgentDriver {
    /// Host names or `*.suffix` patterns an environment URL may point at.
    pub allowed_hosts: Vec<String>,
    /// Sent with every request; `${VAR}` already expanded.
    pub headers: BTreeMap<String, Secret>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CommandDriver {
    pub argv: Vec<String>,
    pub status_argv: Vec<String>,
    pub timeout: Duration,
    pub permanent_exit_codes: Vec<i32>,
}

#[derive(Debug, Clone)]
pub struct DriftConfig {
    pub interval: Duration,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub max_environments: usize,
}

// ---------------------------------------------------------------------------
// The file as written. Everything optional so defaults apply; unknown keys
// are rejected by serde.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    github: RawGithub,
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    drivers: BTreeMap<String, RawDriver>,
    #[serde(default)]
    drift: RawDrift,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    public_url: Option<String>,
    data_dir: Option<String>,
    lease: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGithub {
    app_id: Option<u64>,
    private_key_path: Option<String>,
    webhook_secret: Option<Secret>,
    api_url: Option<String>,
    git_url: Option<String>,
    command_prefix: Option<String>,
    min_update_interval: Option<String>,
    progress_interval: Option<String>,
    writes_per_minute: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDriver {
    kind: Option<String>,
    allowed_hosts: Option<Vec<String>>,
    headers: Option<BTreeMap<String, String>>,
    argv: Option<Vec<String>>,
    status_argv: Option<Vec<String>>,
    timeout: Option<String>,
    permanent_exit_codes: Option<Vec<i32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDrift {
    interval: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_environments: Option<usize>,
}

impl Config {
    /// Reads the file, applies `CONVOY_*` overrides from the process
    /// environment and validates. Relative paths in the file are relative to
    /// the working directory, as the operator sees them.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(format!("{}: cannot read: {e}", path.display())))?;
        let env: Vec<(String, String)> = std::env::vars().collect();
        Config::from_toml(&text, &path.display().to_string(), &env)
    }

    /// The pure part of [`Config::load`]: `env` stands for the process
    /// environment, so tests need not mutate it.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| {
            let pos = e
                .span()
                .map(|s| {
                    let (line, col) = line_col(text, s.start);
                    format!("{line}:{col}:")
                })
                .unwrap_or_default();
            err(format!("{origin}:{pos} {}", e.message().trim()))
        })?;
        apply_env_overrides(&mut raw, env)?;
        build(raw, env)
    }

    /// Checks the private key, if one is configured, can be used to sign an
    /// App JWT. Kept apart from parsing so the check runs once, at startup.
    pub fn verify_private_key(&self) -> Result<(), ConfigError> {
        if let Some(key) = &self.github.private_key {
            jsonwebtoken::EncodingKey::from_rsa_pem(key.pem.expose().as_bytes()).map_err(|e| {
                err(format!(
                    "github.private_key_path: {} is not an RSA private key in PEM form: {e}",
                    key.path.display()
                ))
            })?;
        }
        Ok(())
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The keys of each fixed section, so an override can name them and a typo
/// in an override is caught like a typo in the file.
const SECTION_KEYS: &[(&str, &[&str])] = &[
    ("SERVER", &["LISTEN", "PUBLIC_URL", "DATA_DIR", "LEASE"]),
    (
        "GITHUB",
        &[
            "APP_ID",
            "PRIVATE_KEY_PATH",
            "WEBHOOK_SECRET",
            "API_URL",
            "GIT_URL",
            "COMMAND_PREFIX",
            "MIN_UPDATE_INTERVAL",
            "PROGRESS_INTERVAL",
            "WRITES_PER_MINUTE",
        ],
    ),
    ("DATABASE", &["URL"]),
    ("DRIFT", &["INTERVAL"]),
    ("LIMITS", &["MAX_ENVIRONMENTS"]),
];

fn parse_num<T: std::str::FromStr>(var: &str, value: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| err(format!("{var}: `{value}` is not a valid number")))
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn apply_env_overrides(raw: &mut RawConfig, env: &[(String, String)]) -> Result<(), ConfigError> {
    for (var, value) in env {
        let Some(rest) = var.strip_prefix("CONVOY_") else {
            continue;
        };
        if let Some(rest) = rest.strip_prefix("DRIVERS_") {
            apply_driver_override(raw, var, rest, value)?;
            continue;
        }
        let Some((section, keys)) = SECTION_KEYS
            .iter()
            .find(|(s, _)| rest.starts_with(&format!("{s}_")))
        else {
            continue; // CONVOY_LOG and the like belong to other parts.
        };
        let key = &rest[section.len() + 1..];
        if !keys.contains(&key) {
            return Err(err(format!(
                "{var}: unknown key `{}` in section [{}]; known keys: {}",
                key.to_lowercase(),
                section.to_lowercase(),
                keys.iter()
                    .map(|k| k.to_lowercase())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let v = Some(value.clone());
        match (*section, key) {
            ("SERVER", "LISTEN") => raw.server.listen = v,
            ("SERVER", "PUBLIC_URL") => raw.server.public_url = v,
            ("SERVER", "DATA_DIR") => raw.server.data_dir = v,
            ("SERVER", "LEASE") => raw.server.lease = v,
            ("GITHUB", "APP_ID") => raw.github.app_id = Some(parse_num(var, value)?),
            ("GITHUB", "PRIVATE_KEY_PATH") => raw.github.private_key_path = v,
            ("GITHUB", "WEBHOOK_SECRET") => raw.github.webhook_secret = Some(Secret(value.clone())),
            ("GITHUB", "API_URL") => raw.github.api_url = v,
            ("GITHUB", "GIT_URL") => raw.github.git_url = v,
            ("GITHUB", "COMMAND_PREFIX") => raw.github.command_prefix = v,
            ("GITHUB", "MIN_UPDATE_INTERVAL") => raw.github.min_update_interval = v,
            ("GITHUB", "PROGRESS_INTERVAL") => raw.github.progress_interval = v,
            ("GITHUB", "WRITES_PER_MINUTE") => {
                raw.github.writes_per_minute = Some(parse_num(var, value)?)
            }
            ("DATABASE", "URL") => raw.database.url = v,
            ("DRIFT", "INTERVAL") => raw.drift.interval = v,
            ("LIMITS", "MAX_ENVIRONMENTS") => {
                raw.limits.max_environments = Some(parse_num(var, value)?)
            }
            _ => unreachable!("every key of SECTION_KEYS has an arm"),
        }
    }
    Ok(())
}

/// `CONVOY_DRIVERS_<NAME>_<KEY>`: NAME is the driver's name upper-cased with
/// `-` written as `_`; it must name a driver defined in the file. When two
/// drivers' names both fit (`agent` and `agent-eu`), the longer one whose
/// rest is a known key is meant. `HEADERS_<HEADER>` sets one header (its
/// name lower-cased, `_` as `-`, replacing the file's header of that name
/// in any case); `ARGV` and `STATUS_ARGV` take a JSON array of strings, or
/// words split on whitespace.
fn apply_driver_override(
    raw: &mut RawConfig,
    var: &str,
    rest: &str,
    value: &str,
) -> Result<(), ConfigError> {
    const KEYS: &[&str] = &[
        "KIND",
        "ALLOWED_HOSTS",
        "HEADERS_<HEADER>",
        "ARGV",
        "STATUS_ARGV",
        "TIMEOUT",
        "PERMANENT_EXIT_CODES",
    ];
    let known = |key: &str| {
        key.strip_prefix("HEADERS_").is_some_and(|h| !h.is_empty())
            || KEYS.contains(&key) && !key.contains('<')
    };
    // Every driver whose name fits, the longest first; the first whose
    // rest is a known key wins, else the longest names the unknown key.
    let mut fits: Vec<(String, String)> = raw
        .drivers
        .keys()
        .filter_map(|name| {
            let prefix = format!("{}_", name.to_uppercase().replace('-', "_"));
            rest.strip_prefix(&prefix)
                .map(|key| (name.clone(), key.to_owned()))
        })
        .collect();
    fits.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let Some((name, key)) = fits
        .iter()
        .find(|(_, key)| known(key))
        .or(fits.first())
        .cloned()
    else {
        return Err(err(format!(
            "{var}: names no driver defined in the configuration file"
        )));
    };
    let Some(driver) = raw.drivers.get_mut(&name) else {
        return Err(err(format!(
            "{var}: names no driver defined in the configuration file"
        )));
    };
    let argv = |value: &str| -> Result<Vec<String>, ConfigError> {
        // JSON when it reads as a JSON array of strings; `[ -f x ]` (the
        // `[` program) stays words.
        let trimmed = value.trim();
        if trimmed.starts_with("[\"") || trimmed == "[]" {
            serde_json::from_str(value).map_err(|e| {
                err(format!(
                    "{var}: not a JSON array of strings ({e}); write e.g. [\"helm\", \"upgrade\"]"
                ))
            })
        } else {
            Ok(value.split_whitespace().map(str::to_owned).collect())
        }
    };
    match key.as_str() {
        "KIND" => driver.kind = Some(value.to_owned()),
        "ALLOWED_HOSTS" => driver.allowed_hosts = Some(split_list(value)),
        "ARGV" => driver.argv = Some(argv(value)?),
        "STATUS_ARGV" => driver.status_argv = Some(argv(value)?),
        "TIMEOUT" => driver.timeout = Some(value.to_owned()),
        "PERMANENT_EXIT_CODES" => {
            driver.permanent_exit_codes = Some(
                split_list(value)
                    .iter()
                    .map(|c| parse_num(var, c))
                    .collect::<Result<_, _>>()?,
            )
        }
        other if known(other) => {
            let header = other["HEADERS_".len()..].to_lowercase().replace('_', "-");
            let headers = driver.headers.get_or_insert_with(BTreeMap::new);
            headers.retain(|h, _| !h.eq_ignore_ascii_case(&header));
            headers.insert(header, value.to_owned());
        }
        other => {
            return Err(err(format!(
                "{var}: unknown driver key `{}`; known keys: {}",
                other.to_lowercase(),
                KEYS.iter()
                    .map(|k| k.to_lowercase())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(())
}

fn duration_key(
    key: &str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => parse_duration(&v).map_err(|e| err(format!("{key}: {e}"))),
    }
}

/// Expands `${VAR}` from `env`; a variable that is not set is an error, so a
/// driver never sends `Bearer ` with an empty token.
fn expand_vars(key: &str, value: &str, env: &[(String, String)]) -> Result<String, ConfigError> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| err(format!("{key}: unclosed `${{` in value")))?;
        let name = &after[..end];
        let found = env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| {
                err(format!(
                    "{key}: environment variable {name} is not set (it is used as ${{{name}}})"
                ))
            })?;
        out.push_str(found);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Accepts `sqlite://relative/path.db`, `sqlite:///abs/path.db`,
/// `sqlite::memory:` is refused (nothing would survive a restart), and
/// `postgres://` / `postgresql://` URLs.
pub fn parse_database_url(url: &str) -> Result<DatabaseUrl, ConfigError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() {
            return Err(err(format!(
                "database.url: `{url}` names no file; use sqlite://data/convoy.db or sqlite:///abs/path.db"
            )));
        }
        return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        if url.len() <= "postgres://".len() + 1 {
            return Err(err(format!("database.url: `{url}` names no server")));
        }
        return Ok(DatabaseUrl::Postgres(url.to_owned()));
    }
    Err(err(format!(
        "database.url: `{url}` is not a sqlite:// or postgres:// URL"
    )))
}

fn build(raw: RawConfig, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let listen_text = raw.server.listen.unwrap_or_else(|| "127.0.0.1:3000".into());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        err(format!(
            "server.listen: `{listen_text}` is not an address like 127.0.0.1:3000"
        ))
    })?;
    let public_url = raw
        .server
        .public_url
        .unwrap_or_else(|| format!("http://{listen}"))
        .trim_end_matches('/')
        .to_owned();
    if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
        return Err(err(format!(
            "server.public_url: `{public_url}` must start with http:// or https://"
        )));
    }

    let secrets: Vec<Secret> = raw
        .github
        .webhook_secret
        .map(|s| split_list(s.expose()).into_iter().map(Secret).collect())
        .unwrap_or_default();
    if secrets.is_empty() {
        return Err(err(
            "github.webhook_secret is required: set it in the file or in CONVOY_GITHUB_WEBHOOK_SECRET",
        ));
    }

    let private_key = match raw.github.private_key_path.filter(|p| !p.trim().is_empty()) {
        None => None,
        Some(p) => {
            let path = PathBuf::from(&p);
            let pem = std::fs::read_to_string(&path)
                .map_err(|e| err(format!("github.private_key_path: cannot read {p}: {e}")))?;
            Some(PrivateKey {
                path,
                pem: Secret(pem),
            })
        }
    };

    let api_url = raw
        .github
        .api_url
        .unwrap_or_else(|| "https://api.github.com".into())
        .trim_end_matches('/')
        .to_owned();
    let git_url = raw
        .github
        .git_url
        .unwrap_or_else(|| "https://github.com/{owner}/{repo}.git".into());
    let command_prefix = raw
        .github
        .command_prefix
        .unwrap_or_else(|| "/convoy".into());
    if command_prefix.trim().is_empty() || command_prefix.contains(char::is_whitespace) {
        return Err(err(format!(
            "github.command_prefix: `{command_prefix}` must be one word such as /convoy"
        )));
    }
    let writes_per_minute = raw.github.writes_per_minute.unwrap_or(60);
    if writes_per_minute == 0 {
        return Err(err("github.writes_per_minute must be at least 1"));
    }

    let github = GithubConfig {
        app_id: raw.github.app_id.unwrap_or(0),
        private_key,
        webhook_secrets: secrets,
        api_url,
        git_url,
        command_prefix,
        min_update_interval: duration_key(
            "github.min_update_interval",
            raw.github.min_update_interval,
            Duration::from_secs(5),
        )?,
        progress_interval: duration_key(
            "github.progress_interval",
            raw.github.progress_interval,
            Duration::from_secs(30),
        )?,
        writes_per_minute,
    };

    let url = parse_database_url(
        raw.database
            .url
            .as_deref()
            .unwrap_or("sqlite://data/convoy.db"),
    )?;

    let mut drivers = BTreeMap::new();
    for (name, d) in raw.drivers {
        let key = format!("drivers.{name}");
        let timeout = duration_key(
            &format!("{key}.timeout"),
            d.timeout,
            Duration::from_secs(600),
        )?;
        let driver = match d.kind.as_deref() {
            Some("http-agent") => {
                if d.argv.is_some() || d.status_argv.is_some() || d.permanent_exit_codes.is_some() {
                    return Err(err(format!(
                        "{key}: argv, status_argv and permanent_exit_codes belong to kind = \"command\", not \"http-agent\""
                    )));
                }
                let allowed_hosts = d.allowed_hosts.unwrap_or_default();
                if allowed_hosts.is_empty() {
                    return Err(err(format!(
                        "{key}.allowed_hosts: list the hosts agents may run on, e.g. [\"127.0.0.1\", \"*.internal.example.com\"]"
                    )));
                }
                let mut headers = BTreeMap::new();
                for (h, v) in d.headers.unwrap_or_default() {
                    let expanded = expand_vars(&format!("{key}.headers.{h}"), &v, env)?;
                    headers.insert(h, Secret(expanded));
                }
                DriverConfig::HttpAgent(HttpAgentDriver {
                    allowed_hosts,
                    headers,
                    timeout,
                })
            }
            Some("command") => {
                if d.allowed_hosts.is_some() || d.headers.is_some() {
                    return Err(err(format!(
                        "{key}: allowed_hosts and headers belong to kind = \"http-agent\", not \"command\""
                    )));
                }
                let argv = d.argv.unwrap_or_default();
                if argv.is_empty() {
                    return Err(err(format!(
                        "{key}.argv: a command driver needs the program and its arguments"
                    )));
                }
                DriverConfig::Command(CommandDriver {
                    argv,
                    status_argv: d.status_argv.unwrap_or_default(),
                    timeout,
                    permanent_exit_codes: d.permanent_exit_codes.unwrap_or_default(),
                })
            }
            Some(other) => {
                return Err(err(format!(
                    "{key}.kind: unknown kind `{other}`; use \"http-agent\" or \"command\""
                )));
            }
            None => {
                return Err(err(format!(
                    "{key}.kind is required: \"http-agent\" or \"command\""
                )));
            }
        };
        drivers.insert(name, driver);
    }

    Ok(Config {
        server: ServerConfig {
            listen,
            public_url,
            data_dir: PathBuf::from(raw.server.data_dir.unwrap_or_else(|| "data".into())),
            lease: lease_key(raw.server.lease)?,
        },
        github,
        database: DatabaseConfig { url },
        drivers,
        drift: DriftConfig {
            interval: duration_key(
                "drift.interval",
                raw.drift.interval,
                Duration::from_secs(300),
            )?,
        },
        limits: LimitsConfig {
            max_environments: raw.limits.max_environments.unwrap_or(10_000),
        },
    })
}

/// `server.lease`: at least 1 s (renewals come every third of it, and a
/// database round must fit), at most 10 minutes (a dead replica's work
/// waits that long).
fn lease_key(raw: Option<String>) -> Result<Duration, ConfigError> {
    let lease = duration_key("server.lease", raw, Duration::from_secs(15))?;
    if lease < Duration::from_secs(1) || lease > Duration::from_secs(600) {
        return Err(err(format!(
            "server.lease: {} is out of range; use between 1s and 10m (default 15s)",
            crate::duration::format_duration(lease)
        )));
    }
    Ok(lease)
}

/// Whether `host` is allowed by a list of exact names and `*.suffix`
/// patterns (case-insensitive; `*.example.com` does not match
/// `example.com` itself).
pub fn host_allowed(allowed: &[String], host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    allowed.iter().any(|pattern| {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
            None => host == pattern,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const MINIMAL: &str = "[github]\nwebhook_secret = \"s\"\n";

    #[test]
    fn defaults_apply() {
        let c = Config::from_toml(MINIMAL, "t.toml", &[]).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:3000");
        assert_eq!(c.server.public_url, "http://127.0.0.1:3000");
        assert_eq!(c.github.command_prefix, "/convoy");
        assert_eq!(c.github.min_update_interval, Duration::from_secs(5));
        assert_eq!(c.github.writes_per_minute, 60);
        assert_eq!(
            c.database.url,
            DatabaseUrl::Sqlite(PathBuf::from("data/convoy.db"))
        );
        assert_eq!(c.limits.max_environments, 10_000);
        assert!(c.github.private_key.is_none());
    }

    #[test]
    fn missing_secret_is_refused() {
        let e = Config::from_toml("", "t.toml", &[]).unwrap_err();
        assert!(e.0.contains("github.webhook_secret is required"), "{e}");
    }

    #[test]
    fn secret_from_environment_and_rotation() {
        let c = Config::from_toml(
            "",
            "t.toml",
            &env(&[("CONVOY_GITHUB_WEBHOOK_SECRET", "old, new")]),
        )
        .unwrap();
        let secrets: Vec<_> = c
            .github
            .webhook_secrets
            .iter()
            .map(|s| s.expose())
            .collect();
        assert_eq!(secrets, ["old", "new"]);
    }

    #[test]
    fn unknown_key_in_file_names_it_with_position() {
        let e = Config::from_toml("[server]\nlistn = \"x\"\n", "c.toml", &[]).unwrap_err();
        assert!(e.0.starts_with("c.toml:2:1:"), "{e}");
        assert!(e.0.contains("listn"), "{e}");
    }

    #[test]
    fn unknown_override_key_is_refused() {
        let e = Config::from_toml(
            MINIMAL,
            "c.toml",
            &env(&[("CONVOY_GITHUB_WEBHOOK_SECRT", "x")]),
        )
        .unwrap_err();
        assert!(e.0.contains("CONVOY_GITHUB_WEBHOOK_SECRT"), "{e}");
        assert!(e.0.contains("webhook_secrt"), "{e}");
    }

    #[test]
    fn overrides_win_over_the_file() {
        let c = Config::from_toml(
            "[server]\nlisten = \"127.0.0.1:1\"\n[github]\nwebhook_secret = \"s\"\n",
            "c.toml",
            &env(&[
                ("CONVOY_SERVER_LISTEN", "127.0.0.1:4000"),
                ("CONVOY_DATABASE_URL", "postgres://u@localhost/convoy"),
                ("CONVOY_GITHUB_APP_ID", "42"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 4000);
        assert_eq!(c.github.app_id, 42);
        assert!(matches!(c.database.url, DatabaseUrl::Postgres(_)));
    }

    #[test]
    fn bad_listen_and_database_url_are_named() {
        let e = Config::from_toml(
            MINIMAL,
            "c.toml",
            &env(&[("CONVOY_SERVER_LISTEN", "not an address")]),
        )
        .unwrap_err();
        assert!(e.0.starts_with("server.listen:"), "{e}");
        let e = Config::from_toml(
            MINIMAL,
            "c.toml",
            &env(&[("CONVOY_DATABASE_URL", "mysql://x")]),
        )
        .unwrap_err();
        assert!(e.0.starts_with("database.url:"), "{e}");
    }

    #[test]
    fn unreadable_private_key_is_refused() {
        let e = Config::from_toml(
            "[github]\nwebhook_secret = \"s\"\nprivate_key_path = \"/nonexistent/app.pem\"\n",
            "c.toml",
            &[],
        )
        .unwrap_err();
        assert!(e.0.starts_with("github.private_key_path:"), "{e}");
    }

    #[test]
    fn garbage_private_key_fails_verification() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.pem");
        std::fs::write(&path, "not a key").unwrap();
        let text = format!(
            "[github]\nwebhook_secret = \"s\"\nprivate_key_path = \"{}\"\n",
            path.display()
        );
        let c = Config::from_toml(&text, "c.toml", &[]).unwrap();
        let e = c.verify_private_key().unwrap_err();
        assert!(e.0.contains("not an RSA private key"), "{e}");
    }

    #[test]
    fn drivers_parse_and_expand_headers() {
        let text = r#"
[github]
webhook_secret = "s"
[drivers.agent]
kind = "http-agent"
allowed_hosts = ["127.0.0.1", "*.internal.example.com"]
headers = { Authorization = "Bearer ${AGENT_TOKEN}" }
[drivers.helm]
kind = "command"
argv = ["helm", "upgrade", "{service}"]
status_argv = ["./status.sh", "{environment}"]
timeout = "2m"
permanent_exit_codes = [3]
"#;
        let c = Config::from_toml(text, "c.toml", &env(&[("AGENT_TOKEN", "t0k")])).unwrap();
        let DriverConfig::HttpAgent(agent) = &c.drivers["agent"] else {
            panic!("agent should be http-agent");
        };
        assert_eq!(agent.headers["Authorization"].expose(), "Bearer t0k");
        let DriverConfig::Command(helm) = &c.drivers["helm"] else {
            panic!("helm should be command");
        };
        assert_eq!(helm.timeout, Duration::from_secs(120));
        assert_eq!(helm.permanent_exit_codes, [3]);

        let e = Config::from_toml(text, "c.toml", &[]).unwrap_err();
        assert!(e.0.contains("AGENT_TOKEN is not set"), "{e}");
    }

    #[test]
    fn every_driver_key_can_be_overridden_from_the_environment() {
        let text = r#"
[github]
webhook_secret = "s"
[drivers.agent]
kind = "http-agent"
allowed_hosts = ["127.0.0.1"]
headers = { Authorization = "Bearer file" }
[drivers.agent-eu]
kind = "http-agent"
allowed_hosts = ["127.0.0.1"]
[drivers.helm]
kind = "command"
argv = ["helm"]
"#;
        let c = Config::from_toml(
            text,
            "c.toml",
            &env(&[
                // `agent` fits this name too; the longer `agent-eu` is meant.
                ("CONVOY_DRIVERS_AGENT_EU_ALLOWED_HOSTS", "eu.example.com"),
                ("CONVOY_DRIVERS_AGENT_TIMEOUT", "3s"),
                (
                    "CONVOY_DRIVERS_AGENT_HEADERS_AUTHORIZATION",
                    "Bearer ${TOKEN}",
                ),
                ("CONVOY_DRIVERS_AGENT_HEADERS_X_API_KEY", "k"),
                ("TOKEN", "from-env"),
                (
                    "CONVOY_DRIVERS_HELM_ARGV",
                    r#"["helm", "upgrade", "--set", "a=1,b=2", "{service}"]"#,
                ),
                (
                    "CONVOY_DRIVERS_HELM_STATUS_ARGV",
                    "./status.sh {environment}",
                ),
            ]),
        )
        .unwrap();
        let (DriverConfig::HttpAgent(agent), DriverConfig::HttpAgent(eu)) =
            (&c.drivers["agent"], &c.drivers["agent-eu"])
        else {
            panic!("http agents");
        };
        assert_eq!(eu.allowed_hosts, ["eu.example.com"]);
        assert_eq!(agent.allowed_hosts, ["127.0.0.1"]);
        assert_eq!(agent.timeout, Duration::from_secs(3));
        let headers: Vec<(&str, &str)> = agent
            .headers
            .iter()
            .map(|(h, v)| (h.as_str(), v.expose()))
            .collect();
        assert_eq!(
            headers,
            [("authorization", "Bearer from-env"), ("x-api-key", "k")]
        );
        let DriverConfig::Command(helm) = &c.drivers["helm"] else {
            panic!("helm should be command");
        };
        assert_eq!(
            helm.argv,
            ["helm", "upgrade", "--set", "a=1,b=2", "{service}"]
        );
        assert_eq!(helm.status_argv, ["./status.sh", "{environment}"]);

        let e = Config::from_toml(
            text,
            "c.toml",
            &env(&[("CONVOY_DRIVERS_HELM_ARGV", "[\"helm\", 3]")]),
        )
        .unwrap_err();
        let test = Config::from_toml(
            text,
            "c.toml",
            &env(&[("CONVOY_DRIVERS_HELM_STATUS_ARGV", "[ -f /run/ok ]")]),
        )
        .unwrap();
        let DriverConfig::Command(helm) = &test.drivers["helm"] else {
            panic!("helm should be command");
        };
        assert_eq!(helm.status_argv, ["[", "-f", "/run/ok", "]"]);
        assert!(
            e.0.starts_with("CONVOY_DRIVERS_HELM_ARGV: not a JSON array of strings"),
            "{e}"
        );
        let e = Config::from_toml(
            text,
            "c.toml",
            &env(&[("CONVOY_DRIVERS_AGENT_EU_COLOUR", "blue")]),
        )
        .unwrap_err();
        assert!(e.0.contains("unknown driver key `colour`"), "{e}");
    }

    #[test]
    fn driver_errors_name_the_key() {
        let e = Config::from_toml(
            "[github]\nwebhook_secret = \"s\"\n[drivers.x]\nkind = \"ssh\"\n",
            "c.toml",
            &[],
        )
        .unwrap_err();
        assert!(e.0.starts_with("drivers.x.kind:"), "{e}");
        let e = Config::from_toml(
            "[github]\nwebhook_secret = \"s\"\n[drivers.x]\nkind = \"command\"\n",
            "c.toml",
            &[],
        )
        .unwrap_err();
        assert!(e.0.starts_with("drivers.x.argv:"), "{e}");
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let c = Config::from_toml("[github]\nwebhook_secret = \"hunter2\"\n", "c", &[]).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn host_patterns() {
        let allowed = vec![
            "127.0.0.1".to_string(),
            "*.internal.example.com".to_string(),
        ];
        assert!(host_allowed(&allowed, "127.0.0.1"));
        assert!(host_allowed(&allowed, "a.internal.example.com"));
        assert!(host_allowed(&allowed, "A.Internal.Example.com"));
        assert!(!host_allowed(&allowed, "internal.example.com"));
        assert!(!host_allowed(&allowed, "evilinternal.example.com"));
        assert!(!host_allowed(&allowed, "127.0.0.2"));
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../config/convoy.toml");
        let c = Config::from_toml(
            text,
            "config/convoy.toml",
            &env(&[("CONVOY_GITHUB_WEBHOOK_SECRET", "example")]),
        )
        .unwrap();
        assert!(c.drivers.contains_key("agent"));
    }

    #[test]
    fn lease_defaults_to_15s_reads_the_file_and_the_environment_and_has_bounds() {
        let secret = env(&[("CONVOY_GITHUB_WEBHOOK_SECRET", "s")]);
        let c = Config::from_toml("", "t.toml", &secret).unwrap();
        assert_eq!(c.server.lease, Duration::from_secs(15));
        let c = Config::from_toml("[server]\nlease = \"2s\"\n", "t.toml", &secret).unwrap();
        assert_eq!(c.server.lease, Duration::from_secs(2));
        let c = Config::from_toml(
            "",
            "t.toml",
            &env(&[
                ("CONVOY_GITHUB_WEBHOOK_SECRET", "s"),
                ("CONVOY_SERVER_LEASE", "1m"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.lease, Duration::from_secs(60));
        for bad in ["100ms", "2h", "soon"] {
            let e = Config::from_toml(&format!("[server]\nlease = \"{bad}\"\n"), "t.toml", &secret)
                .unwrap_err();
            assert!(e.0.contains("server.lease"), "{bad}: {e}");
        }
    }
}
