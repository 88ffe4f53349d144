//! The Markdown-aware comment parser. Pure: text in, commands out.
//!
//! # Which lines are commands
//!
//! A line is a command when, after at most 3 spaces of indentation, it starts
//! with the prefix (compared exactly, case-sensitive) followed by whitespace
//! or the end of the line: `/convoy retry` is a command, `/convoyx` and
//! `- /convoy retry` are not. One command per line; several lines run in
//! order, at most [`MAX_COMMANDS_PER_COMMENT`] of them. The command word is
//! matched without regard to ASCII case; arguments are kept as typed.
//! Line endings may be `\n` or `\r\n`.
//!
//! Ignored, so that quoting or showing a command never runs it:
//! - fenced code blocks, opened by 3+ backticks or tildes (with or without an
//!   info string, also after a list marker such as `- ` or `1. `) and closed
//!   by a line of at least as many of the same character; an unclosed fence
//!   runs to the end of the comment. A fence opened inside a list item also
//!   ends where the list item does (a non-blank line indented less than the
//!   fence itself).
//! - indented code: a line indented by 4 or more columns (a tab counts to the
//!   next multiple of 4) is never a command — it is either indented code or
//!   the continuation of a list item or paragraph, where a command would not
//!   stand at the start of a line anyway.
//! - block quotes: lines starting with `>`, and the lines that lazily
//!   continue a quoted paragraph (non-blank lines right after a quoted line
//!   with text, up to the next blank line), because GitHub shows those inside
//!   the quote too.
//! - raw HTML blocks shown verbatim: from a line starting with `<pre`,
//!   `<script`, `<style` or `<textarea` to the line holding its closing tag.
//! - HTML comments `<!-- … -->`, within a line or across lines; a line that
//!   starts with `<!--` is never a command, and a comment after a command is
//!   not part of its arguments.
//!
//! Deliberate simplifications (each errs towards *not* running a command): a
//! fence opener is recognised at any indentation, and `<!--` inside inline
//! code still opens a comment.

use crate::domain::{EnvName, ServiceName, WaveName};
use crate::duration::parse_duration;

use super::command::{Command, RetryTarget, RollbackTarget};
use super::table::Verb;
use super::validate::closest_or_swapped;

/// More command lines than this in one comment are refused (the rest of the
/// comment is not read), so a pasted log cannot fire hundreds of actions.
pub const MAX_COMMANDS_PER_COMMENT: usize = 10;

/// The keyword that makes `retry` mean "every failed step".
pub const RETRY_ALL_KEYWORD: &str = "failed";
/// The keyword that makes `rollback` mean "every touched environment".
pub const ROLLBACK_ALL_KEYWORD: &str = "all";

/// Why a command line could not be understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the prefix is not followed by a command")]
    MissingCommand,
    #[error("unknown command `{name}`")]
    UnknownCommand {
        name: String,
        /// The closest command name, if one is close enough.
        suggestion: Option<&'static str>,
    },
    #[error("`{}` needs {argument}", verb.name())]
    MissingArgument { verb: Verb, argument: &'static str },
    #[error("`{}` does not take {}", verb.name(), extra.join(" "))]
    UnexpectedArguments { verb: Verb, extra: Vec<String> },
    #[error("`{}` takes either `{keyword}` or environment names, not both", verb.name())]
    KeywordWithNames { verb: Verb, keyword: &'static str },
    #[error("`{}`: {problem}", verb.name())]
    InvalidDuration {
        verb: Verb,
        input: String,
        problem: DurationProblem,
    },
    #[error("more than {limit} commands in one comment; the rest were not read")]
    TooManyCommands { limit: usize },
}

/// What is wrong with a duration argument. The texts never repeat the
/// input, so a reply can show them next to the (quoted) input safely.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationProblem {
    #[error("it is not in a known form")]
    Malformed,
    #[error("a number needs a unit (ms, s, m, h or d)")]
    MissingUnit,
    #[error("it is zero, so the freeze would end at once")]
    Zero,
    #[error("it is too large (at most 3650d)")]
    TooLarge,
}

/// One command line of a comment and what it means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedLine {
    /// 1-based line number in the comment.
    pub line: usize,
    /// The line as written, trimmed, without HTML comments (for replies and
    /// the audit log).
    pub text: String,
    pub result: Result<Command, ParseError>,
}

/// Every command line of a comment body, in order. Lines that are not
/// commands are skipped; see the module documentation for the rules. An
/// empty or blank prefix finds nothing.
pub fn parse_comment(body: &str, prefix: &str) -> Vec<ParsedLine> {
    let prefix = prefix.trim();
    let mut out = Vec::new();
    if prefix.is_empty() {
        return out;
    }
    let mut scanner = Scanner::default();
    for (index, raw) in body.lines().enumerate() {
        let Some(visible) = scanner.command_candidate(raw, prefix) else {
            continue;
        };
        let Some(result) = parse_line(&visible, prefix) else {
            continue;
        };
        if out.len() == MAX_COMMANDS_PER_COMMENT {
            out.push(ParsedLine {
                line: index + 1,
                text: visible.trim().to_owned(),
                result: Err(ParseError::TooManyCommands {
                    limit: MAX_COMMANDS_PER_COMMENT,
                }),
            });
            break;
        }
        out.push(ParsedLine {
            line: index + 1,
            text: visible.trim().to_owned(),
            result,
        });
    }
    out
}

/// Parses one line without any Markdown context: `None` when it does not
/// start with `prefix` followed by whitespace or the end (leading whitespace
/// is ignored here).
pub fn parse_line(line: &str, prefix: &str) -> Option<Result<Command, ParseError>> {
    let prefix = prefix.trim();
    if prefix.is_empty() {
        return None;
    }
    let rest = line.trim_start().strip_prefix(prefix)?;
    if rest.chars().next().is_some_and(|c| !c.is_whitespace()) {
        return None;
    }
    let rest = rest.trim_start();
    let (word, after) = split_word(rest);
    if word.is_empty() {
        return Some(Err(ParseError::MissingCommand));
    }
    let Some(verb) = Verb::from_name(word) else {
        let lower = word.to_lowercase();
        return Some(Err(ParseError::UnknownCommand {
            name: word.to_owned(),
            suggestion: closest_or_swapped(&lower, Verb::names()),
        }));
    };
    Some(parse_arguments(verb, after))
}

/// Splits off the first whitespace-separated word; the rest is trimmed at
/// the start.
fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.char_indices().find(|(_, c)| c.is_whitespace()) {
        Some((at, _)) => (&text[..at], text[at..].trim_start()),
        None => (text, ""),
    }
}

fn parse_arguments(verb: Verb, rest: &str) -> Result<Command, ParseError> {
    let args: Vec<&str> = rest.split_whitespace().collect();
    let no_more = |from: usize| -> Result<(), ParseError> {
        match args.get(from..) {
            Some(extra) if !extra.is_empty() => Err(ParseError::UnexpectedArguments {
                verb,
                extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            }),
            _ => Ok(()),
        }
    };
    let first = |argument: &'static str| -> Result<&str, ParseError> {
        args.first()
            .copied()
            .ok_or(ParseError::MissingArgument { verb, argument })
    };
    Ok(match verb {
        Verb::Help => no_more(0).map(|()| Command::Help)?,
        Verb::Status => no_more(0).map(|()| Command::Status)?,
        Verb::Plan => no_more(0).map(|()| Command::Plan)?,
        Verb::Pause => no_more(0).map(|()| Command::Pause)?,
        Verb::Resume => no_more(0).map(|()| Command::Resume)?,
        Verb::Abort => no_more(0).map(|()| Command::Abort)?,
        Verb::Unfreeze => no_more(0).map(|()| Command::Unfreeze)?,
        Verb::Retry => Command::Retry {
            target: match names_or_keyword(verb, &args, RETRY_ALL_KEYWORD)? {
                None => RetryTarget::Failed,
                Some(envs) => RetryTarget::Environments(envs),
            },
        },
        Verb::Rollback => Command::Rollback {
            target: match names_or_keyword(verb, &args, ROLLBACK_ALL_KEYWORD)? {
                None => RollbackTarget::All,
                Some(envs) => RollbackTarget::Environments(envs),
            },
        },
        Verb::Skip => {
            first("at least one environment")?;
            Command::Skip {
                environments: distinct(&args),
            }
        }
        Verb::Approve => {
            no_more(1)?;
            Command::Approve {
                wave: args.first().map(|w| WaveName::new(*w)),
            }
        }
        Verb::Adopt => {
            let environment = EnvName::new(first("an environment")?);
            no_more(2)?;
            Command::Adopt {
                environment,
                service: args.get(1).map(|s| ServiceName::new(*s)),
            }
        }
        Verb::Resync => {
            let environment = EnvName::new(first("an environment")?);
            no_more(1)?;
            Command::Resync { environment }
        }
        Verb::Freeze => parse_freeze(rest)?,
    })
}

/// `None` for "the keyword" (given alone or nothing given), else the names.
fn names_or_keyword(
    verb: Verb,
    args: &[&str],
    keyword: &'static str,
) -> Result<Option<Vec<EnvName>>, ParseError> {
    let has_keyword = args.iter().any(|a| a.eq_ignore_ascii_case(keyword));
    match (args.len(), has_keyword) {
        (0, _) | (1, true) => Ok(None),
        (_, true) => Err(ParseError::KeywordWithNames { verb, keyword }),
        (_, false) => Ok(Some(distinct(args))),
    }
}

/// Names in the order given, each once.
fn distinct(args: &[&str]) -> Vec<EnvName> {
    let mut out: Vec<EnvName> = Vec::with_capacity(args.len());
    for arg in args {
        if !out.iter().any(|e| e.as_str() == *arg) {
            out.push(EnvName::new(*arg));
        }
    }
    out
}

/// `freeze [DURATION] [REASON…]`: the first word is a duration when it
/// parses as one; a first word starting with a digit that does not parse is
/// an error (most likely a mistyped duration), anything else starts the
/// reason. The reason is the rest of the line as typed.
fn parse_freeze(rest: &str) -> Result<Command, ParseError> {
    let verb = Verb::Freeze;
    let (word, after) = split_word(rest);
    let (duration, reason) = if word.is_empty() {
        (None, "")
    } else if word.starts_with(|c: char| c.is_ascii_digit()) {
        match parse_duration(word) {
            Ok(d) if d.is_zero() => {
                return Err(ParseError::InvalidDuration {
                    verb,
                    input: word.to_owned(),
                    problem: DurationProblem::Zero,
                });
            }
            Ok(d) => (Some(d), after),
            Err(message) => {
                // parse_duration's message quotes the input; classify it
                // instead of passing user text on.
                let problem = if message.contains("missing unit") {
                    DurationProblem::MissingUnit
                } else if message.contains("too large") {
                    DurationProblem::TooLarge
                } else {
                    DurationProblem::Malformed
                };
                return Err(ParseError::InvalidDuration {
                    verb,
                    input: word.to_owned(),
                    problem,
                });
            }
        }
    } else {
        (None, rest)
    };
    let reason = reason.trim();
    Ok(Command::Freeze {
        duration,
        reason: (!reason.is_empty()).then(|| reason.to_owned()),
    })
}

/// An open fenced code block.
#[derive(Clone, Copy, Debug)]
struct Fence {
    marker: u8,
    len: usize,
    /// Column where the marker run starts.
    column: usize,
    /// Opened after a list marker: the fence then ends with its list item.
    in_list_item: bool,
}

/// Line-by-line Markdown state: just enough block structure to know which
/// lines are shown as plain text at the start of a line.
#[derive(Default)]
struct Scanner {
    fence: Option<Fence>,
    in_html_comment: bool,
    /// Inside a raw HTML block (`<pre>` and kin): the closing tag.
    raw_html_end: Option<&'static str>,
    /// The previous line was quoted paragraph text, so a following non-blank
    /// line lazily continues the quote.
    lazy_quote: bool,
}

impl Scanner {
    /// Feeds one line; returns its visible text (HTML comments removed) when
    /// the line could be a command, `None` when it cannot.
    fn command_candidate(&mut self, raw: &str, prefix: &str) -> Option<String> {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let (indent, content) = indentation(line);

        if let Some(fence) = self.fence {
            let ends_list_item = fence.in_list_item && !content.is_empty() && indent < fence.column;
            if !ends_list_item {
                if closes_fence(content, indent, fence) {
                    self.fence = None;
                }
                return None;
            }
            // The list item holding the fence ended: read this line afresh.
            self.fence = None;
        }

        if self.in_html_comment {
            strip_html_comments(line, &mut self.in_html_comment);
            return None;
        }

        if let Some(end) = self.raw_html_end {
            if line.to_ascii_lowercase().contains(end) {
                self.raw_html_end = None;
            }
            return None;
        }

        if content.is_empty() {
            self.lazy_quote = false;
            return None;
        }

        // A quote, also one opening a list item (`- > text`): a line that
        // follows it lazily continues it, as GitHub shows.
        let quoted = Some(content).filter(|c| c.starts_with('>')).or_else(|| {
            let (rest, _, in_list_item) = strip_list_markers(content);
            (in_list_item && rest.starts_with('>')).then_some(rest)
        });
        if indent <= 3
            && let Some(quote) = quoted
        {
            let inner = quote.trim_start_matches(['>', ' ', '\t']);
            self.lazy_quote = !inner.is_empty() && opens_fence(inner, 0).is_none();
            return None;
        }

        if let Some(fence) = opens_fence(content, indent) {
            self.fence = Some(fence);
            self.lazy_quote = false;
            return None;
        }

        if self.lazy_quote {
            return None;
        }

        if let Some(end) = opens_raw_html(content) {
            if !line.to_ascii_lowercase().contains(end) {
                self.raw_html_end = Some(end);
            }
            return None;
        }

        let visible = strip_html_comments(line, &mut self.in_html_comment);
        if indent > 3 || content.starts_with("<!--") || !content.starts_with(prefix) {
            return None;
        }
        Some(visible)
    }
}

/// A raw HTML block (CommonMark type 1: `<pre>`, `<script>`, `<style>`,
/// `<textarea>`) starting at `content`: its closing tag. Its lines are shown
/// verbatim, like code.
fn opens_raw_html(content: &str) -> Option<&'static str> {
    const RAW: [(&str, &str); 4] = [
        ("<pre", "</pre>"),
        ("<script", "</script>"),
        ("<style", "</style>"),
        ("<textarea", "</textarea>"),
    ];
    RAW.iter().find_map(|(open, close)| {
        let head = content.get(..open.len())?;
        let next = content[open.len()..].chars().next();
        (head.eq_ignore_ascii_case(open) && next.is_none_or(|c| c == '>' || c.is_whitespace()))
            .then_some(*close)
    })
}

/// Leading indentation in columns (tabs to the next multiple of 4) and the
/// text after it.
fn indentation(line: &str) -> (usize, &str) {
    let mut column = 0;
    for (at, c) in line.char_indices() {
        match c {
            ' ' => column += 1,
            '\t' => column += 4 - column % 4,
            _ => return (column, &line[at..]),
        }
    }
    (column, "")
}

/// Strips list markers (`- `, `* `, `+ `, `1. `, `1) `) from the start of
/// `content`, returning the rest and how many columns were stripped.
fn strip_list_markers(content: &str) -> (&str, usize, bool) {
    let mut rest = content;
    let mut columns = 0;
    let mut any = false;
    loop {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let marker_len = match rest.as_bytes() {
            [b'-' | b'*' | b'+', b' ' | b'\t', ..] => 1,
            _ if (1..=9).contains(&digits)
                && matches!(rest.as_bytes().get(digits), Some(b'.' | b')'))
                && matches!(rest.as_bytes().get(digits + 1), Some(b' ' | b'\t')) =>
            {
                digits + 1
            }
            _ => return (rest, columns, any),
        };
        let (pad, after) = indentation(&rest[marker_len..]);
        columns += marker_len + pad;
        rest = after;
        any = true;
    }
}

/// A fence opener at the start of `content` (after list markers, if any).
fn opens_fence(content: &str, indent: usize) -> Option<Fence> {
    let (text, marker_columns, in_list_item) = strip_list_markers(content);
    let marker = *text.as_bytes().first()?;
    if marker != b'`' && marker != b'~' {
        return None;
    }
    let len = text.bytes().take_while(|b| *b == marker).count();
    if len < 3 {
        return None;
    }
    // A backtick fence's info string may not contain backticks (otherwise
    // it is inline code).
    if marker == b'`' && text[len..].contains('`') {
        return None;
    }
    Some(Fence {
        marker,
        len,
        column: indent + marker_columns,
        in_list_item,
    })
}

/// A closing fence: only the fence character, at least as many as opened
/// it, indented at most 3 columns more than the opener.
fn closes_fence(content: &str, indent: usize, fence: Fence) -> bool {
    let text = content.trim_end();
    indent <= fence.column + 3 && text.len() >= fence.len && text.bytes().all(|b| b == fence.marker)
}

/// The line without HTML comments; updates whether a comment is still open
/// at the end of the line. `<!-->` and `<!--->` are complete (empty)
/// comments, as in CommonMark.
fn strip_html_comments(line: &str, in_comment: &mut bool) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    loop {
        if *in_comment {
            match rest.find("-->") {
                Some(at) => {
                    rest = &rest[at + 3..];
                    *in_comment = false;
                }
                None => return out,
            }
        } else {
            match rest.find("<!--") {
                Some(at) => {
                    out.push_str(&rest[..at]);
                    rest = &rest[at + 4..];
                    if let Some(after) = rest.strip_prefix("->") {
                        rest = after;
                    } else if let Some(after) = rest.strip_prefix('>') {
                        rest = after;
                    } else {
                        *in_comment = true;
                    }
                }
                None => {
                    out.push_str(rest);
                    return out;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indentation_counts_tabs_to_the_next_stop() {
        assert_eq!(indentation("   x"), (3, "x"));
        assert_eq!(indentation("\tx"), (4, "x"));
        assert_eq!(indentation("  \tx"), (4, "x"));
        assert_eq!(indentation("   "), (3, ""));
    }

    #[test]
    fn list_markers_are_stripped() {
        assert_eq!(strip_list_markers("- ```"), ("```", 2, true));
        assert_eq!(strip_list_markers("1. - ```"), ("```", 5, true));
        assert_eq!(strip_list_markers("-x"), ("-x", 0, false));
        assert!(strip_list_markers("2026. x").2);
        assert!(!strip_list_markers("1234567890. x").2);
    }

    #[test]
    fn html_comments_are_removed() {
        let mut open = false;
        assert_eq!(strip_html_comments("a <!-- b --> c", &mut open), "a  c");
        assert!(!open);
        assert_eq!(strip_html_comments("a <!-- b", &mut open), "a ");
        assert!(open);
        assert_eq!(strip_html_comments("b --> c", &mut open), " c");
        assert!(!open);
        assert_eq!(strip_html_comments("<!--> x", &mut open), " x");
        assert!(!open);
    }
}
