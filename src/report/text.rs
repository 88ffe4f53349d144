//! Untrusted text (agent errors, logins, reasons) made safe for GitHub
//! Markdown: one line, bounded, no table breaks, no HTML, no @mentions.
//! Pure.

/// One line of at most `max_chars` characters (an ellipsis marks a cut),
/// with everything Markdown or HTML would interpret escaped and mentions
/// defused. Safe inside a table cell and in running text.
pub fn inline(text: &str, max_chars: usize) -> String {
    let flat = flatten(text);
    let mut out = String::with_capacity(flat.len().min(max_chars * 2) + 4);
    let mut cut = false;
    for (count, c) in flat.chars().enumerate() {
        if count == max_chars {
            cut = true;
            break;
        }
        match c {
            // Backslash-escapes work for every ASCII punctuation character
            // in GitHub Markdown; these are the ones that change rendering.
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '#' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            // A word joiner after `@` keeps `@team` from notifying anyone.
            '@' => out.push_str("@\u{2060}"),
            c => out.push(c),
        }
    }
    if cut {
        out.push('…');
    }
    out
}

/// Newlines and other control characters become spaces; runs of spaces
/// collapse; leading and trailing space goes.
fn flatten(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in text.chars() {
        if c.is_control() || c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.push(c);
    }
    out
}

/// A login or name shown as code (never a mention): `` `alice` ``.
pub fn code(text: &str) -> String {
    crate::commands::code_span(text)
}

/// `1,234`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1 step`, `2 steps`.
pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

/// The first 7 characters of a commit, as GitHub shows them.
pub fn short_sha(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_defuses_markdown_html_and_mentions() {
        assert_eq!(
            inline("a|b\n<x> @sre *y*", 100),
            "a\\|b &lt;x&gt; @\u{2060}sre \\*y\\*"
        );
        assert_eq!(inline("  two\r\n\tlines  ", 100), "two lines");
        assert_eq!(inline("abcdef", 3), "abc…");
        assert!(!inline("<!-- convoy:rollout:x -->", 100).contains("<!--"));
    }

    #[test]
    fn numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(15000), "15,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(plural(1, "step", "steps"), "1 step");
        assert_eq!(plural(2000, "step", "steps"), "2,000 steps");
    }
}
