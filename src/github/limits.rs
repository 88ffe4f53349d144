//! GitHub's size limits, applied before a request leaves convoy.
//!
//! GitHub counts check-run output limits in UTF-8 bytes (the OpenAPI
//! description says "characters", which is wrong for multi-byte text), and
//! rejects a request that exceeds them; a cut on a byte index can split a
//! character and produce invalid UTF-8. So we cut on a character boundary
//! and say visibly that we did.

use super::types::{CheckRunAction, CheckRunOutput};

/// Maximum bytes of a check run's `output.summary` and `output.text`.
pub const CHECK_RUN_OUTPUT_MAX_BYTES: usize = 65_535;
/// Maximum characters of an issue or comment body.
pub const COMMENT_BODY_MAX_CHARS: usize = 65_536;
/// Annotations accepted per check-run request.
pub const ANNOTATIONS_PER_REQUEST: usize = 50;
/// Buttons per check run.
pub const MAX_ACTIONS: usize = 3;
pub const ACTION_LABEL_MAX_CHARS: usize = 20;
pub const ACTION_DESCRIPTION_MAX_CHARS: usize = 40;
pub const ACTION_IDENTIFIER_MAX_CHARS: usize = 20;

/// The visible note appended to anything we had to cut.
pub const TRUNCATED_NOTE: &str = "\n\n… (truncated: GitHub limits this text to 65,535 bytes)";

/// Cuts `text` so that it is at most `max_bytes` UTF-8 bytes, on a character
/// boundary, ending with [`TRUNCATED_NOTE`] when anything was cut.
pub fn truncate_bytes(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    if max_bytes < TRUNCATED_NOTE.len() {
        // Too small for the note: plain cut.
        return text[..floor_char_boundary(text, max_bytes)].to_owned();
    }
    let keep = floor_char_boundary(text, max_bytes - TRUNCATED_NOTE.len());
    let mut out = String::with_capacity(keep + TRUNCATED_NOTE.len());
    out.push_str(&text[..keep]);
    out.push_str(TRUNCATED_NOTE);
    out
}

/// Cuts a comment or issue body to GitHub's character limit (and, to stay
/// safe with GitHub's byte-oriented storage, 65,535 bytes, which SPEC 7.3
/// asks of the comment anyway).
pub fn truncate_comment_body(text: &str) -> String {
    let cut = truncate_bytes(text, CHECK_RUN_OUTPUT_MAX_BYTES);
    debug_assert!(cut.chars().count() <= COMMENT_BODY_MAX_CHARS);
    cut
}

/// The largest char boundary ≤ `index` (`str::floor_char_boundary` is not
/// stable everywhere we build).
fn floor_char_boundary(text: &str, index: usize) -> usize {
    if index >= text.len() {
        return text.len();
    }
    let mut i = index;
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Applies the byte limits to a check run's output.
pub fn clamp_output(output: &CheckRunOutput) -> CheckRunOutput {
    CheckRunOutput {
        title: output.title.clone(),
        summary: truncate_bytes(&output.summary, CHECK_RUN_OUTPUT_MAX_BYTES),
        text: output
            .text
            .as_deref()
            .map(|t| truncate_bytes(t, CHECK_RUN_OUTPUT_MAX_BYTES)),
        annotations: output.annotations.clone(),
    }
}

/// Why a set of check-run actions cannot be sent. These are programming
/// errors in the renderer, so they are reported rather than silently fixed.
pub fn check_actions(actions: &[CheckRunAction]) -> Result<(), String> {
    if actions.len() > MAX_ACTIONS {
        return Err(format!(
            "{} check-run actions, GitHub accepts at most {MAX_ACTIONS}",
            actions.len()
        ));
    }
    for a in actions {
        for (what, value, max) in [
            ("label", &a.label, ACTION_LABEL_MAX_CHARS),
            ("description", &a.description, ACTION_DESCRIPTION_MAX_CHARS),
            ("identifier", &a.identifier, ACTION_IDENTIFIER_MAX_CHARS),
        ] {
            let n = value.chars().count();
            if n > max {
                return Err(format!(
                    "check-run action {what} {value:?} has {n} characters, GitHub accepts at most {max}"
                ));
            }
        }
    }
    Ok(())
}

/// The hidden marker in a comment body (`<!-- convoy:… -->`), used to find
/// the comment again after a timed-out create or a lost id.
pub fn hidden_marker(body: &str) -> Option<&str> {
    let start = body.find("<!-- convoy:")?;
    let end = body[start..].find("-->")? + start + 3;
    Some(&body[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_untouched() {
        assert_eq!(truncate_bytes("héllo", 100), "héllo");
    }

    #[test]
    fn cut_lands_on_a_char_boundary_and_says_so() {
        let text = "é".repeat(40_000); // 80,000 bytes
        let cut = truncate_bytes(&text, CHECK_RUN_OUTPUT_MAX_BYTES);
        assert!(cut.len() <= CHECK_RUN_OUTPUT_MAX_BYTES);
        assert!(cut.ends_with(TRUNCATED_NOTE));
        let body = cut.strip_suffix(TRUNCATED_NOTE).unwrap_or_default();
        assert!(body.chars().all(|c| c == 'é'));
        // As much as fits: one more 'é' would exceed the limit.
        assert!(body.len() + 2 + TRUNCATED_NOTE.len() > CHECK_RUN_OUTPUT_MAX_BYTES);
    }

    #[test]
    fn tiny_limits_still_cut_on_a_boundary() {
        assert_eq!(truncate_bytes("€€", 4), "€");
    }

    #[test]
    fn marker_is_found() {
        assert_eq!(
            hidden_marker("x <!-- convoy:rollout:r1 --> y"),
            Some("<!-- convoy:rollout:r1 -->")
        );
        assert_eq!(hidden_marker("no marker"), None);
    }

    #[test]
    fn long_labels_are_refused() {
        let a = CheckRunAction {
            label: "x".repeat(21),
            description: "d".into(),
            identifier: "i".into(),
        };
        assert!(check_actions(&[a]).is_err());
    }
}
