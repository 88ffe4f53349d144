//! Validation of `convoy.yml`: walks the positioned YAML tree, builds the
//! resolved [`ConvoySpec`] and collects *every* error with its position.
//!
//! Each field falls back to a harmless value when it is wrong, so checks
//! that need the whole file (references, cycles, waves) still run and report
//! their own errors in the same pass.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, NaiveTime, Utc, Weekday};

use crate::config::{Config, DriverConfig, host_allowed};
use crate::domain::{EnvName, ServiceName, WaveName};
use crate::duration::parse_duration;
use crate::plan::model::{Concurrency, FailureBudget, FreezeWindow, OnDrift, RolloutPolicy};
use crate::plan::waves;
use crate::suggest;

use super::model::{ConvoySpec, EnvSpec, ServiceSpec, WaveSpec};
use super::yaml::{self, Pos, Value, Yaml};

/// The largest `convoy.yml` read (SPEC 2).
pub const MAX_BYTES: usize = 1024 * 1024;
/// At most this many errors are reported; past it, the file is mostly
/// wrong and more lines do not help.
const MAX_ERRORS: usize = 200;

/// One validation error.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpecError {
    pub pos: Pos,
    pub message: String,
}

impl SpecError {
    /// `FILE:LINE:COL: message`.
    pub fn render(&self, file: &str) -> String {
        format!("{file}:{}: {}", self.pos, self.message)
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pos, self.message)
    }
}

/// Caps on untrusted input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_environments: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: MAX_BYTES,
            max_environments: 10_000,
        }
    }
}

/// What validation checks against besides the file itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckContext<'a> {
    /// The operator's drivers; `None` when the operator config is not at
    /// hand (then driver names and URL hosts are not checked against it).
    pub drivers: Option<&'a BTreeMap<String, DriverConfig>>,
    pub limits: Limits,
}

impl<'a> CheckContext<'a> {
    pub fn from_config(config: &'a Config) -> Self {
        CheckContext {
            drivers: Some(&config.drivers),
            limits: Limits {
                max_bytes: MAX_BYTES,
                max_environments: config.limits.max_environments,
            },
        }
    }
}

/// Parses and validates `convoy.yml` given as raw bytes (as read from git).
pub fn parse_spec_bytes(bytes: &[u8], ctx: &CheckContext) -> Result<ConvoySpec, Vec<SpecError>> {
    if bytes.len() > ctx.limits.max_bytes {
        return Err(vec![too_big(bytes.len(), ctx.limits.max_bytes)]);
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => parse_spec(text, ctx),
        Err(e) => {
            let before = &bytes[..e.valid_up_to()];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let col =
                String::from_utf8_lossy(before.rsplit(|&b| b == b'\n').next().unwrap_or_default())
                    .chars()
                    .count()
                    + 1;
            Err(vec![SpecError {
                pos: Pos {
                    line: u32::try_from(line).unwrap_or(u32::MAX),
                    col: u32::try_from(col).unwrap_or(u32::MAX),
                },
                message: "not valid UTF-8".into(),
            }])
        }
    }
}

fn too_big(len: usize, max: usize) -> SpecError {
    SpecError {
        pos: Pos::START,
        message: format!("file is {len} bytes; at most {max} bytes are allowed"),
    }
}

/// Parses and validates `convoy.yml`. On success the resolved model; else
/// every error found, sorted by position.
pub fn parse_spec(text: &str, ctx: &CheckContext) -> Result<ConvoySpec, Vec<SpecError>> {
    if text.len() > ctx.limits.max_bytes {
        return Err(vec![too_big(text.len(), ctx.limits.max_bytes)]);
    }
    let tree = match yaml::parse(text) {
        Ok(t) => t,
        Err(e) => {
            return Err(vec![SpecError {
                pos: e.pos,
                message: e.message,
            }]);
        }
    };
    let mut v = Validator {
        errors: Vec::new(),
        ctx,
        hint_budget: 50_000,
    };
    let spec = v.document(&tree);
    let mut errors = v.errors;
    if errors.is_empty() {
        return Ok(spec);
    }
    errors.sort();
    errors.dedup();
    errors.truncate(MAX_ERRORS);
    Err(errors)
}

// ---------------------------------------------------------------------------

/// Words the slash commands read as keywords where environments are named.
const RESERVED_ENVIRONMENT_NAMES: &[&str] = &[
    crate::commands::parse::RETRY_ALL_KEYWORD,
    crate::commands::parse::ROLLBACK_ALL_KEYWORD,
];

const TOP_KEYS: &[&str] = &["version", "services", "environments", "waves", "policy"];
const SERVICE_KEYS: &[&str] = &["paths", "depends_on"];
const ENV_KEYS: &[&str] = &["name", "labels", "driver", "url", "services", "depends_on"];
const WAVE_KEYS: &[&str] = &[
    "name",
    "selector",
    "percent",
    "bake",
    "max_parallel",
    "failure_budget",
    "approval",
];
const POLICY_KEYS: &[&str] = &[
    "retries",
    "backoff",
    "deploy_timeout",
    "verify_timeout",
    "poll_interval",
    "max_parallel",
    "on_drift",
    "auto_rollback",
    "concurrency",
    "branches",
    "assumed_success",
    "approvers",
    "forbid_self_approval",
    "freeze",
];
const FREEZE_KEYS: &[&str] = &["from", "to", "reason", "weekly", "tz"];

/// `, did you mean `x`?` or nothing. Adds swapped letters (`hlat` for
/// `halt`) to what [`suggest::did_you_mean`] finds, as they are the most
/// common typo and plain edit distance counts them twice.
fn did_you_mean<'a, I>(input: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'a str> + Clone,
{
    let hint = suggest::did_you_mean(input, candidates.clone());
    if !hint.is_empty() {
        return hint;
    }
    let limit = (input.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (strsim::osa_distance(input, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| format!(", did you mean `{c}`?"))
        .unwrap_or_default()
}

/// `[a-z0-9][a-z0-9._-]{0,62}`.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// References kept with their positions for the checks that need the whole
/// file.
struct Refs {
    /// Per service: its `depends_on` entries.
    service_deps: Vec<Vec<(String, Pos)>>,
    /// Per environment: its `services` entries.
    env_services: Vec<Vec<(String, Pos)>>,
    /// Per environment: its `depends_on` entries.
    env_deps: Vec<Vec<(String, Pos)>>,
    /// Per wave: its selector entries (key, key position, value, value position).
    selectors: Vec<Vec<(String, Pos, String, Pos)>>,
    environments_pos: Pos,
}

struct Validator<'c> {
    errors: Vec<SpecError>,
    ctx: &'c CheckContext<'c>,
    /// Name comparisons left for "did you mean" hints. Each hint compares
    /// with every candidate; a hostile file with thousands of bad references
    /// to thousands of names must not take minutes, so past this budget
    /// errors come without a hint.
    hint_budget: usize,
}

impl Validator<'_> {
    /// [`did_you_mean`] within the hint budget; `count` is the number of
    /// candidates.
    fn hint<'a, I>(&mut self, input: &str, count: usize, candidates: I) -> String
    where
        I: IntoIterator<Item = &'a str> + Clone,
    {
        if count > self.hint_budget {
            return String::new();
        }
        self.hint_budget -= count;
        did_you_mean(input, candidates)
    }

    fn err(&mut self, pos: Pos, message: impl Into<String>) {
        self.errors.push(SpecError {
            pos,
            message: message.into(),
        });
    }

    /// The entries of a mapping with string keys; reports a non-mapping,
    /// unknown keys (with a suggestion) and duplicate keys. `null` is an
    /// empty mapping.
    fn mapping<'y>(
        &mut self,
        y: &'y Yaml,
        what: &str,
        known: Option<&[&str]>,
    ) -> Vec<(String, Pos, &'y Yaml)> {
        let entries = match &y.value {
            Value::Map(m) => m,
            Value::Null => return Vec::new(),
            _ => {
                self.err(
                    y.pos,
                    format!("{what} must be a mapping, found {}", y.kind()),
                );
                return Vec::new();
            }
        };
        let mut seen: HashMap<String, Pos> = HashMap::new();
        let mut out = Vec::with_capacity(entries.len());
        for (k, val) in entries {
            let Some(key) = k.scalar_text().filter(|_| !matches!(k.value, Value::Null)) else {
                self.err(
                    k.pos,
                    format!("{what}: keys must be strings, found {}", k.kind()),
                );
                continue;
            };
            if let Some(first) = seen.get(&key) {
                self.err(
                    k.pos,
                    format!(
                        "duplicate key `{key}` in {what} (first at line {})",
                        first.line
                    ),
                );
                continue;
            }
            seen.insert(key.clone(), k.pos);
            if let Some(known) = known
                && !known.contains(&key.as_str())
            {
                let hint = did_you_mean(&key, known.iter().copied());
                let hint = if hint.is_empty() {
                    format!(" (known keys: {})", known.join(", "))
                } else {
                    hint
                };
                self.err(k.pos, format!("unknown key `{key}` in {what}{hint}"));
                continue;
            }
            out.push((key, k.pos, val));
        }
        out
    }

    /// A list; `null` is an empty list.
    fn list<'y>(&mut self, y: &'y Yaml, what: &str) -> &'y [Yaml] {
        match &y.value {
            Value::Seq(items) => items,
            Value::Null => &[],
            _ => {
                self.err(y.pos, format!("{what} must be a list, found {}", y.kind()));
                &[]
            }
        }
    }

    /// A scalar read as text (numbers as written); not null, not empty.
    fn string(&mut self, y: &Yaml, what: &str) -> Option<String> {
        match (&y.value, y.scalar_text()) {
            (Value::Null, _) => {
                self.err(y.pos, format!("{what} must not be empty"));
                None
            }
            (_, Some(s)) if s.trim().is_empty() => {
                self.err(y.pos, format!("{what} must not be empty"));
                None
            }
            (_, Some(s)) => Some(s),
            (_, None) => {
                self.err(
                    y.pos,
                    format!("{what} must be a string, found {}", y.kind()),
                );
                None
            }
        }
    }

    fn name(&mut self, y: &Yaml, what: &str) -> Option<String> {
        let s = self.string(y, what)?;
        if valid_name(&s) {
            Some(s)
        } else {
            self.err(
                y.pos,
                format!(
                    "invalid {what} `{s}`: use lowercase letters, digits, `.`, `_` and `-`, \
                     starting with a letter or digit, at most 63 characters"
                ),
            );
            None
        }
    }

    fn boolean(&mut self, y: &Yaml, what: &str) -> Option<bool> {
        match &y.value {
            Value::Bool(b) => Some(*b),
            _ => {
                let found = y.scalar_text().unwrap_or_else(|| y.kind().to_string());
                self.err(
                    y.pos,
                    format!("{what} must be true or false, found `{found}`"),
                );
                None
            }
        }
    }

    fn uint(&mut self, y: &Yaml, what: &str, min: u32, max: u32) -> Option<u32> {
        let ok = match &y.value {
            Value::Int(i) => u32::try_from(*i).ok().filter(|v| (min..=max).contains(v)),
            _ => None,
        };
        if ok.is_none() {
            let found = y.scalar_text().unwrap_or_else(|| y.kind().to_string());
            self.err(
                y.pos,
                format!("{what} must be a whole number from {min} to {max}, found `{found}`"),
            );
        }
        ok
    }

    fn duration(&mut self, y: &Yaml, what: &str, allow_zero: bool) -> Option<Duration> {
        let text = self.string(y, what)?;
        match parse_duration(&text) {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.err(y.pos, format!("{what} must be longer than 0s"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.err(y.pos, format!("{what}: {e}"));
                None
            }
        }
    }

    /// A list of names; reports invalid and repeated entries.
    fn name_list(&mut self, y: &Yaml, what: &str) -> Vec<(String, Pos)> {
        let mut out: Vec<(String, Pos)> = Vec::new();
        // A set, not a scan of `out`: a hostile file may list 100,000 names.
        let mut seen: HashSet<String> = HashSet::new();
        for item in self.list(y, what) {
            if let Some(n) = self.name(item, &format!("name in {what}")) {
                if seen.contains(&n) {
                    self.err(item.pos, format!("`{n}` is listed twice in {what}"));
                } else {
                    seen.insert(n.clone());
                    out.push((n, item.pos));
                }
            }
        }
        out
    }

    // -----------------------------------------------------------------------

    fn document(&mut self, tree: &Yaml) -> ConvoySpec {
        let mut spec = ConvoySpec {
            version: 1,
            services: Vec::new(),
            environments: Vec::new(),
            waves: Vec::new(),
            policy: RolloutPolicy::default(),
        };
        match &tree.value {
            Value::Map(_) => {}
            Value::Null => {
                self.err(tree.pos, "convoy.yml is empty: it needs at least `version: 1`, `services` and `environments`");
                return spec;
            }
            _ => {
                self.err(
                    tree.pos,
                    format!(
                        "convoy.yml must be a mapping with the keys {}, found {}",
                        TOP_KEYS.join(", "),
                        tree.kind()
                    ),
                );
                return spec;
            }
        }
        let entries = self.mapping(tree, "convoy.yml", Some(TOP_KEYS));
        let get = |k: &str| {
            entries
                .iter()
                .find(|(key, _, _)| key == k)
                .map(|e| (e.1, e.2))
        };
        match get("version") {
            None => self.err(tree.pos, "missing `version: 1`"),
            Some((_, y)) => match &y.value {
                Value::Int(1) => {}
                Value::Str(text) => self.err(
                    y.pos,
                    format!(
                        "version must be the number 1, not the string `{text}`: write `version: 1`"
                    ),
                ),
                _ => {
                    let found = y.scalar_text().unwrap_or_else(|| y.kind().to_string());
                    self.err(
                        y.pos,
                        format!("unsupported version `{found}`: this convoy reads `version: 1`"),
                    );
                }
            },
        }
        let mut refs = Refs {
            service_deps: Vec::new(),
            env_services: Vec::new(),
            env_deps: Vec::new(),
            selectors: Vec::new(),
            environments_pos: tree.pos,
        };
        match get("services") {
            None => self.err(tree.pos, "missing `services`: list what gets deployed"),
            Some((_, y)) => self.services(y, &mut spec, &mut refs),
        }
        match get("environments") {
            None => self.err(
                tree.pos,
                "missing `environments`: list where services are deployed",
            ),
            Some((kpos, y)) => {
                refs.environments_pos = kpos;
                self.environments(y, &mut spec, &mut refs)
            }
        }
        if let Some((_, y)) = get("waves") {
            self.waves(y, &mut spec, &mut refs);
        }
        if let Some((_, y)) = get("policy") {
            spec.policy = self.policy(y);
        }
        self.cross_checks(&spec, &refs);
        spec
    }

    fn services(&mut self, y: &Yaml, spec: &mut ConvoySpec, refs: &mut Refs) {
        let entries = self.mapping(y, "services", None);
        if entries.is_empty() && matches!(y.value, Value::Map(_) | Value::Null) {
            self.err(y.pos, "`services` is empty: declare at least one service");
        }
        for (name, kpos, body) in entries {
            if !valid_name(&name) {
                self.err(
                    kpos,
                    format!(
                        "invalid service name `{name}`: use lowercase letters, digits, `.`, `_` \
                         and `-`, starting with a letter or digit, at most 63 characters"
                    ),
                );
                continue;
            }
            let what = format!("service `{name}`");
            let fields = self.mapping(body, &what, Some(SERVICE_KEYS));
            let mut paths = Vec::new();
            let mut deps = Vec::new();
            for (key, _, val) in fields {
                match key.as_str() {
                    "paths" => {
                        for item in self.list(val, &format!("{what} paths")) {
                            let Some(glob) = self.string(item, "a path glob") else {
                                continue;
                            };
                            match globset::Glob::new(&glob) {
                                Ok(_) => paths.push(glob),
                                Err(e) => self.err(
                                    item.pos,
                                    format!("invalid glob `{glob}`: {}", glob_error(&e)),
                                ),
                            }
                        }
                    }
                    "depends_on" => deps = self.name_list(val, &format!("{what} depends_on")),
                    _ => {}
                }
            }
            spec.services.push(ServiceSpec {
                name: ServiceName::new(name),
                paths,
                depends_on: deps
                    .iter()
                    .map(|(d, _)| ServiceName::new(d.as_str()))
                    .collect(),
                pos: kpos,
            });
            refs.service_deps.push(deps);
        }
    }

    fn environments(&mut self, y: &Yaml, spec: &mut ConvoySpec, refs: &mut Refs) {
        let items = self.list(y, "environments");
        if items.is_empty() && matches!(y.value, Value::Seq(_) | Value::Null) {
            self.err(
                y.pos,
                "`environments` is empty: declare at least one environment",
            );
        }
        let max = self.ctx.limits.max_environments;
        if items.len() > max {
            self.err(
                refs.environments_pos,
                format!(
                    "too many environments: {}, at most {max} are allowed",
                    items.len()
                ),
            );
        }
        let mut seen: HashMap<String, Pos> = HashMap::new();
        for (index, item) in items.iter().enumerate() {
            let what = format!("environment #{}", index + 1);
            let fields = self.mapping(item, &what, Some(ENV_KEYS));
            if !matches!(item.value, Value::Map(_)) {
                continue;
            }
            let get = |k: &str| fields.iter().find(|(key, _, _)| key == k).map(|e| e.2);
            let name = match get("name") {
                None => {
                    self.err(item.pos, format!("{what} has no `name`"));
                    None
                }
                Some(n) => self.name(n, "environment name").and_then(|name| {
                    if RESERVED_ENVIRONMENT_NAMES.contains(&name.as_str()) {
                        // `/convoy retry failed` and `/convoy rollback all`
                        // read these as keywords: an environment so named
                        // could not be named in a command.
                        self.err(
                            n.pos,
                            format!(
                                "environment name `{name}` is reserved: commands read it as a \
                                 keyword (`/convoy retry failed`, `/convoy rollback all`); \
                                 choose another name"
                            ),
                        );
                        None
                    } else if let Some(first) = seen.get(&name) {
                        self.err(
                            n.pos,
                            format!(
                                "duplicate environment `{name}` (first at line {})",
                                first.line
                            ),
                        );
                        None
                    } else {
                        seen.insert(name.clone(), n.pos);
                        Some(name)
                    }
                }),
            };
            let what = name
                .as_ref()
                .map(|n| format!("environment `{n}`"))
                .unwrap_or(what);
            let mut labels = BTreeMap::new();
            if let Some(l) = get("labels") {
                for (k, _, v) in self.mapping(l, &format!("{what} labels"), None) {
                    if let Some(val) = self.string(v, &format!("label `{k}`")) {
                        labels.insert(k, val);
                    }
                }
            }
            let driver = match get("driver") {
                None => {
                    self.err(item.pos, format!("{what} has no `driver`"));
                    None
                }
                Some(d) => self.string(d, "driver").map(|s| (s, d.pos)),
            };
            let url = get("url").and_then(|u| self.string(u, "url").map(|s| (s, u.pos)));
            self.check_driver(&what, item.pos, driver.as_ref(), url.as_ref());
            let services = get("services").map(|s| self.name_list(s, &format!("{what} services")));
            let deps = get("depends_on")
                .map(|d| self.name_list(d, &format!("{what} depends_on")))
                .unwrap_or_default();
            // An environment without a valid name cannot be referred to or
            // planned; its other errors are reported all the same.
            let Some(name) = name else { continue };
            spec.environments.push(EnvSpec {
                name: EnvName::new(name),
                labels,
                driver: driver.map(|d| d.0).unwrap_or_default(),
                url: url.map(|u| u.0),
                services: services.as_ref().map(|s| {
                    s.iter()
                        .map(|(n, _)| ServiceName::new(n.as_str()))
                        .collect()
                }),
                depends_on: deps.iter().map(|(d, _)| EnvName::new(d.as_str())).collect(),
                pos: item.pos,
            });
            refs.env_services.push(services.unwrap_or_default());
            refs.env_deps.push(deps);
        }
    }

    fn check_driver(
        &mut self,
        what: &str,
        item_pos: Pos,
        driver: Option<&(String, Pos)>,
        url: Option<&(String, Pos)>,
    ) {
        let parsed_url = url.and_then(|(u, pos)| match reqwest::Url::parse(u) {
            // The driver refuses such a URL before every request; said here,
            // it fails the check instead of every step. Not quoted: it
            // holds a secret.
            Ok(parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
                self.err(
                    *pos,
                    format!(
                        "the url of {what} carries a user name or password; remove them (the \
                         operator's driver headers carry credentials)"
                    ),
                );
                None
            }
            Ok(parsed)
                if matches!(parsed.scheme(), "http" | "https") && parsed.host_str().is_some() =>
            {
                Some((parsed, *pos))
            }
            Ok(_) => {
                self.err(
                    *pos,
                    format!("url `{u}` must be an http:// or https:// URL with a host"),
                );
                None
            }
            Err(e) => {
                self.err(*pos, format!("invalid url `{u}`: {e}"));
                None
            }
        });
        let (Some(drivers), Some((name, dpos))) = (self.ctx.drivers, driver) else {
            return;
        };
        match drivers.get(name) {
            None => {
                let known: Vec<&str> = drivers.keys().map(String::as_str).collect();
                let hint = did_you_mean(name, known.iter().copied());
                let listed = if known.is_empty() {
                    "the operator defines no drivers".to_string()
                } else {
                    format!("the operator defines: {}", known.join(", "))
                };
                self.err(*dpos, format!("unknown driver `{name}`{hint} ({listed})"));
            }
            Some(DriverConfig::HttpAgent(agent)) => match (url, parsed_url) {
                (None, _) => self.err(
                    item_pos,
                    format!("{what} has no `url`: driver `{name}` is an http-agent and needs one"),
                ),
                (Some(_), Some((parsed, upos))) => {
                    let host = parsed.host_str().unwrap_or_default();
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    if !host_allowed(&agent.allowed_hosts, host) {
                        self.err(
                            upos,
                            format!(
                                "host `{host}` is not allowed by driver `{name}` (allowed: {})",
                                agent.allowed_hosts.join(", ")
                            ),
                        );
                    }
                }
                (Some(_), None) => {}
            },
            Some(DriverConfig::Command(_)) => {
                if let Some((_, upos)) = url {
                    self.err(
                        *upos,
                        format!("driver `{name}` runs a command and takes no `url`"),
                    );
                }
            }
        }
    }

    fn waves(&mut self, y: &Yaml, spec: &mut ConvoySpec, refs: &mut Refs) {
        let mut seen: HashMap<String, Pos> = HashMap::new();
        let mut last_percent: Option<(u32, String)> = None;
        for (index, item) in self.list(y, "waves").iter().enumerate() {
            let what = format!("wave #{}", index + 1);
            let fields = self.mapping(item, &what, Some(WAVE_KEYS));
            if !matches!(item.value, Value::Map(_)) {
                continue;
            }
            let get = |k: &str| fields.iter().find(|(key, _, _)| key == k).map(|e| e.2);
            let name = match get("name") {
                None => {
                    self.err(item.pos, format!("{what} has no `name`"));
                    None
                }
                Some(n) => self.name(n, "wave name").and_then(|name| {
                    if let Some(first) = seen.get(&name) {
                        self.err(
                            n.pos,
                            format!("duplicate wave `{name}` (first at line {})", first.line),
                        );
                        None
                    } else {
                        seen.insert(name.clone(), n.pos);
                        Some(name)
                    }
                }),
            };
            let label = name.clone().unwrap_or_else(|| format!("#{}", index + 1));
            let what = format!("wave `{label}`");
            let mut selector = BTreeMap::new();
            let mut selector_refs = Vec::new();
            if let Some(s) = get("selector") {
                for (k, kpos, v) in self.mapping(s, &format!("{what} selector"), None) {
                    if let Some(val) = self.string(v, &format!("selector `{k}`")) {
                        selector_refs.push((k.clone(), kpos, val.clone(), v.pos));
                        selector.insert(k, val);
                    }
                }
            }
            let percent = get("percent").and_then(|p| {
                let value = self.uint(p, "percent", 1, 100)?;
                if let Some((prev, prev_wave)) = &last_percent
                    && value <= *prev
                {
                    self.err(
                        p.pos,
                        format!(
                            "percent {value} must be greater than {prev}, the percent of the \
                             earlier wave `{prev_wave}` (percent is cumulative)"
                        ),
                    );
                }
                last_percent = Some((value, label.clone()));
                Some(value)
            });
            let bake = get("bake")
                .and_then(|b| self.duration(b, "bake", true))
                .unwrap_or_default();
            let max_parallel =
                get("max_parallel").and_then(|m| self.uint(m, "max_parallel", 1, 100_000));
            let failure_budget = get("failure_budget")
                .and_then(|b| self.failure_budget(b))
                .unwrap_or_default();
            let approval = get("approval")
                .and_then(|a| self.boolean(a, "approval"))
                .unwrap_or(false);
            let Some(name) = name else { continue };
            spec.waves.push(WaveSpec {
                name: WaveName::new(name),
                selector,
                percent,
                bake,
                max_parallel,
                failure_budget,
                approval,
                pos: item.pos,
            });
            refs.selectors.push(selector_refs);
        }
    }

    fn failure_budget(&mut self, y: &Yaml) -> Option<FailureBudget> {
        let bad = |v: &mut Self| {
            let found = y.scalar_text().unwrap_or_else(|| y.kind().to_string());
            v.err(
                y.pos,
                format!(
                    "failure_budget must be a count (`3`) or a percent from 0% to 100% (`2%`), found `{found}`"
                ),
            );
            None
        };
        match &y.value {
            Value::Int(n) => match u32::try_from(*n) {
                Ok(n) => Some(FailureBudget::Count(n)),
                Err(_) => bad(self),
            },
            Value::Str(s) => {
                let s = s.trim();
                if let Some(p) = s.strip_suffix('%') {
                    match p.trim().parse::<u32>() {
                        Ok(p) if p <= 100 => Some(FailureBudget::Percent(p)),
                        _ => bad(self),
                    }
                } else {
                    match s.parse::<u32>() {
                        Ok(n) => Some(FailureBudget::Count(n)),
                        Err(_) => bad(self),
                    }
                }
            }
            _ => bad(self),
        }
    }

    fn policy(&mut self, y: &Yaml) -> RolloutPolicy {
        let mut p = RolloutPolicy::default();
        for (key, _, val) in self.mapping(y, "policy", Some(POLICY_KEYS)) {
            match key.as_str() {
                "retries" => p.retries = self.uint(val, "retries", 0, 100).unwrap_or(p.retries),
                "backoff" => p.backoff = self.duration(val, "backoff", true).unwrap_or(p.backoff),
                "deploy_timeout" => {
                    p.deploy_timeout = self
                        .duration(val, "deploy_timeout", false)
                        .unwrap_or(p.deploy_timeout)
                }
                "verify_timeout" => {
                    p.verify_timeout = self
                        .duration(val, "verify_timeout", false)
                        .unwrap_or(p.verify_timeout)
                }
                "poll_interval" => {
                    p.poll_interval = self
                        .duration(val, "poll_interval", false)
                        .unwrap_or(p.poll_interval)
                }
                "max_parallel" => {
                    p.max_parallel = self
                        .uint(val, "max_parallel", 1, 100_000)
                        .unwrap_or(p.max_parallel)
                }
                "on_drift" => {
                    if let Some(v) = self.choice(val, "on_drift", &["halt", "overwrite", "skip"]) {
                        p.on_drift = match v {
                            "overwrite" => OnDrift::Overwrite,
                            "skip" => OnDrift::Skip,
                            _ => OnDrift::Halt,
                        };
                    }
                }
                "concurrency" => {
                    if let Some(v) = self.choice(val, "concurrency", &["queue", "supersede"]) {
                        p.concurrency = if v == "supersede" {
                            Concurrency::Supersede
                        } else {
                            Concurrency::Queue
                        };
                    }
                }
                "auto_rollback" => {
                    p.auto_rollback = self.boolean(val, "auto_rollback").unwrap_or(false)
                }
                "forbid_self_approval" => {
                    p.forbid_self_approval =
                        self.boolean(val, "forbid_self_approval").unwrap_or(false)
                }
                "branches" => {
                    p.branches = self
                        .list(val, "branches")
                        .iter()
                        .filter_map(|b| self.string(b, "branch"))
                        .collect()
                }
                "approvers" => {
                    p.approvers = self
                        .list(val, "approvers")
                        .iter()
                        .filter_map(|a| self.string(a, "approver"))
                        .map(|a| a.trim().to_string())
                        .collect()
                }
                "assumed_success" => {
                    let v = match val.value {
                        Value::Float(x) => Some(x),
                        Value::Int(i) => Some(i as f64),
                        _ => None,
                    };
                    match v {
                        Some(x) if x > 0.0 && x <= 1.0 => p.assumed_success = x,
                        _ => {
                            let found = val.scalar_text().unwrap_or_else(|| val.kind().to_string());
                            self.err(
                                val.pos,
                                format!(
                                    "assumed_success must be a probability above 0 and at most 1 (like 0.99), found `{found}`"
                                ),
                            );
                        }
                    }
                }
                "freeze" => {
                    p.freeze = self
                        .list(val, "freeze")
                        .iter()
                        .filter_map(|f| self.freeze(f))
                        .collect()
                }
                _ => {}
            }
        }
        p
    }

    fn choice<'k>(&mut self, y: &Yaml, what: &str, allowed: &[&'k str]) -> Option<&'k str> {
        let text = self.string(y, what)?;
        if let Some(found) = allowed.iter().find(|a| **a == text) {
            return Some(found);
        }
        let hint = did_you_mean(&text, allowed.iter().copied());
        self.err(
            y.pos,
            format!(
                "invalid {what} `{text}`{hint} (one of: {})",
                allowed.join(", ")
            ),
        );
        None
    }

    fn freeze(&mut self, y: &Yaml) -> Option<FreezeWindow> {
        let fields = self.mapping(y, "freeze window", Some(FREEZE_KEYS));
        if !matches!(y.value, Value::Map(_)) {
            return None;
        }
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _, _)| key == k)
                .map(|e| (e.1, e.2))
        };
        let reason = get("reason").and_then(|(_, r)| self.string(r, "reason"));
        let (Some((_, from)), Some((_, to))) = (get("from"), get("to")) else {
            self.err(y.pos, "a freeze window needs `from` and `to`");
            return None;
        };
        if let Some((_, weekly)) = get("weekly") {
            let mut days = Vec::new();
            for d in self.list(weekly, "weekly") {
                let Some(text) = self.string(d, "weekday") else {
                    continue;
                };
                match parse_weekday(&text) {
                    Some(day) if days.contains(&day) => {
                        self.err(d.pos, format!("`{text}` is listed twice in weekly"))
                    }
                    Some(day) => days.push(day),
                    None => {
                        let names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
                        let hint = did_you_mean(&text.to_ascii_lowercase(), names);
                        self.err(
                            d.pos,
                            format!("invalid weekday `{text}`{hint} (use mon, tue, wed, thu, fri, sat, sun)"),
                        );
                    }
                }
            }
            if days.is_empty() && matches!(weekly.value, Value::Seq(_) | Value::Null) {
                self.err(weekly.pos, "weekly needs at least one day");
            }
            let from_t = self.time_of_day(from, "from");
            let to_t = self.time_of_day(to, "to");
            if let (Some(f), Some(t)) = (from_t, to_t)
                && f >= t
            {
                self.err(
                    to.pos,
                    format!(
                        "`to` ({}) must be after `from` ({}); to cross midnight, use two windows",
                        t.format("%H:%M"),
                        f.format("%H:%M")
                    ),
                );
            }
            let tz = match get("tz") {
                None => {
                    self.err(
                        y.pos,
                        "a weekly freeze window needs `tz`, an IANA time zone like `Europe/Berlin`",
                    );
                    None
                }
                Some((_, tz)) => self.time_zone(tz),
            };
            Some(FreezeWindow::Weekly {
                days,
                from: from_t?,
                to: to_t?,
                tz: tz?,
                reason,
            })
        } else {
            if let Some((kpos, _)) = get("tz") {
                self.err(
                    kpos,
                    "`tz` only applies to weekly windows; absolute times carry their own offset",
                );
            }
            let from_t = self.instant(from, "from");
            let to_t = self.instant(to, "to");
            if let (Some(f), Some(t)) = (from_t, to_t)
                && f >= t
            {
                self.err(to.pos, "`to` must be after `from`");
            }
            Some(FreezeWindow::Absolute {
                from: from_t?,
                to: to_t?,
                reason,
            })
        }
    }

    fn time_of_day(&mut self, y: &Yaml, what: &str) -> Option<NaiveTime> {
        let text = self.string(y, what)?;
        let valid = text.len() == 5 && text.as_bytes()[2] == b':';
        match NaiveTime::parse_from_str(&text, "%H:%M") {
            Ok(t) if valid => Some(t),
            _ => {
                self.err(
                    y.pos,
                    format!("{what} `{text}` is not a time of day: use HH:MM, like `16:00`"),
                );
                None
            }
        }
    }

    fn instant(&mut self, y: &Yaml, what: &str) -> Option<DateTime<Utc>> {
        let text = self.string(y, what)?;
        match DateTime::parse_from_rfc3339(&text) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                self.err(
                    y.pos,
                    format!(
                        "{what} `{text}` is not an RFC 3339 time: use a form like `2026-12-24T00:00:00Z`, or `weekly` with HH:MM"
                    ),
                );
                None
            }
        }
    }

    fn time_zone(&mut self, y: &Yaml) -> Option<String> {
        let text = self.string(y, "tz")?;
        if text.parse::<chrono_tz::Tz>().is_ok() {
            return Some(text);
        }
        let hint = self.hint(
            &text,
            chrono_tz::TZ_VARIANTS.len(),
            chrono_tz::TZ_VARIANTS.iter().map(|t| t.name()),
        );
        self.err(
            y.pos,
            format!("unknown time zone `{text}`{hint} (use an IANA name like `Europe/Berlin`)"),
        );
        None
    }

    // -----------------------------------------------------------------------
    // Checks over the whole file.

    fn cross_checks(&mut self, spec: &ConvoySpec, refs: &Refs) {
        let service_names: Vec<&str> = spec.services.iter().map(|s| s.name.as_str()).collect();
        let service_index: HashMap<&str, usize> = service_names
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, i))
            .collect();
        let env_index: HashMap<&str, usize> = spec
            .environments
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.as_str(), i))
            .collect();

        // Service references and cycles.
        let mut service_adj: Vec<Vec<(usize, Pos)>> = vec![Vec::new(); spec.services.len()];
        for (i, deps) in refs.service_deps.iter().enumerate() {
            for (d, pos) in deps {
                match service_index.get(d.as_str()) {
                    Some(&j) => service_adj[i].push((j, *pos)),
                    None => {
                        let hint = self.hint(d, service_names.len(), service_names.iter().copied());
                        self.err(
                            *pos,
                            format!(
                                "service `{}` depends on unknown service `{d}`{hint}",
                                service_names[i]
                            ),
                        );
                    }
                }
            }
        }
        for cycle in find_cycles(&service_adj) {
            let (first, pos) = cycle[0];
            let names: Vec<&str> = cycle.iter().map(|(i, _)| service_names[*i]).collect();
            self.err(
                pos,
                format!(
                    "dependency cycle among services: {} → {}",
                    names.join(" → "),
                    service_names[first]
                ),
            );
        }

        // Environment references.
        let env_names: Vec<&str> = spec.environments.iter().map(|e| e.name.as_str()).collect();
        let mut env_adj: Vec<Vec<(usize, Pos)>> = vec![Vec::new(); spec.environments.len()];
        for (i, env) in spec.environments.iter().enumerate() {
            for (s, pos) in &refs.env_services[i] {
                if !service_index.contains_key(s.as_str()) {
                    let hint = self.hint(s, service_names.len(), service_names.iter().copied());
                    self.err(
                        *pos,
                        format!(
                            "environment `{}` lists unknown service `{s}`{hint}",
                            env.name
                        ),
                    );
                }
            }
            for (d, pos) in &refs.env_deps[i] {
                match env_index.get(d.as_str()) {
                    Some(&j) => env_adj[i].push((j, *pos)),
                    None => {
                        let hint = self.hint(
                            d,
                            env_names.len(),
                            env_names
                                .iter()
                                .copied()
                                .filter(|n| *n != env.name.as_str()),
                        );
                        self.err(
                            *pos,
                            format!(
                                "environment `{}` depends on unknown environment `{d}`{hint}",
                                env.name
                            ),
                        );
                    }
                }
            }
        }
        for cycle in find_cycles(&env_adj) {
            let (first, pos) = cycle[0];
            let names: Vec<&str> = cycle.iter().map(|(i, _)| env_names[*i]).collect();
            self.err(
                pos,
                format!(
                    "dependency cycle among environments: {} → {}",
                    names.join(" → "),
                    env_names[first]
                ),
            );
        }

        // Selectors: a label no environment carries is almost surely a typo.
        let mut label_values: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for env in &spec.environments {
            for (k, v) in &env.labels {
                label_values.entry(k).or_default().insert(v);
            }
        }
        for (w, selector) in refs.selectors.iter().enumerate() {
            for (key, kpos, value, vpos) in selector {
                match label_values.get(key.as_str()) {
                    None => {
                        let hint = self.hint(key, label_values.len(), label_values.keys().copied());
                        self.err(
                            *kpos,
                            format!(
                                "wave `{}` selects on label `{key}`, which no environment has{hint}",
                                spec.waves[w].name
                            ),
                        );
                    }
                    Some(values) if !values.contains(value.as_str()) => {
                        // An unused value may be deliberate (no canary right
                        // now); one close to a used value is a typo.
                        let hint = self.hint(value, values.len(), values.iter().copied());
                        if !hint.is_empty() {
                            self.err(*vpos, format!("no environment has `{key}: {value}`{hint}"));
                        }
                    }
                    Some(_) => {}
                }
            }
        }

        // Environment dependencies must sit in the same or an earlier wave.
        let assignment = waves::assign_parts(&spec.environments, &spec.waves);
        let wave_name = |w: usize| -> String {
            spec.waves
                .get(w)
                .map(|wave| wave.name.to_string())
                .unwrap_or_else(|| waves::REST.to_string())
        };
        for (i, adj) in env_adj.iter().enumerate() {
            for &(j, pos) in adj {
                let (wi, wj) = (assignment.wave_of[i], assignment.wave_of[j]);
                if wj > wi {
                    self.err(
                        pos,
                        format!(
                            "environment `{}` (wave `{}`) depends on `{}`, which is in the later wave `{}`",
                            env_names[i],
                            wave_name(wi),
                            env_names[j],
                            wave_name(wj)
                        ),
                    );
                }
            }
        }
    }
}

fn glob_error(e: &globset::Error) -> String {
    e.kind().to_string()
}

fn parse_weekday(text: &str) -> Option<Weekday> {
    match text.to_ascii_lowercase().as_str() {
        "mon" | "monday" => Some(Weekday::Mon),
        "tue" | "tuesday" => Some(Weekday::Tue),
        "wed" | "wednesday" => Some(Weekday::Wed),
        "thu" | "thursday" => Some(Weekday::Thu),
        "fri" | "friday" => Some(Weekday::Fri),
        "sat" | "saturday" => Some(Weekday::Sat),
        "sun" | "sunday" => Some(Weekday::Sun),
        _ => None,
    }
}

/// Cycles of a directed graph, each as the list of (node, position of the
/// edge to the next node), starting at its smallest node; each set of nodes
/// reported once. Iterative, so a 10,000-long chain cannot overflow the stack.
pub(crate) fn find_cycles(adj: &[Vec<(usize, Pos)>]) -> Vec<Vec<(usize, Pos)>> {
    const WHITE: u8 = 0;
    const GRAY: u8 = 1;
    const BLACK: u8 = 2;
    let n = adj.len();
    let mut color = vec![WHITE; n];
    let mut on_path = vec![usize::MAX; n];
    let mut cycles: Vec<Vec<(usize, Pos)>> = Vec::new();
    let mut reported: BTreeSet<Vec<usize>> = BTreeSet::new();
    for start in 0..n {
        if color[start] != WHITE {
            continue;
        }
        // (node, index of the next edge to follow)
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        let mut path: Vec<(usize, Pos)> = Vec::new();
        color[start] = GRAY;
        on_path[start] = 0;
        path.push((start, Pos::START));
        while let Some(top) = stack.last_mut() {
            let (node, edge) = *top;
            top.1 += 1;
            if let Some(&(to, pos)) = adj[node].get(edge) {
                if let Some(last) = path.last_mut() {
                    last.1 = pos;
                }
                match color[to] {
                    WHITE => {
                        color[to] = GRAY;
                        on_path[to] = path.len();
                        path.push((to, Pos::START));
                        stack.push((to, 0));
                    }
                    GRAY => {
                        let cycle: Vec<(usize, Pos)> = path[on_path[to]..].to_vec();
                        let mut key: Vec<usize> = cycle.iter().map(|c| c.0).collect();
                        key.sort_unstable();
                        if reported.insert(key) && cycles.len() < 20 {
                            let min = cycle
                                .iter()
                                .enumerate()
                                .min_by_key(|(_, c)| c.0)
                                .map(|(i, _)| i)
                                .unwrap_or(0);
                            let mut rotated = cycle[min..].to_vec();
                            rotated.extend_from_slice(&cycle[..min]);
                            cycles.push(rotated);
                        }
                    }
                    _ => {}
                }
            } else {
                color[node] = BLACK;
                on_path[node] = usize::MAX;
                stack.pop();
                path.pop();
            }
        }
    }
    cycles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "acme-eu", "0", "a.b_c-d", &"a".repeat(63)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", "A", "a b", "ä", ".x", &"a".repeat(64)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn cycles_are_found_once() {
        let p = Pos::START;
        // 0 → 1 → 2 → 0, 3 → 3
        let adj = vec![vec![(1, p)], vec![(2, p)], vec![(0, p)], vec![(3, p)]];
        let c = find_cycles(&adj);
        let nodes: Vec<Vec<usize>> = c.iter().map(|c| c.iter().map(|x| x.0).collect()).collect();
        assert_eq!(nodes, vec![vec![0, 1, 2], vec![3]]);
        assert!(find_cycles(&[vec![(1, p)], vec![]]).is_empty());
    }
}
