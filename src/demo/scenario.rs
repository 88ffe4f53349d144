//! The demo's world, as data (pure): environment names, the `convoy.yml`,
//! the webhook payloads GitHub would send, the summary comment when no
//! reporter is built in, and the seed experiment's table.

use serde_json::{Value, json};

use crate::domain::CommitSha;
use crate::engine::{Rollout, StepState};
use crate::plan::render::format_percent;

pub const REPO: &str = "acme/shop";
pub const OWNER: &str = "acme";
pub const NAME: &str = "shop";
pub const INSTALLATION: i64 = 4242;
pub const PULL_REQUEST: u64 = 42;
/// Opens the pull request.
pub const AUTHOR: &str = "dana";
/// Approves the gated wave (write access, member of `@acme/sre`).
pub const APPROVER: &str = "sam";
pub const HEAD_REF: &str = "feature/faster-checkout";
/// The wave that needs an approval.
pub const GATED_WAVE: &str = "rest";

const COMPANIES: [&str; 25] = [
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark",
    "wayne",
    "wonka",
    "tyrell",
    "cyberdyne",
    "soylent",
    "vandelay",
    "oscorp",
    "aperture",
    "gringotts",
    "monarch",
    "dunder",
    "pied",
    "massive",
    "virtucon",
    "zorg",
    "nakatomi",
    "oceanic",
    "prestige",
    "sirius",
];
const REGIONS: [&str; 4] = ["eu", "us", "ap", "sa"];

/// `n` distinct customer environment names: `acme-eu`, `globex-eu`, …, then
/// `acme-eu-2` and so on.
pub fn environment_names(n: usize) -> Vec<String> {
    let per_round = COMPANIES.len() * REGIONS.len();
    (0..n)
        .map(|i| {
            let round = i / per_round;
            let j = i % per_round;
            let base = format!(
                "{}-{}",
                COMPANIES[j % COMPANIES.len()],
                REGIONS[j / COMPANIES.len()]
            );
            if round == 0 {
                base
            } else {
                format!("{base}-{}", round + 1)
            }
        })
        .collect()
}

/// Timings of the demo's `convoy.yml`.
#[derive(Clone, Debug)]
pub struct SpecTimings {
    pub bake: String,
    pub backoff: String,
    pub poll_interval: String,
}

/// A realistic `convoy.yml`: three services with dependencies, three waves
/// (two canaries by label, 20 %, the rest after an approval), two retries.
pub fn demo_spec(envs: &[(String, String)], t: &SpecTimings) -> String {
    let mut s = String::from(
        "# convoy.yml of acme/shop: what to deploy, where, and in which order.\n\
         version: 1\n\
         services:\n\
         \x20 db-migrations:\n\
         \x20   paths: [\"migrations/**\"]\n\
         \x20 api:\n\
         \x20   paths: [\"services/api/**\", \"libs/**\"]\n\
         \x20   depends_on: [db-migrations]\n\
         \x20 web:\n\
         \x20   paths: [\"services/web/**\"]\n\
         \x20   depends_on: [api]\n\
         environments:\n",
    );
    for (i, (name, url)) in envs.iter().enumerate() {
        let ring = if i < 2 { "canary" } else { "main" };
        let region = name.split('-').nth(1).unwrap_or("eu");
        let tier = if i % 3 == 0 { "enterprise" } else { "standard" };
        s.push_str(&format!(
            "  - name: {name}\n    labels: {{ ring: {ring}, region: {region}, tier: {tier} }}\n    driver: agent\n    url: {url}\n"
        ));
    }
    s.push_str(&format!(
        "waves:\n\
         \x20 - name: canary\n\
         \x20   selector: {{ ring: canary }}\n\
         \x20   bake: {bake}\n\
         \x20 - name: early\n\
         \x20   percent: 20\n\
         \x20   max_parallel: 5\n\
         \x20 - name: {GATED_WAVE}\n\
         \x20   percent: 100\n\
         \x20   max_parallel: 10\n\
         \x20   failure_budget: 2%\n\
         \x20   approval: true\n\
         policy:\n\
         \x20 retries: 2\n\
         \x20 backoff: {backoff}\n\
         \x20 poll_interval: {poll}\n\
         \x20 deploy_timeout: 1m\n\
         \x20 verify_timeout: 1m\n\
         \x20 approvers: [\"@acme/sre\"]\n\
         \x20 forbid_self_approval: true\n",
        bake = t.bake,
        backoff = t.backoff,
        poll = t.poll_interval,
    ));
    s
}

/// The seed experiment's `convoy.yml`: one service, so a rollout has one
/// step per environment and the theory reads as in SPEC 6.7; every wave
/// tolerates any failure, so every step runs and is counted.
pub fn experiment_spec(envs: &[(String, String)]) -> String {
    let mut s = String::from("version: 1\nservices:\n  app: {}\nenvironments:\n");
    for (name, url) in envs {
        s.push_str(&format!(
            "  - name: {name}\n    driver: agent\n    url: {url}\n"
        ));
    }
    s.push_str(
        "waves:\n  - name: all\n    max_parallel: 50\n    failure_budget: 100%\npolicy:\n  retries: 2\n  backoff: 10ms\n  poll_interval: 10ms\n  concurrency: queue\n",
    );
    s
}

fn repository() -> Value {
    json!({
        "id": 1296269,
        "name": NAME,
        "full_name": REPO,
        "private": true,
        "owner": {"login": OWNER, "type": "Organization"},
        "default_branch": "main",
    })
}

/// The App was installed on the organization, with the repository.
pub fn installation_created() -> Value {
    json!({
        "action": "created",
        "installation": {"id": INSTALLATION, "account": {"login": OWNER, "type": "Organization"}},
        "repositories": [{"id": 1296269, "name": NAME, "full_name": REPO, "private": true}],
        "sender": {"login": APPROVER, "type": "User"},
    })
}

/// `pull_request` closed with `merged: true`, as GitHub sends it.
pub fn merged_pull_request(
    number: u64,
    head: &CommitSha,
    base: &CommitSha,
    merge: &CommitSha,
    title: &str,
) -> Value {
    json!({
        "action": "closed",
        "number": number,
        "pull_request": {
            "number": number,
            "state": "closed",
            "title": title,
            "user": {"login": AUTHOR, "type": "User"},
            "head": {"ref": HEAD_REF, "sha": head.as_str()},
            "base": {"ref": "main", "sha": base.as_str()},
            "merged": true,
            "merge_commit_sha": merge.as_str(),
            "merged_by": {"login": AUTHOR, "type": "User"},
        },
        "repository": repository(),
        "installation": {"id": INSTALLATION},
        "sender": {"login": AUTHOR, "type": "User"},
    })
}

/// The `push` of the merge commit to main.
pub fn push(before: &CommitSha, after: &CommitSha) -> Value {
    json!({
        "ref": "refs/heads/main",
        "before": before.as_str(),
        "after": after.as_str(),
        "created": false,
        "deleted": false,
        "forced": false,
        "pusher": {"name": AUTHOR},
        "repository": repository(),
        "installation": {"id": INSTALLATION},
        "sender": {"login": AUTHOR, "type": "User"},
    })
}

/// `issue_comment` created: `user` wrote `body` on the pull request.
pub fn pr_comment(comment_id: u64, user: &str, body: &str) -> Value {
    json!({
        "action": "created",
        "issue": {
            "number": PULL_REQUEST,
            "title": "Faster checkout",
            "state": "closed",
            "user": {"login": AUTHOR, "type": "User"},
            "labels": [],
            "pull_request": {"url": format!("https://api.github.com/repos/{REPO}/pulls/{PULL_REQUEST}")},
        },
        "comment": {
            "id": comment_id,
            "body": body,
            "user": {"login": user, "type": "User"},
            "author_association": "MEMBER",
        },
        "repository": repository(),
        "installation": {"id": INSTALLATION},
        "sender": {"login": user, "type": "User"},
    })
}

/// The PR comment in the shape convoy posts, for a build without the
/// GitHub reporter: state, commit, risk, a table per wave, failures with
/// the command that recovers them, and the page's link.
pub fn summary_comment(id: &str, rollout: &Rollout, url: &str, prefix: &str) -> String {
    let view = crate::engine::view(rollout);
    let mut s = format!(
        "<!-- convoy:rollout:{id} -->\n### Rollout of `{}` to {} environments: {}\n\n",
        &rollout.commit.as_str()[..rollout.commit.as_str().len().min(7)],
        rollout.targets.len(),
        view.state.as_str()
    );
    s.push_str(&format!(
        "**State**: `{}` · **Pull request**: #{PULL_REQUEST} · **Rollout**: [{id}]({url})\n\n",
        view.state.as_str()
    ));
    s.push_str(&format!(
        "**Risk**: {} steps: {} chance that some step fails on its first attempt; {} that a human is needed (with {} retries).\n\n",
        view.risk.steps,
        format_percent(view.risk.first_attempt_failure),
        format_percent(view.risk.needs_human),
        rollout.policy.retries
    ));
    s.push_str("| wave | state | done | in progress | failed | pending | approved by |\n|---|---|---:|---:|---:|---:|---|\n");
    for w in &view.waves {
        s.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} | {} |\n",
            w.name,
            w.state,
            w.counts.succeeded + w.counts.skipped,
            w.counts.in_progress,
            w.counts.failed,
            w.counts.pending,
            w.approved_by
                .as_deref()
                .unwrap_or(if w.approval { "—" } else { "" })
        ));
    }
    let failed: Vec<_> = rollout
        .steps()
        .filter(|st| st.state == StepState::Failed)
        .collect();
    if !failed.is_empty() {
        s.push_str("\n**Failed**\n\n");
        for st in failed.iter().take(50) {
            s.push_str(&format!(
                "- `{}`/`{}` after {} attempts: {} — `{prefix} retry {}` or `{prefix} skip {}`\n",
                st.environment,
                st.service,
                st.attempts,
                st.error.as_deref().unwrap_or("failed"),
                st.environment,
                st.environment
            ));
        }
    }
    let retried = rollout
        .steps()
        .filter(|st| st.state == StepState::Succeeded && st.attempts > 1)
        .count();
    if retried > 0 {
        s.push_str(&format!(
            "\n{retried} step{} succeeded after an automatic retry.\n",
            if retried == 1 { "" } else { "s" }
        ));
    }
    s.push_str(&format!("\n<sub>[Rollout page]({url})</sub>\n"));
    s
}

/// What the seed experiment measured.
#[derive(Clone, Debug, PartialEq)]
pub struct ExperimentResult {
    pub runs: usize,
    pub environments: usize,
    pub failure_rate: f64,
    pub retries: u32,
    /// Rollouts in which some step failed on its first attempt.
    pub some_first_attempt_failed: usize,
    /// Rollouts in which some step still failed after its retries.
    pub needed_human: usize,
}

impl ExperimentResult {
    /// 1 − (1 − F)^N.
    pub fn theory_first_attempt(&self) -> f64 {
        1.0 - (1.0 - self.failure_rate).powi(self.environments as i32)
    }

    /// SPEC 6.7: 1 − Π(1 − (1 − p)^(r+1)) with p = 1 − F for every step.
    pub fn theory_needs_human(&self) -> f64 {
        let exhaust = self.failure_rate.powi(self.retries as i32 + 1);
        1.0 - (1.0 - exhaust).powi(self.environments as i32)
    }

    fn share(&self, n: usize) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            n as f64 / self.runs as f64
        }
    }

    /// The table, in Markdown.
    pub fn table(&self) -> String {
        format!(
            "| runs | environments | failure rate | some step failed on its first attempt (measured) | theory 1 − (1 − F)^N | needed a human with {r} retries (measured) | theory (SPEC 6.7) |\n\
             |---:|---:|---:|---:|---:|---:|---:|\n\
             | {runs} | {n} | {f} | {m1} | {t1} | {m2} | {t2} |\n",
            r = self.retries,
            runs = self.runs,
            n = self.environments,
            f = format_percent(self.failure_rate),
            m1 = format_percent(self.share(self.some_first_attempt_failed)),
            t1 = format_percent(self.theory_first_attempt()),
            m2 = format_percent(self.share(self.needed_human)),
            t2 = format_percent(self.theory_needs_human()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_valid() {
        let names = environment_names(500);
        let set: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(set.len(), 500);
        assert_eq!(names[0], "acme-eu");
        assert!(names.iter().all(|n| {
            n.len() <= 63
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        }));
    }

    #[test]
    fn the_demo_spec_is_valid() {
        let envs: Vec<(String, String)> = environment_names(50)
            .into_iter()
            .map(|n| {
                let url = format!("http://127.0.0.1:1/env/{n}");
                (n, url)
            })
            .collect();
        let t = SpecTimings {
            bake: "5s".into(),
            backoff: "1s".into(),
            poll_interval: "250ms".into(),
        };
        let spec = crate::spec::parse_spec(&demo_spec(&envs, &t), &Default::default())
            .expect("valid demo spec");
        assert_eq!(spec.services.len(), 3);
        assert_eq!(spec.waves.len(), 3);
        crate::spec::parse_spec(&experiment_spec(&envs), &Default::default())
            .expect("valid experiment spec");
    }

    #[test]
    fn theory_matches_spec_examples() {
        let r = ExperimentResult {
            runs: 10,
            environments: 100,
            failure_rate: 0.01,
            retries: 2,
            some_first_attempt_failed: 6,
            needed_human: 0,
        };
        assert_eq!(format_percent(r.theory_first_attempt()), "63.4%");
        assert_eq!(format_percent(r.theory_needs_human()), "0.01%");
        let t = r.table();
        assert!(
            t.contains("| 10 | 100 | 1.0% | 60.0% | 63.4% | 0% | 0.01% |"),
            "{t}"
        );
    }
}
