//! Pure retry decisions: given what GitHub answered, wait how long, or give
//! up with which error. The I/O loop in [`super::client`] only executes them,
//! so every rule here is tested without a server or a sleep.

use std::time::Duration;

use super::api::GitHubError;

/// How patient the client is. Production uses [`RetryPolicy::default`];
/// tests shrink the waits (GitHub's own minimums would make them take
/// minutes), never the rules.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// First backoff for 5xx, timeouts and connection errors; doubles.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// GitHub asks for at least a minute after a secondary rate limit
    /// without `retry-after`; doubles on each further hit.
    pub secondary_min: Duration,
    /// No single wait is longer than this (also caps `retry-after` and
    /// `x-ratelimit-reset`, which a broken proxy could set to next year).
    pub max_wait: Duration,
    /// One request's time limit, connection included.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            secondary_min: Duration::from_secs(60),
            max_wait: Duration::from_secs(15 * 60),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The response headers that steer retries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub retry_after: Option<u64>,
    pub remaining: Option<i64>,
    /// Epoch seconds.
    pub reset: Option<i64>,
}

impl RateHeaders {
    pub fn from_headers(h: &http::HeaderMap) -> Self {
        fn num<T: std::str::FromStr>(h: &http::HeaderMap, name: &str) -> Option<T> {
            h.get(name)?.to_str().ok()?.trim().parse().ok()
        }
        RateHeaders {
            retry_after: num(h, "retry-after"),
            remaining: num(h, "x-ratelimit-remaining"),
            reset: num(h, "x-ratelimit-reset"),
        }
    }

    /// How long until the primary limit resets, if it is exhausted.
    pub fn exhausted_for(&self, now_epoch: i64) -> Option<Duration> {
        if self.remaining == Some(0) {
            let reset = self.reset?;
            // One extra second: GitHub's reset is rounded down.
            Some(Duration::from_secs((reset - now_epoch).max(0) as u64 + 1))
        } else {
            None
        }
    }
}

/// What to do after one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Done,
    Retry {
        after: Duration,
        reason: RetryReason,
    },
    Fail(GitHubError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryReason {
    Server,
    Transport,
    RetryAfter,
    PrimaryLimit,
    SecondaryLimit,
}

/// Exponential backoff with "equal jitter": half fixed, half random, so
/// many clients that failed together do not retry together.
/// `attempt` is 1 for the first retry; `jitter` is uniform in [0, 1).
pub fn backoff(policy: &RetryPolicy, attempt: u32, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(20);
    let full = policy
        .base_backoff
        .saturating_mul(1u32 << exp)
        .min(policy.max_backoff);
    let half = full / 2;
    let jitter = jitter.clamp(0.0, 1.0);
    (half + half.mul_f64(jitter)).min(policy.max_wait)
}

/// Decides after an HTTP answer. `attempt` counts from 1; `secondary_hits`
/// is how many secondary limits this call met before this one.
#[allow(clippy::too_many_arguments)] // all plain inputs of one decision
pub fn after_response(
    policy: &RetryPolicy,
    status: u16,
    rate: &RateHeaders,
    body: &str,
    attempt: u32,
    secondary_hits: u32,
    now_epoch: i64,
    jitter: f64,
) -> Verdict {
    let last = attempt >= policy.max_attempts;
    let message = || github_message(body).unwrap_or_else(|| format!("HTTP {status}"));
    match status {
        200..=299 => Verdict::Done,
        401 => Verdict::Fail(GitHubError::Unauthorized(message())),
        403 | 429 => {
            let limited = |after: Duration, reason| {
                if last {
                    Verdict::Fail(GitHubError::RateLimited(message()))
                } else {
                    Verdict::Retry {
                        after: after.min(policy.max_wait),
                        reason,
                    }
                }
            };
            if let Some(secs) = rate.retry_after {
                limited(Duration::from_secs(secs), RetryReason::RetryAfter)
            } else if let Some(wait) = rate.exhausted_for(now_epoch) {
                limited(wait, RetryReason::PrimaryLimit)
            } else if status == 429 || is_secondary_limit(body) {
                let exp = secondary_hits.min(10);
                limited(
                    policy.secondary_min.saturating_mul(1u32 << exp),
                    RetryReason::SecondaryLimit,
                )
            } else {
                Verdict::Fail(GitHubError::Forbidden(message()))
            }
        }
        404 | 410 => Verdict::Fail(GitHubError::NotFound(message())),
        500..=599 => {
            if last {
                Verdict::Fail(GitHubError::Server { status })
            } else {
                Verdict::Retry {
                    after: backoff(policy, attempt, jitter),
                    reason: RetryReason::Server,
                }
            }
        }
        _ => Verdict::Fail(GitHubError::Invalid {
            status,
            message: message(),
        }),
    }
}

/// Decides after a timeout or a connection error.
pub fn after_transport_error(
    policy: &RetryPolicy,
    error: GitHubError,
    attempt: u32,
    jitter: f64,
) -> Verdict {
    if attempt >= policy.max_attempts {
        Verdict::Fail(error)
    } else {
        Verdict::Retry {
            after: backoff(policy, attempt, jitter),
            reason: RetryReason::Transport,
        }
    }
}

fn is_secondary_limit(body: &str) -> bool {
    let lower = body.to_ascii_lowercase();
    lower.contains("secondary rate limit") || lower.contains("abuse")
}

/// GitHub's `{"message": "..."}` error text.
pub fn github_message(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let msg = v.get("message")?.as_str()?.to_owned();
    // Validation errors carry the useful part in `errors`.
    match v.get("errors") {
        Some(errors) => Some(format!("{msg}: {errors}")),
        None => Some(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> RetryPolicy {
        RetryPolicy::default()
    }

    #[test]
    fn server_errors_back_off_exponentially_with_jitter() {
        let a1 = backoff(&p(), 1, 0.0);
        let a3 = backoff(&p(), 3, 0.0);
        assert_eq!(a1, Duration::from_millis(500));
        assert_eq!(a3, Duration::from_secs(2));
        assert_eq!(backoff(&p(), 1, 0.999_999).as_millis(), 999);
        assert_eq!(backoff(&p(), 30, 1.0), Duration::from_secs(60));
        let v = after_response(&p(), 502, &RateHeaders::default(), "", 1, 0, 0, 0.0);
        assert!(matches!(
            v,
            Verdict::Retry {
                reason: RetryReason::Server,
                ..
            }
        ));
        let v = after_response(&p(), 502, &RateHeaders::default(), "", 6, 0, 0, 0.0);
        assert_eq!(v, Verdict::Fail(GitHubError::Server { status: 502 }));
    }

    #[test]
    fn retry_after_is_honoured() {
        let rate = RateHeaders {
            retry_after: Some(7),
            ..Default::default()
        };
        let v = after_response(&p(), 403, &rate, "{}", 1, 0, 0, 0.5);
        assert_eq!(
            v,
            Verdict::Retry {
                after: Duration::from_secs(7),
                reason: RetryReason::RetryAfter
            }
        );
    }

    #[test]
    fn exhausted_primary_limit_waits_for_reset() {
        let rate = RateHeaders {
            retry_after: None,
            remaining: Some(0),
            reset: Some(1_000 + 42),
        };
        let v = after_response(&p(), 403, &rate, "{}", 1, 0, 1_000, 0.5);
        assert_eq!(
            v,
            Verdict::Retry {
                after: Duration::from_secs(43),
                reason: RetryReason::PrimaryLimit
            }
        );
    }

    #[test]
    fn secondary_limit_waits_a_minute_then_doubles() {
        let body = r#"{"message":"You have exceeded a secondary rate limit"}"#;
        let r = RateHeaders::default();
        let first = after_response(&p(), 403, &r, body, 1, 0, 0, 0.0);
        let second = after_response(&p(), 403, &r, body, 2, 1, 0, 0.0);
        assert_eq!(
            first,
            Verdict::Retry {
                after: Duration::from_secs(60),
                reason: RetryReason::SecondaryLimit
            }
        );
        assert_eq!(
            second,
            Verdict::Retry {
                after: Duration::from_secs(120),
                reason: RetryReason::SecondaryLimit
            }
        );
    }

    #[test]
    fn plain_forbidden_is_not_retried() {
        let body = r#"{"message":"Resource not accessible by integration"}"#;
        let v = after_response(&p(), 403, &RateHeaders::default(), body, 1, 0, 0, 0.0);
        assert_eq!(
            v,
            Verdict::Fail(GitHubError::Forbidden(
                "Resource not accessible by integration".into()
            ))
        );
    }

    #[test]
    fn waits_are_capped() {
        let rate = RateHeaders {
            retry_after: Some(10_000_000),
            ..Default::default()
        };
        let v = after_response(&p(), 429, &rate, "", 1, 0, 0, 0.0);
        assert_eq!(
            v,
            Verdict::Retry {
                after: p().max_wait,
                reason: RetryReason::RetryAfter
            }
        );
    }

    #[test]
    fn client_errors_fail_at_once() {
        let v = after_response(
            &p(),
            422,
            &RateHeaders::default(),
            r#"{"message":"Validation Failed"}"#,
            1,
            0,
            0,
            0.0,
        );
        assert!(matches!(
            v,
            Verdict::Fail(GitHubError::Invalid { status: 422, .. })
        ));
        let v = after_response(&p(), 404, &RateHeaders::default(), "", 1, 0, 0, 0.0);
        assert!(matches!(v, Verdict::Fail(GitHubError::NotFound(_))));
    }
}
