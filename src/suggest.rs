//! "Did you mean …?": the closest known name to a mistyped one.

/// The candidate closest to `input` by edit distance (a swap of two
/// neighbouring letters counts as one edit), if it is close enough
/// to be a plausible typo (at most a third of the input's length, and at
/// least 1 edit allowed). Ties go to the earliest candidate.
pub fn closest<'a, I>(input: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let limit = (input.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (strsim::osa_distance(input, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `, did you mean `x`?` or an empty string, for appending to a message.
pub fn did_you_mean<'a, I>(input: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    closest(input, candidates)
        .map(|c| format!(", did you mean `{c}`?"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_typos_and_ignores_strangers() {
        let keys = ["retries", "backoff", "deploy_timeout"];
        assert_eq!(closest("retires", keys), Some("retries"));
        assert_eq!(closest("bakoff", keys), Some("backoff"));
        assert_eq!(closest("rtery", ["retry", "resume"]), Some("retry"));
        assert_eq!(closest("xyz", keys), None);
        assert_eq!(did_you_mean("retires", keys), ", did you mean `retries`?");
        assert_eq!(did_you_mean("zzzzzz", keys), "");
    }
}
