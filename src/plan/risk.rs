//! The risk estimate of SPEC 6.7.
//!
//! For every step, p is its environment's first-attempt success rate over its
//! last 50 deploys, (successes + 1) / (attempts + 2), or `assumed_success`
//! with no history. P(some step fails on first attempt) = 1 − Πp; with
//! retries r, P(a human is needed) = 1 − Π(1 − (1 − p)^(r+1)).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::domain::EnvName;
use crate::plan::model::{EnvRisk, Risk};

/// How many recent deploys of an environment the estimate looks at.
pub const HISTORY_WINDOW: u32 = 50;
/// How many environments `Risk::riskiest` names.
pub const RISKIEST: usize = 5;

/// An environment's recent record: of its last (at most 50) steps, how many
/// succeeded on the first attempt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvHistory {
    pub attempts: u32,
    pub first_attempt_successes: u32,
}

/// History per environment; environments not in it have no history.
pub type History = HashMap<EnvName, EnvHistory>;

/// p for one environment.
pub fn success_probability(history: Option<&EnvHistory>, assumed_success: f64) -> f64 {
    match history {
        Some(h) if h.attempts > 0 => {
            let attempts = h.attempts.min(HISTORY_WINDOW);
            let successes = h.first_attempt_successes.min(attempts);
            (f64::from(successes) + 1.0) / (f64::from(attempts) + 2.0)
        }
        _ => assumed_success.clamp(0.0, 1.0),
    }
}

/// The estimate over steps given by their environments (an environment with
/// three steps appears three times).
pub fn estimate<'a>(
    step_envs: impl IntoIterator<Item = &'a EnvName>,
    history: &History,
    retries: u32,
    assumed_success: f64,
) -> Risk {
    let mut per_env: HashMap<&EnvName, f64> = HashMap::new();
    // Steps of one environment usually come together: look p up once.
    let mut last: Option<(&EnvName, f64)> = None;
    let mut steps = 0usize;
    // Sums of logarithms: products of 10,000s of factors close to 1 keep
    // their precision, and tiny results (0.01%) come out through expm1.
    let mut log_all_first = 0.0f64;
    let mut log_none_human = 0.0f64;
    for env in step_envs {
        let p = match last {
            Some((l, p)) if l == env => p,
            _ => {
                let p = *per_env
                    .entry(env)
                    .or_insert_with(|| success_probability(history.get(env), assumed_success));
                last = Some((env, p));
                p
            }
        };
        steps += 1;
        log_all_first += p.ln();
        let fail_all = (1.0 - p).powi(retries.saturating_add(1).min(i32::MAX as u32) as i32);
        log_none_human += (-fail_all).ln_1p();
    }
    // The lowest few by (p, name): select them, then sort just those.
    let mut all: Vec<(&EnvName, f64)> = per_env.into_iter().collect();
    let cmp =
        |a: &(&EnvName, f64), b: &(&EnvName, f64)| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(b.0));
    if all.len() > RISKIEST {
        all.select_nth_unstable_by(RISKIEST, cmp);
        all.truncate(RISKIEST);
    }
    all.sort_by(cmp);
    let riskiest = all
        .into_iter()
        .map(|(env, p)| EnvRisk {
            environment: env.clone(),
            p,
        })
        .collect();
    Risk {
        steps,
        first_attempt_failure: probability(-log_all_first.exp_m1()),
        needs_human: probability(-log_none_human.exp_m1()),
        riskiest,
    }
}

/// Keeps a computed probability inside [0, 1] (and NaN out, from a p of 0
/// with ln → −∞ mixed with +∞).
fn probability(x: f64) -> f64 {
    if x.is_nan() { 1.0 } else { x.clamp(0.0, 1.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envs(n: usize) -> Vec<EnvName> {
        (0..n).map(|i| EnvName::new(format!("e{i}"))).collect()
    }

    #[test]
    fn the_spec_numbers() {
        let e = envs(100);
        let r = estimate(&e, &History::new(), 2, 0.99);
        assert_eq!(r.steps, 100);
        assert!((r.first_attempt_failure - 0.634).abs() < 0.0005, "{r:?}");
        assert!((r.needs_human - 0.0001).abs() < 0.00001, "{r:?}");
        assert_eq!(r.riskiest.len(), 5);
    }

    #[test]
    fn history_shifts_p() {
        let h = EnvHistory {
            attempts: 50,
            first_attempt_successes: 40,
        };
        assert!((success_probability(Some(&h), 0.99) - 41.0 / 52.0).abs() < 1e-12);
        // More than the window is read as the window.
        let h = EnvHistory {
            attempts: 80,
            first_attempt_successes: 80,
        };
        assert!((success_probability(Some(&h), 0.5) - 51.0 / 52.0).abs() < 1e-12);
        assert_eq!(success_probability(None, 0.9), 0.9);
        assert_eq!(success_probability(Some(&EnvHistory::default()), 0.9), 0.9);

        let e = envs(3);
        let mut history = History::new();
        history.insert(
            e[1].clone(),
            EnvHistory {
                attempts: 10,
                first_attempt_successes: 5,
            },
        );
        let r = estimate(&e, &history, 0, 0.99);
        let expected = 1.0 - 0.99 * 0.99 * (6.0 / 12.0);
        assert!((r.first_attempt_failure - expected).abs() < 1e-12);
        assert_eq!(r.riskiest[0].environment, e[1]);
        assert_eq!(r.riskiest[0].p, 0.5);
    }

    #[test]
    fn extremes_stay_probabilities() {
        let e = envs(2);
        let r = estimate(&e, &History::new(), 0, 0.0);
        assert_eq!(r.first_attempt_failure, 1.0);
        assert_eq!(r.needs_human, 1.0);
        let r = estimate(&e, &History::new(), 5, 1.0);
        assert_eq!(r.first_attempt_failure, 0.0);
        assert_eq!(r.needs_human, 0.0);
        let none: Vec<EnvName> = vec![];
        let r = estimate(&none, &History::new(), 2, 0.99);
        assert_eq!((r.steps, r.first_attempt_failure), (0, 0.0));
    }
}
