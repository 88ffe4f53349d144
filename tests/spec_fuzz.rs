//! `convoy.yml` is untrusted: no input may make validation panic.

use convoy::spec::{CheckContext, parse_spec, parse_spec_bytes};
use proptest::prelude::*;

const EXAMPLE: &str = include_str!("../config/convoy.example.yml");

/// Fragments that make random text look like YAML often enough to get past
/// the parser and into validation.
const PIECES: &[&str] = &[
    "version: 1\n",
    "services:\n",
    "environments:\n",
    "waves:\n",
    "policy:\n",
    "  ",
    "- ",
    "name: ",
    "a",
    "b",
    "api",
    "depends_on: [",
    "]",
    "{",
    "}",
    ", ",
    ": ",
    "\n",
    "percent: ",
    "50",
    "101",
    "-1",
    "2%",
    "10s",
    "x",
    "selector: { ring: canary }",
    "&a ",
    "*a",
    "<<: *a",
    "freeze:\n",
    "weekly: [fri]",
    "from: \"16:00\"",
    "tz: Europe/Berlin",
    "~",
    "null",
    "true",
    "\"",
    "'",
    "#",
    "!!str ",
    "? ",
    "|\n",
    "0x1F",
    "1e999",
    ".nan",
    "services: [a, b]",
    "url: http://127.0.0.1:1",
    "driver: agent",
    "labels: {ring: 1}",
    "failure_budget: ",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = parse_spec_bytes(&bytes, &CheckContext::default());
    }

    #[test]
    fn random_text_never_panics(text in "\\PC{0,500}") {
        let _ = parse_spec(&text, &CheckContext::default());
    }

    #[test]
    fn yaml_like_text_never_panics(pieces in proptest::collection::vec(0..PIECES.len(), 0..200)) {
        let text: String = pieces.iter().map(|&i| PIECES[i]).collect();
        let _ = parse_spec(&text, &CheckContext::default());
    }

    #[test]
    fn mutated_example_never_panics(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0..PIECES.len(), 0usize..20), 1..8)
    ) {
        let mut text = EXAMPLE.to_string();
        for (at, piece, cut) in edits {
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            let mut end = (i + cut).min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.replace_range(i..end, PIECES[piece]);
        }
        if let Err(errors) = parse_spec(&text, &CheckContext::default()) {
            // Every error points inside the file.
            let lines = text.lines().count().max(1) as u32 + 1;
            for e in errors {
                prop_assert!(e.pos.line >= 1 && e.pos.line <= lines, "{e:?}");
                prop_assert!(e.pos.col >= 1);
            }
        }
    }
}

#[test]
fn deep_nesting_and_alias_bombs_are_refused_not_fatal() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(parse_spec(&deep, &CheckContext::default()).is_err());
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 0..12 {
        let prev = if i == 0 {
            "a".to_string()
        } else {
            format!("l{}", i - 1)
        };
        bomb.push_str(&format!(
            "l{i}: &l{i} [{}]\n",
            vec![format!("*{prev}"); 10].join(", ")
        ));
    }
    assert!(parse_spec(&bomb, &CheckContext::default()).is_err());
}

#[test]
fn hostile_sizes_stay_linear() {
    // Thousands of bad references to thousands of names, and one very long
    // list: the errors are still found (without minutes of "did you mean").
    let head = "version: 1\nservices:\n  api: {}\nenvironments:\n";
    let mut y = String::from(head);
    for i in 0..6_000 {
        y.push_str(&format!(
            "  - {{name: e{i}, driver: a, depends_on: [x{i}]}}\n"
        ));
    }
    let errors = parse_spec(&y, &CheckContext::default()).unwrap_err();
    assert!(
        errors[0]
            .message
            .contains("depends on unknown environment `x0`"),
        "{errors:?}"
    );
    // Reported up to the cap.
    assert_eq!(errors.len(), 200);

    let mut y = String::from(head);
    y.push_str("  - {name: e1, driver: a}\n  - {name: long, driver: a, depends_on: [");
    y.push_str(&vec!["e1"; 30_000].join(", "));
    y.push_str("]}\n");
    let errors = parse_spec(&y, &CheckContext::default()).unwrap_err();
    assert!(
        errors[0].message.contains("`e1` is listed twice"),
        "{errors:?}"
    );
}
