//! Checks requests against GitHub's own REST API description
//! (`shared/github/rest-api.openapi.json`, OpenAPI 3.0).
//!
//! A small validator for the subset of OpenAPI/JSON Schema GitHub's request
//! bodies use: `$ref`, `type`, `nullable` (translated: `null` is valid only
//! where `nullable: true`), `enum`, `required`, `properties`,
//! `additionalProperties`, `items`, `minItems`/`maxItems`,
//! `minLength`/`maxLength` (in characters), `minimum`/`maximum`,
//! `format: date-time`, `allOf`/`anyOf`/`oneOf`. Not checked: `pattern`
//! (no regex engine in the dependency tree) and `oneOf` exclusivity (a value
//! matching two branches passes, because GitHub's object branches overlap
//! and the server accepts them).

use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;

/// One documented operation: its path template split into segments.
#[derive(Debug)]
struct Route {
    template: String,
    /// `None` for a `{parameter}` segment.
    segments: Vec<Option<String>>,
}

/// The parsed description plus a route table.
#[derive(Debug)]
pub struct OpenApi {
    doc: Value,
    routes: Vec<Route>,
}

/// The operation a request matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchedRoute {
    pub template: String,
    pub operation_id: Option<String>,
}

impl OpenApi {
    pub fn from_value(doc: Value) -> Result<Self, String> {
        let paths = doc
            .get("paths")
            .and_then(Value::as_object)
            .ok_or("the OpenAPI document has no paths")?;
        let routes = paths
            .keys()
            .map(|template| Route {
                template: template.clone(),
                segments: template
                    .trim_start_matches('/')
                    .split('/')
                    .map(|s| {
                        if s.starts_with('{') && s.ends_with('}') {
                            None
                        } else {
                            Some(s.to_owned())
                        }
                    })
                    .collect(),
            })
            .collect();
        Ok(OpenApi { doc, routes })
    }

    pub fn from_json(text: &str) -> Result<Self, String> {
        let doc: Value =
            serde_json::from_str(text).map_err(|e| format!("invalid OpenAPI JSON: {e}"))?;
        Self::from_value(doc)
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_json(&text)
    }

    /// Parses the description once per process (it is 13 MB); the first
    /// caller's path wins.
    pub fn cached(path: &Path) -> Result<&'static OpenApi, String> {
        static CACHE: OnceLock<Result<OpenApi, String>> = OnceLock::new();
        CACHE
            .get_or_init(|| Self::load(path))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The description in `../shared/github/`, next to the crate, when
    /// present (tests and CI have it; an installed `convoy demo` may not).
    pub fn shared() -> Option<&'static OpenApi> {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/github/rest-api.openapi.json");
        if !path.exists() {
            return None;
        }
        Self::cached(&path).ok()
    }

    fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        // Bounded: a cyclic $ref chain must not hang the stand-in.
        for _ in 0..32 {
            match v.get("$ref").and_then(Value::as_str) {
                Some(r) => match r.strip_prefix('#').and_then(|p| self.doc.pointer(p)) {
                    Some(target) => v = target,
                    None => return &Value::Null,
                },
                None => return v,
            }
        }
        v
    }

    /// Finds the documented path template for a concrete path; the match
    /// with the most literal segments wins (`/issues/comments/1` over
    /// `/issues/{issue_number}`).
    fn find_route(&self, path: &str) -> Option<&Route> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        self.routes
            .iter()
            .filter(|r| {
                r.segments.len() == parts.len()
                    && r.segments
                        .iter()
                        .zip(&parts)
                        .all(|(s, p)| s.as_deref().is_none_or(|lit| lit == *p) && !p.is_empty())
            })
            .max_by_key(|r| r.segments.iter().filter(|s| s.is_some()).count())
    }

    /// Every way the request departs from the description; empty when it
    /// conforms. `query` is the raw query string, `body` the parsed JSON
    /// body (`None` when there was none).
    pub fn check_request(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        body: Option<&Value>,
    ) -> (Option<MatchedRoute>, Vec<String>) {
        let mut out = Vec::new();
        let Some(route) = self.find_route(path) else {
            out.push(format!("{method} {path}: no such path in GitHub's API"));
            return (None, out);
        };
        let method_lc = method.to_ascii_lowercase();
        let Some(op) = self
            .doc
            .pointer(&format!("/paths/{}", pointer_escape(&route.template)))
            .and_then(|item| item.get(&method_lc))
        else {
            out.push(format!(
                "{method} {}: GitHub documents no {method} here",
                route.template
            ));
            return (None, out);
        };
        let matched = MatchedRoute {
            template: route.template.clone(),
            operation_id: op
                .get("operationId")
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        let at = format!("{method} {}", route.template);

        // Parameters: path values and query values against their schemas.
        let params: Vec<&Value> = op
            .get("parameters")
            .and_then(Value::as_array)
            .map(|ps| ps.iter().map(|p| self.resolve(p)).collect())
            .unwrap_or_default();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for (i, seg) in route
            .template
            .trim_start_matches('/')
            .split('/')
            .enumerate()
        {
            let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
                continue;
            };
            let raw = percent_decode(parts.get(i).copied().unwrap_or_default());
            if let Some(p) = params.iter().find(|p| {
                p.get("in").and_then(Value::as_str) == Some("path")
                    && p.get("name").and_then(Value::as_str) == Some(name)
            }) && let Some(schema) = p.get("schema")
            {
                self.check_param(
                    schema,
                    &raw,
                    &format!("{at} path parameter {name}"),
                    &mut out,
                );
            }
        }
        let query_pairs: Vec<(String, String)> = query
            .unwrap_or_default()
            .split('&')
            .filter(|s| !s.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        for (k, v) in &query_pairs {
            match params.iter().find(|p| {
                p.get("in").and_then(Value::as_str) == Some("query")
                    && p.get("name").and_then(Value::as_str) == Some(k.as_str())
            }) {
                Some(p) => {
                    if let Some(schema) = p.get("schema") {
                        self.check_param(schema, v, &format!("{at} query parameter {k}"), &mut out);
                    }
                }
                None => out.push(format!("{at}: undocumented query parameter {k:?}")),
            }
        }
        for p in &params {
            if p.get("required").and_then(Value::as_bool) == Some(true)
                && p.get("in").and_then(Value::as_str) == Some("query")
            {
                let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
                if !query_pairs.iter().any(|(k, _)| k == name) {
                    out.push(format!("{at}: required query parameter {name:?} missing"));
                }
            }
        }

        // The body.
        let request_body = op.get("requestBody").map(|b| self.resolve(b));
        match (request_body, body) {
            (None, Some(_)) => out.push(format!("{at}: GitHub documents no request body")),
            (Some(rb), None) => {
                if rb.get("required").and_then(Value::as_bool) == Some(true) {
                    out.push(format!("{at}: request body required"));
                }
            }
            (Some(rb), Some(body)) => match rb.pointer("/content/application~1json/schema") {
                Some(schema) => self.validate(schema, body, &format!("{at} body"), &mut out),
                None => out.push(format!("{at}: GitHub documents no JSON body")),
            },
            (None, None) => {}
        }
        (Some(matched), out)
    }

    fn check_param(&self, schema: &Value, raw: &str, at: &str, out: &mut Vec<String>) {
        let schema = self.resolve(schema);
        // Query and path values are strings on the wire; type them first.
        let value = match schema.get("type").and_then(Value::as_str) {
            Some("integer") => match raw.parse::<i64>() {
                Ok(n) => Value::from(n),
                Err(_) => {
                    out.push(format!("{at}: {raw:?} is not an integer"));
                    return;
                }
            },
            Some("boolean") => match raw {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => {
                    out.push(format!("{at}: {raw:?} is not a boolean"));
                    return;
                }
            },
            Some("number") => match raw.parse::<f64>() {
                Ok(n) => serde_json::Number::from_f64(n)
                    .map(Value::Number)
                    .unwrap_or(Value::Null),
                Err(_) => {
                    out.push(format!("{at}: {raw:?} is not a number"));
                    return;
                }
            },
            _ => Value::String(raw.to_owned()),
        };
        self.validate(schema, &value, at, out);
    }

    /// Validates `value` against `schema`, appending one line per problem.
    pub fn validate(&self, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
        let schema = self.resolve(schema);
        let Some(obj) = schema.as_object() else {
            return; // `true`/`{}`-like: anything goes
        };
        if value.is_null() {
            let nullable = obj.get("nullable").and_then(Value::as_bool) == Some(true)
                || obj.get("type").and_then(Value::as_str) == Some("null");
            if !nullable {
                out.push(format!("{at}: null is not allowed here"));
            }
            return;
        }
        if let Some(all) = obj.get("allOf").and_then(Value::as_array) {
            for s in all {
                self.validate(s, value, at, out);
            }
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(branches) = obj.get(key).and_then(Value::as_array) {
                let mut reasons = Vec::new();
                let ok = branches.iter().any(|s| {
                    let mut errs = Vec::new();
                    self.validate(s, value, at, &mut errs);
                    let fine = errs.is_empty();
                    reasons.extend(errs);
                    fine
                });
                if !ok {
                    out.push(format!(
                        "{at}: matches none of the {key} alternatives ({})",
                        reasons.join("; ")
                    ));
                }
            }
        }
        if let Some(ty) = obj.get("type").and_then(Value::as_str) {
            let fits = match ty {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "boolean" => value.is_boolean(),
                "integer" => {
                    value.is_i64()
                        || value.is_u64()
                        || value.as_f64().is_some_and(|f| f.fract() == 0.0)
                }
                "number" => value.is_number(),
                _ => true,
            };
            if !fits {
                out.push(format!("{at}: expected {ty}, got {}", kind(value)));
                return;
            }
        }
        if let Some(choices) = obj.get("enum").and_then(Value::as_array)
            && !choices.contains(value)
        {
            let list: Vec<String> = choices.iter().map(Value::to_string).collect();
            out.push(format!("{at}: {value} is not one of [{}]", list.join(", ")));
        }
        match value {
            Value::String(s) => {
                let n = s.chars().count() as u64;
                if let Some(max) = obj.get("maxLength").and_then(Value::as_u64)
                    && n > max
                {
                    out.push(format!("{at}: {n} characters, at most {max} allowed"));
                }
                if let Some(min) = obj.get("minLength").and_then(Value::as_u64)
                    && n < min
                {
                    out.push(format!("{at}: {n} characters, at least {min} required"));
                }
                if obj.get("format").and_then(Value::as_str) == Some("date-time")
                    && chrono::DateTime::parse_from_rfc3339(s).is_err()
                {
                    out.push(format!("{at}: {s:?} is not an ISO 8601 date-time"));
                }
            }
            Value::Number(n) => {
                if let (Some(max), Some(v)) =
                    (obj.get("maximum").and_then(Value::as_f64), n.as_f64())
                    && v > max
                {
                    out.push(format!("{at}: {v} is above the maximum {max}"));
                }
                if let (Some(min), Some(v)) =
                    (obj.get("minimum").and_then(Value::as_f64), n.as_f64())
                    && v < min
                {
                    out.push(format!("{at}: {v} is below the minimum {min}"));
                }
            }
            Value::Array(items) => {
                let n = items.len() as u64;
                if let Some(max) = obj.get("maxItems").and_then(Value::as_u64)
                    && n > max
                {
                    out.push(format!("{at}: {n} items, at most {max} allowed"));
                }
                if let Some(min) = obj.get("minItems").and_then(Value::as_u64)
                    && n < min
                {
                    out.push(format!("{at}: {n} items, at least {min} required"));
                }
                if let Some(item_schema) = obj.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.validate(item_schema, item, &format!("{at}[{i}]"), out);
                    }
                }
            }
            Value::Object(map) => {
                if let Some(required) = obj.get("required").and_then(Value::as_array) {
                    for r in required.iter().filter_map(Value::as_str) {
                        if !map.contains_key(r) {
                            out.push(format!("{at}: required field {r:?} missing"));
                        }
                    }
                }
                let props = obj.get("properties").and_then(Value::as_object);
                for (k, v) in map {
                    let field_at = format!("{at}.{k}");
                    match props.and_then(|p| p.get(k)) {
                        Some(s) => self.validate(s, v, &field_at, out),
                        None => match obj.get("additionalProperties") {
                            Some(Value::Bool(false)) => {
                                out.push(format!("{at}: unknown field {k:?}"))
                            }
                            Some(s @ Value::Object(_)) => self.validate(s, v, &field_at, out),
                            _ => {}
                        },
                    }
                }
            }
            _ => {}
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn pointer_escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Decodes `%XX` and `+` in a query component; invalid escapes stay as is.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                // Byte-wise: slicing the str here could split a character.
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(h * 16 + l);
                        i += 3;
                    }
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mini() -> OpenApi {
        OpenApi::from_value(json!({
            "paths": {
                "/repos/{owner}/{repo}/things": {
                    "post": {
                        "parameters": [{"$ref": "#/components/parameters/owner"}],
                        "requestBody": {"required": true, "content": {"application/json": {"schema": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {
                                "name": {"type": "string", "maxLength": 3},
                                "state": {"type": "string", "enum": ["a", "b"]},
                                "note": {"type": "string", "nullable": true},
                                "tags": {"type": "array", "maxItems": 1, "items": {"$ref": "#/components/schemas/tag"}},
                                "id": {"oneOf": [{"type": "string"}, {"type": "integer"}]}
                            }
                        }}}}
                    }
                },
                "/repos/{owner}/{repo}/things/special": {"get": {}}
            },
            "components": {
                "parameters": {"owner": {"name": "owner", "in": "path", "schema": {"type": "string"}}},
                "schemas": {"tag": {"type": "object", "additionalProperties": false, "properties": {"t": {"type": "string"}}}}
            }
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_conforming_request_passes() {
        let api = mini();
        let (m, v) = api.check_request(
            "POST",
            "/repos/a/b/things",
            None,
            Some(
                &json!({"name": "abc", "state": "a", "note": null, "tags": [{"t": "x"}], "id": 3}),
            ),
        );
        assert_eq!(v, Vec::<String>::new());
        assert_eq!(
            m.map(|m| m.template),
            Some("/repos/{owner}/{repo}/things".into())
        );
    }

    #[test]
    fn each_kind_of_violation_is_reported() {
        let api = mini();
        let (_, v) = api.check_request(
            "POST",
            "/repos/a/b/things",
            Some("x=1"),
            Some(&json!({"name": "abcd", "state": "c", "tags": [{"u": 1}, {}], "id": true})),
        );
        let all = v.join("\n");
        assert!(all.contains("4 characters, at most 3"), "{all}");
        assert!(all.contains("is not one of"), "{all}");
        assert!(all.contains("2 items, at most 1"), "{all}");
        assert!(all.contains("unknown field \"u\""), "{all}");
        assert!(all.contains("none of the oneOf"), "{all}");
        assert!(all.contains("undocumented query parameter"), "{all}");
        let (_, v) = api.check_request(
            "POST",
            "/repos/a/b/things",
            None,
            Some(&json!({"note": null})),
        );
        assert!(
            v.iter().any(|l| l.contains("required field \"name\"")),
            "{v:?}"
        );
        let (_, v) = api.check_request(
            "POST",
            "/repos/a/b/things",
            None,
            Some(&json!({"name": null})),
        );
        assert!(v.iter().any(|l| l.contains("null is not allowed")), "{v:?}");
    }

    #[test]
    fn unknown_paths_and_methods_are_reported() {
        let api = mini();
        assert!(!api.check_request("GET", "/nope", None, None).1.is_empty());
        assert!(
            !api.check_request("DELETE", "/repos/a/b/things", None, None)
                .1
                .is_empty()
        );
        // The literal route wins over the templated one.
        let (m, v) = api.check_request("GET", "/repos/a/b/things/special", None, None);
        assert!(v.is_empty(), "{v:?}");
        assert!(m.is_some());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("convoy%2Ddrift+x%zz"), "convoy-drift x%zz");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%é%C3%A9"), "%éé");
    }
}
