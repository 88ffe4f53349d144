//! Showing a plan: the `convoy plan` JSON of SPEC 9, plain text, and the
//! Markdown the PR-time preflight check shows. Also the percent format of
//! SPEC 6.7, shared with the reporter.

use std::fmt::Write;

use serde_json::{Value, json};

use super::model::{FailureBudget, Plan, PlannedWave};

/// A probability written as a percentage: `63.4%`, and small ones with the
/// digits they need to show something other than zero: `0.01%`, `0.003%`.
/// Exactly 0 and 1 are `0%` and `100%`.
pub fn format_percent(p: f64) -> String {
    if p.is_nan() {
        return "?%".into();
    }
    let pct = p.clamp(0.0, 1.0) * 100.0;
    if pct == 0.0 {
        return "0%".into();
    }
    if pct == 100.0 {
        return "100%".into();
    }
    if pct >= 0.1 {
        let s = format!("{pct:.1}");
        // 99.96% must not read as a certainty.
        if s == "100.0" {
            return "99.9%".into();
        }
        return format!("{s}%");
    }
    for decimals in 2..=12 {
        let s = format!("{pct:.decimals$}");
        if s.bytes().any(|b| matches!(b, b'1'..=b'9')) {
            return format!("{s}%");
        }
    }
    "<0.000000000001%".into()
}

/// `3` or `2%`, as written in `convoy.yml`.
pub fn format_budget(b: &FailureBudget) -> String {
    match b {
        FailureBudget::Count(n) => n.to_string(),
        FailureBudget::Percent(p) => format!("{p}%"),
    }
}

fn budget_json(b: &FailureBudget) -> Value {
    match b {
        FailureBudget::Count(n) => json!(n),
        FailureBudget::Percent(p) => json!(format!("{p}%")),
    }
}

/// The JSON of `convoy plan --format json` (SPEC 9).
pub fn plan_json(plan: &Plan) -> Value {
    json!({
        "commit": plan.commit,
        "previous_commit": plan.previous_commit,
        "affected_services": plan.affected_services,
        "waves": plan.waves.iter().map(|w| json!({
            "name": w.name,
            "environments": w.environments,
            "max_parallel": w.max_parallel,
            "failure_budget": budget_json(&w.failure_budget),
            "approval": w.approval,
        })).collect::<Vec<_>>(),
        "steps": plan.step_count(),
        "risk": {
            "steps": plan.risk.steps,
            "first_attempt_failure": plan.risk.first_attempt_failure,
            "needs_human": plan.risk.needs_human,
            "riskiest": plan.risk.riskiest.iter().map(|r| json!({
                "environment": r.environment,
                "p": r.p,
            })).collect::<Vec<_>>(),
        },
    })
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

fn wave_line(w: &PlannedWave) -> String {
    let mut extras = vec![
        format!("max_parallel {}", w.max_parallel),
        format!("failure_budget {}", format_budget(&w.failure_budget)),
    ];
    if !w.bake.is_zero() {
        extras.push(format!("bake {}", crate::duration::format_duration(w.bake)));
    }
    if w.approval {
        extras.push("approval required".into());
    }
    format!(
        "{}: {} environment{}, {} step{} ({})",
        w.name,
        w.environments.len(),
        if w.environments.len() == 1 { "" } else { "s" },
        w.steps.len(),
        if w.steps.len() == 1 { "" } else { "s" },
        extras.join(", ")
    )
}

/// The first `max` names, then "… and N more".
fn name_list<T: AsRef<str>>(names: &[T], max: usize) -> String {
    let mut s = names
        .iter()
        .take(max)
        .map(|n| n.as_ref())
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > max {
        let _ = write!(s, " … and {} more", names.len() - max);
    }
    s
}

fn risk_sentence(plan: &Plan) -> String {
    format!(
        "{} step{}: {} chance that some step fails on its first attempt; {} that a human is needed (with {} retr{})",
        plan.risk.steps,
        if plan.risk.steps == 1 { "" } else { "s" },
        format_percent(plan.risk.first_attempt_failure),
        format_percent(plan.risk.needs_human),
        plan.policy.retries,
        if plan.policy.retries == 1 { "y" } else { "ies" },
    )
}

/// Plain text for a terminal.
pub fn plan_text(plan: &Plan) -> String {
    let mut s = String::new();
    let from = plan
        .previous_commit
        .as_ref()
        .map(|c| short(c.as_str()).to_string())
        .unwrap_or_else(|| "(first rollout)".into());
    let _ = writeln!(s, "commit {} (since {from})", short(plan.commit.as_str()));
    if plan.affected_services.is_empty() {
        let _ = writeln!(s, "no affected service: nothing to roll out");
        return s;
    }
    let _ = writeln!(
        s,
        "affected services: {}",
        name_list(&plan.affected_services, 50)
    );
    let _ = writeln!(s, "waves:");
    for (i, w) in plan.waves.iter().enumerate() {
        let _ = writeln!(s, "  {}. {}", i + 1, wave_line(w));
        let _ = writeln!(s, "     {}", name_list(&w.environments, 20));
    }
    let _ = writeln!(s, "risk: {}", risk_sentence(plan));
    if !plan.risk.riskiest.is_empty() {
        let list: Vec<String> = plan
            .risk
            .riskiest
            .iter()
            .map(|r| format!("{} (p = {})", r.environment, format_percent(r.p)))
            .collect();
        let _ = writeln!(s, "riskiest: {}", list.join(", "));
    }
    s
}

/// Markdown for the PR-time preflight check run: what a merge would do.
pub fn plan_markdown(plan: &Plan) -> String {
    let mut s = String::new();
    if plan.affected_services.is_empty() {
        let _ = writeln!(
            s,
            "**No affected service**: merging `{}` rolls nothing out.",
            short(plan.commit.as_str())
        );
        return s;
    }
    let services: Vec<String> = plan
        .affected_services
        .iter()
        .map(|s| format!("`{s}`"))
        .collect();
    let _ = writeln!(
        s,
        "Merging `{}` rolls out {} to {} environment{} in {} wave{}.",
        short(plan.commit.as_str()),
        services.join(", "),
        plan.targets.len(),
        if plan.targets.len() == 1 { "" } else { "s" },
        plan.waves.len(),
        if plan.waves.len() == 1 { "" } else { "s" },
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "**Risk**: {}.", risk_sentence(plan));
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| wave | environments | steps | max parallel | failure budget | bake | approval |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---|");
    for w in &plan.waves {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            w.name,
            name_list(&w.environments, 10),
            w.steps.len(),
            w.max_parallel,
            format_budget(&w.failure_budget),
            crate::duration::format_duration(w.bake),
            if w.approval { "required" } else { "no" },
        );
    }
    if !plan.risk.riskiest.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "**Riskiest environments** (first-attempt success rate):");
        let _ = writeln!(s);
        for r in &plan.risk.riskiest {
            let _ = writeln!(s, "- `{}`: {}", r.environment, format_percent(r.p));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percents_have_the_digits_they_need() {
        assert_eq!(format_percent(0.634), "63.4%");
        assert_eq!(format_percent(0.63397), "63.4%");
        assert_eq!(format_percent(0.0001), "0.01%");
        assert_eq!(format_percent(0.000099995), "0.01%");
        assert_eq!(format_percent(0.00003), "0.003%");
        assert_eq!(format_percent(0.05), "5.0%");
        assert_eq!(format_percent(0.001), "0.1%");
        assert_eq!(format_percent(0.0), "0%");
        assert_eq!(format_percent(1.0), "100%");
        assert_eq!(format_percent(0.99999), "99.9%");
        assert_eq!(format_percent(1e-20), "<0.000000000001%");
        assert_eq!(format_percent(f64::NAN), "?%");
    }
}
