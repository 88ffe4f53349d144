//! A YAML tree in which every node knows its line and column, so that every
//! semantic error (not only syntax errors) can point at the place it is about.
//!
//! serde-saphyr parses; its `Spanned` wrapper gives each node its location.
//! We read the document into this generic tree first and validate it by hand
//! afterwards, because serde stops at the first error and we must report all
//! of them.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A 1-based line and column (in characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };

    fn from_location(l: &serde_saphyr::Location) -> Pos {
        let line = u32::try_from(l.line()).unwrap_or(u32::MAX).max(1);
        let col = u32::try_from(l.column()).unwrap_or(u32::MAX).max(1);
        Pos { line, col }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// One node of the tree.
#[derive(Clone, Debug, PartialEq)]
pub struct Yaml {
    pub pos: Pos,
    pub value: Value,
    /// The source text of a plain (unquoted) non-string scalar such as `007`,
    /// `1.10` or `null`, so a place that expects a string (a name, a label
    /// value) gets what the user wrote rather than the number YAML made of it.
    pub raw: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Yaml>),
    Map(Vec<(Yaml, Yaml)>),
}

impl Yaml {
    /// What kind of value this is, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "a number",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The text of a scalar as the user wrote it: strings as they are, other
    /// plain scalars as their source text. `None` for lists and mappings.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Seq(_) | Value::Map(_) => None,
            Value::Null => Some(self.raw.clone().unwrap_or_default()),
            Value::Bool(b) => Some(self.raw.clone().unwrap_or_else(|| b.to_string())),
            Value::Int(i) => Some(self.raw.clone().unwrap_or_else(|| i.to_string())),
            Value::Float(x) => Some(self.raw.clone().unwrap_or_else(|| x.to_string())),
        }
    }
}

/// A YAML document that could not be read, with where it went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses `text` into a positioned tree. Resource limits (depth, node count,
/// alias expansion) are enforced by the parser; the caller caps the size.
pub fn parse(text: &str) -> Result<Yaml, SyntaxError> {
    let mut options = serde_saphyr::Options::default();
    // YAML 1.1 reads `no`, `on`, `y` as booleans; a service or environment
    // named `no` must stay a name.
    options.strict_booleans = true;
    // Duplicates are reported by validation, together with all other errors.
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
    options.with_snippet = false;
    let mut budget = serde_saphyr::Budget::default();
    // The input is capped at 1 MiB before parsing, which bounds the work;
    // 10,000 environments need more nodes than the default allows.
    budget.max_nodes = 2_000_000;
    budget.max_events = 4_000_000;
    options.budget = Some(budget);
    let node: Node = match serde_saphyr::from_str_with_options(text, options) {
        Ok(n) => n,
        Err(e) => return Err(syntax_error(&e)),
    };
    Ok(convert(node, text))
}

fn syntax_error(e: &serde_saphyr::Error) -> SyntaxError {
    let pos = e
        .location()
        .map(|l| Pos::from_location(&l))
        .unwrap_or(Pos::START);
    let mut message = e.without_snippet().to_string();
    // The library appends " at line L, column C"; we print the position
    // ourselves in front.
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    // Its advice about `DuplicateKeyPolicy` is for the developer, not the
    // author of convoy.yml.
    if let Some(i) = message.find(", set DuplicateKeyPolicy") {
        message.truncate(i);
    }
    let mut message = message.trim().trim_start_matches("error: ").to_string();
    // Its advice here names library functions.
    if message.starts_with("multiple YAML documents") {
        message = "more than one YAML document: convoy.yml must be a single document (remove the second `---`)".into();
    }
    SyntaxError {
        pos,
        message: if message.is_empty() {
            "invalid YAML".into()
        } else {
            message
        },
    }
}

// ---------------------------------------------------------------------------
// Reading through serde: `Spanned<Kind>` gives each node a location.

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

type Node = Spanned<Kind>;

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KindVisitor)
    }
}

struct KindVisitor;

impl<'de> Visitor<'de> for KindVisitor {
    type Value = Kind;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_none<E>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
        Kind::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Kind, E> {
        Ok(Kind::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Kind, E> {
        Ok(Kind::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Kind, E> {
        Ok(i64::try_from(v)
            .map(Kind::Int)
            .unwrap_or(Kind::Float(v as f64)))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Kind, E> {
        Ok(i64::try_from(v)
            .map(Kind::Int)
            .unwrap_or(Kind::Float(v as f64)))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Kind, E> {
        Ok(i64::try_from(v)
            .map(Kind::Int)
            .unwrap_or(Kind::Float(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Kind, E> {
        Ok(Kind::Float(v))
    }
    fn visit_char<E>(self, v: char) -> Result<Kind, E> {
        Ok(Kind::Str(v.to_string()))
    }
    fn visit_str<E>(self, v: &str) -> Result<Kind, E> {
        Ok(Kind::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Kind, E> {
        Ok(Kind::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Kind, E> {
        Ok(Kind::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Kind, A::Error> {
        let mut v = Vec::new();
        while let Some(n) = a.next_element::<Node>()? {
            v.push(n);
        }
        Ok(Kind::Seq(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Kind, A::Error> {
        let mut v = Vec::new();
        while let Some(entry) = a.next_entry::<Node, Node>()? {
            v.push(entry);
        }
        Ok(Kind::Map(v))
    }
}

fn convert(node: Node, text: &str) -> Yaml {
    let pos = Pos::from_location(&node.referenced);
    let raw = || -> Option<String> {
        let span = node.referenced.span();
        let start = usize::try_from(span.byte_offset()?).ok()?;
        let len = usize::try_from(span.byte_len()?).ok()?;
        let s = text.get(start..start.checked_add(len)?)?;
        (!s.is_empty()).then(|| s.to_string())
    };
    let (value, raw) = match node.value {
        Kind::Null => (Value::Null, raw()),
        Kind::Bool(b) => (Value::Bool(b), raw()),
        Kind::Int(i) => (Value::Int(i), raw()),
        Kind::Float(x) => (Value::Float(x), raw()),
        Kind::Str(s) => (Value::Str(s), None),
        Kind::Seq(items) => (
            Value::Seq(items.into_iter().map(|n| convert(n, text)).collect()),
            None,
        ),
        Kind::Map(entries) => (
            Value::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (convert(k, text), convert(v, text)))
                    .collect(),
            ),
            None,
        ),
    };
    Yaml { pos, value, raw }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(y: &Yaml) -> &Vec<(Yaml, Yaml)> {
        match &y.value {
            Value::Map(m) => m,
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn nodes_carry_positions_and_source_text() {
        let y = parse("version: 1\nenv:\n  no: 007\n  n: ~\n  t: 16:00\n").unwrap();
        let top = map(&y);
        assert_eq!(top[0].1.value, Value::Int(1));
        assert_eq!(top[0].1.pos, Pos { line: 1, col: 10 });
        let env = map(&top[1].1);
        // Strict booleans: `no` is a key, not `false`.
        assert_eq!(env[0].0.scalar_text().as_deref(), Some("no"));
        assert_eq!(env[0].1.scalar_text().as_deref(), Some("007"));
        assert_eq!(env[0].1.pos, Pos { line: 3, col: 7 });
        assert_eq!(env[1].0.scalar_text().as_deref(), Some("n"));
        assert_eq!(env[2].1.scalar_text().as_deref(), Some("16:00"));
    }

    #[test]
    fn duplicates_pass_through_for_validation() {
        let y = parse("a: 1\na: 2\n").unwrap();
        assert_eq!(map(&y).len(), 2);
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = parse("a: [1,\n").unwrap_err();
        assert_eq!(e.pos, Pos { line: 1, col: 4 });
        assert_eq!(e.message, "unclosed bracket '['");
        let e = parse("a: &x [*x]").unwrap_err();
        assert!(e.pos.line == 1, "{e:?}");
        let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(e.pos.line, 3);
        assert!(
            e.message.starts_with("more than one YAML document"),
            "{e:?}"
        );
    }
}
