//! Every report template in every rollout state (snapshots), and the size
//! limits at 5,000 environments.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use convoy::domain::{
    BranchName, CommitSha, EnvName, InstallationId, RepoName, RolloutId, ServiceName, WaveName,
};
use convoy::engine::{Halt, Rollout, RolloutState, StepState, WavePhase};
use convoy::github::limits::{CHECK_RUN_OUTPUT_MAX_BYTES, check_actions};
use convoy::github::types::NewCheckRun;
use convoy::plan::model::*;
use convoy::report::render::{RenderOptions, RolloutReport, render_rollout};
use convoy::store::{RolloutKind, RolloutRecord};

const SHA: &str = "c0ffee1234567890c0ffee1234567890c0ffee12";

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn opts() -> RenderOptions {
    RenderOptions {
        public_url: "https://convoy.example.com".into(),
        prefix: "/convoy".into(),
    }
}

fn record(state: &str) -> RolloutRecord {
    RolloutRecord {
        id: RolloutId::new("20261126101500000-abc123"),
        repo: RepoName::new("acme/app"),
        branch: BranchName::new("main"),
        commit: CommitSha::new(SHA),
        previous_commit: None,
        pull_request: Some(42),
        installation: Some(InstallationId(7)),
        kind: RolloutKind::Deploy,
        parent: None,
        state: state.into(),
        created_at: t("2026-11-26T10:15:00Z"),
        updated_at: t("2026-11-26T10:20:00Z"),
        document: None,
        error: None,
    }
}

/// Waves of (name, environment count, approval); services db ← api in
/// every environment.
fn plan(waves: &[(&str, usize, bool)], services: &[&str]) -> Plan {
    let mut n = 0;
    let mut planned = Vec::new();
    let mut targets = BTreeMap::new();
    for (name, count, approval) in waves {
        let envs: Vec<EnvName> = (0..*count)
            .map(|_| {
                n += 1;
                EnvName::new(format!("cust-{n:04}"))
            })
            .collect();
        let mut steps = Vec::new();
        for e in &envs {
            targets.insert(
                e.clone(),
                EnvTarget {
                    driver: "agent".into(),
                    url: Some(format!("http://127.0.0.1:9101/{e}")),
                    labels: BTreeMap::new(),
                    depends_on: vec![],
                },
            );
            for (i, s) in services.iter().enumerate() {
                steps.push(PlannedStep {
                    environment: e.clone(),
                    service: ServiceName::new(*s),
                    waits_for: if i == 0 {
                        vec![]
                    } else {
                        vec![StepKey {
                            environment: e.clone(),
                            service: ServiceName::new(services[i - 1]),
                        }]
                    },
                });
            }
        }
        planned.push(PlannedWave {
            name: WaveName::new(*name),
            environments: envs,
            max_parallel: 2,
            failure_budget: FailureBudget::Count(if *name == "rest" { 1 } else { 0 }),
            bake: Duration::ZERO,
            approval: *approval,
            steps,
        });
    }
    let steps: usize = planned.iter().map(|w| w.steps.len()).sum();
    Plan {
        commit: CommitSha::new(SHA),
        previous_commit: Some(CommitSha::new("0123456789abcdef0123456789abcdef01234567")),
        affected_services: services.iter().map(|s| ServiceName::new(*s)).collect(),
        waves: planned,
        targets,
        policy: RolloutPolicy {
            approvers: vec!["@acme/sre".into(), "alice".into()],
            ..RolloutPolicy::default()
        },
        risk: Risk {
            steps,
            first_attempt_failure: 1.0 - 0.99f64.powi(steps as i32),
            needs_human: 1.0 - (1.0 - 0.01f64.powi(3)).powi(steps as i32),
            riskiest: vec![
                EnvRisk {
                    environment: EnvName::new("cust-0003"),
                    p: 0.75,
                },
                EnvRisk {
                    environment: EnvName::new("cust-0001"),
                    p: 0.9,
                },
            ],
        },
    }
}

fn small() -> Rollout {
    Rollout::new(plan(
        &[("canary", 2, false), ("early", 3, false), ("rest", 5, true)],
        &["db", "api"],
    ))
}

fn finish_wave(r: &mut Rollout, w: usize) {
    let wave = &mut r.waves[w];
    wave.phase = WavePhase::Done;
    wave.started_at = Some(t("2026-11-26T10:16:00Z"));
    wave.finished_at = Some(t("2026-11-26T10:17:00Z"));
    for s in &mut wave.steps {
        s.state = StepState::Succeeded;
        s.attempts = 1;
    }
}

fn started(mut r: Rollout) -> Rollout {
    r.state = RolloutState::Running;
    r.started_at = Some(t("2026-11-26T10:15:05Z"));
    r
}

fn fail(r: &mut Rollout, w: usize, i: usize, error: &str) {
    let s = &mut r.waves[w].steps[i];
    s.state = StepState::Failed;
    s.attempts = 3;
    s.error = Some(error.into());
}

fn report(state: &str, r: Option<&Rollout>) -> RolloutReport {
    let mut rec = record(state);
    rec.document = r.map(|r| serde_json::to_string(r).unwrap());
    render_rollout(&rec, r, &opts())
}

/// The check run as a reviewer reads it: the fields, then summary and text.
fn show_check(run: &NewCheckRun) -> String {
    let mut head = serde_json::to_value(run).unwrap();
    let output = head["output"].take();
    let mut s = serde_json::to_string_pretty(&head).unwrap();
    s.push_str("\n----- title -----\n");
    s.push_str(output["title"].as_str().unwrap_or_default());
    s.push_str("\n----- summary -----\n");
    s.push_str(output["summary"].as_str().unwrap_or_default());
    s.push_str("----- text -----\n");
    s.push_str(output["text"].as_str().unwrap_or("(none)\n"));
    if let Some(a) = output.get("annotations") {
        s.push_str("----- annotations -----\n");
        s.push_str(&serde_json::to_string_pretty(a).unwrap());
    }
    s
}

fn snap(name: &str, state: &str, r: Option<&Rollout>) -> RolloutReport {
    let rep = report(state, r);
    assert!(
        rep.comment
            .starts_with("<!-- convoy:rollout:20261126101500000-abc123 -->\n")
    );
    check_actions(&rep.check_run.actions).unwrap();
    assert_eq!(
        rep.check_run.external_id.as_deref(),
        Some("20261126101500000-abc123")
    );
    assert_eq!(
        rep.check_run.details_url.as_deref(),
        Some("https://convoy.example.com/rollouts/20261126101500000-abc123")
    );
    insta::assert_snapshot!(format!("{name}_comment"), rep.comment);
    insta::assert_snapshot!(format!("{name}_check_run"), show_check(&rep.check_run));
    rep
}

fn conclusion(rep: &RolloutReport) -> String {
    let v = serde_json::to_value(&rep.check_run).unwrap();
    format!(
        "{}/{}",
        v["status"].as_str().unwrap(),
        v["conclusion"].as_str().unwrap_or("-")
    )
}

fn labels(rep: &RolloutReport) -> Vec<&str> {
    rep.check_run
        .actions
        .iter()
        .map(|a| a.label.as_str())
        .collect()
}

#[test]
fn noop() {
    let mut r = Rollout::new(plan(&[], &[]));
    r.state = RolloutState::Noop;
    r.risk = Risk::default();
    let rep = snap("noop", "noop", Some(&r));
    assert_eq!(conclusion(&rep), "completed/neutral");
}

#[test]
fn queued() {
    let r = small();
    let rep = snap("queued", "queued", Some(&r));
    assert_eq!(conclusion(&rep), "queued/-");
}

#[test]
fn running() {
    let mut r = started(small());
    finish_wave(&mut r, 0);
    r.current_wave = 1;
    r.waves[1].phase = WavePhase::Running;
    r.waves[1].started_at = Some(t("2026-11-26T10:17:00Z"));
    r.waves[1].steps[0].state = StepState::Succeeded;
    r.waves[1].steps[0].attempts = 1;
    r.waves[1].steps[1].state = StepState::Verifying;
    r.waves[1].steps[1].attempts = 1;
    r.waves[1].steps[2].state = StepState::Deploying;
    r.waves[1].steps[2].attempts = 1;
    r.waves[1].steps[4].retry_at = Some(t("2026-11-26T10:18:30Z"));
    r.waves[1].steps[4].attempts = 1;
    r.waves[1].steps[4].error = Some("agent answered 502".into());
    let rep = snap("running", "running", Some(&r));
    assert_eq!(conclusion(&rep), "in_progress/-");
    assert!(rep.check_run.actions.is_empty());
}

fn halted() -> Rollout {
    let mut r = started(small());
    finish_wave(&mut r, 0);
    r.current_wave = 1;
    r.waves[1].phase = WavePhase::Running;
    r.waves[1].steps[0].state = StepState::Succeeded;
    r.waves[1].steps[0].attempts = 1;
    r.waves[1].steps[1].state = StepState::Succeeded;
    r.waves[1].steps[1].attempts = 1;
    fail(
        &mut r,
        1,
        2,
        "deploy refused (HTTP 422): image `api:c0ffee` not found | ask @acme/sre\n<b>retry later</b>",
    );
    fail(&mut r, 1, 4, "unreachable: connection refused");
    // The api step of cust-0005 never started: its db step failed.
    r.waves[1].steps[5].state = StepState::Failed;
    r.waves[1].steps[5].error = Some("not started: cust-0005/db failed".into());
    r.state = RolloutState::Halted;
    r.halt = Some(Halt {
        wave: WaveName::new("early"),
        at: t("2026-11-26T10:18:00Z"),
        failed: 3,
        allowed: 0,
    });
    r
}

#[test]
fn halted_with_failures() {
    let r = halted();
    let rep = snap("halted", "halted", Some(&r));
    assert_eq!(conclusion(&rep), "completed/action_required");
    assert_eq!(labels(&rep), ["Retry failed", "Roll back", "Abort"]);
    // The exact recovery commands, per failed environment.
    for line in [
        "/convoy retry cust-0004",
        "/convoy skip cust-0004",
        "/convoy rollback cust-0004",
        "/convoy retry cust-0005",
    ] {
        assert!(rep.comment.contains(&format!("`{line}`")), "{line}");
    }
    // Untrusted agent text cannot ping, break the table or inject HTML.
    assert!(!rep.comment.contains("@acme/sre\n"));
    assert!(!rep.comment.contains("<b>"));
}

/// Commands on the pull request act on its deploy rollout, so a halted
/// rollback's report offers none to type (a `/convoy retry` would retry
/// the deploy); it points at its check run's buttons, which reach it.
#[test]
fn a_halted_rollback_offers_its_buttons_not_commands_that_reach_the_deploy() {
    let r = halted();
    let mut rec = record("halted");
    rec.kind = RolloutKind::Rollback;
    rec.parent = Some(RolloutId::new("20261126090000000-parent"));
    rec.document = Some(serde_json::to_string(&r).unwrap());
    let rep = render_rollout(&rec, Some(&r), &opts());
    assert!(!rep.comment.contains("`/convoy "), "{}", rep.comment);
    assert!(
        rep.comment
            .contains("Act on it with the buttons of its `convoy/rollback` check run"),
        "{}",
        rep.comment
    );
    assert_eq!(rep.check_run.name, "convoy/rollback");
    assert!(labels(&rep).contains(&"Retry failed"), "{:?}", labels(&rep));
    // The deploy's own report keeps them.
    assert!(
        report("halted", Some(&r))
            .comment
            .contains("`/convoy retry cust-0004`")
    );
}

#[test]
fn awaiting_approval() {
    let mut r = started(small());
    finish_wave(&mut r, 0);
    finish_wave(&mut r, 1);
    r.current_wave = 2;
    r.state = RolloutState::AwaitingApproval;
    r.policy.forbid_self_approval = true;
    let rep = snap("awaiting_approval", "awaiting_approval", Some(&r));
    assert_eq!(conclusion(&rep), "completed/action_required");
    assert_eq!(labels(&rep), ["Approve rest", "Abort"]);
    assert_eq!(rep.check_run.actions[0].identifier, "approve:rest");
}

#[test]
fn frozen() {
    let mut r = started(small());
    finish_wave(&mut r, 0);
    r.current_wave = 1;
    r.state = RolloutState::Frozen;
    r.frozen_until = Some(t("2026-12-27T00:00:00Z"));
    r.frozen_reason = Some("holidays".into());
    let rep = snap("frozen", "frozen", Some(&r));
    assert_eq!(conclusion(&rep), "in_progress/-");
}

#[test]
fn frozen_mid_wave() {
    // A weekly window began while wave `early` ran: one environment is
    // still in flight, one done, the third waits for the window to end.
    let mut r = started(small());
    finish_wave(&mut r, 0);
    r.current_wave = 1;
    let wave = &mut r.waves[1];
    wave.phase = WavePhase::Running;
    wave.started_at = Some(t("2026-11-26T10:17:00Z"));
    for s in wave.steps.iter_mut().take(2) {
        s.state = StepState::Succeeded;
        s.attempts = 1;
    }
    wave.steps[2].state = StepState::Verifying;
    wave.steps[2].attempts = 1;
    r.state = RolloutState::Frozen;
    r.frozen_until = Some(t("2026-11-27T07:00:00Z"));
    r.frozen_reason = Some("nightly maintenance".into());
    let rep = snap("frozen_mid_wave", "frozen", Some(&r));
    assert_eq!(conclusion(&rep), "in_progress/-");
    assert!(
        rep.comment.contains(
            "wait for the freeze window to end at 2026-11-27 07:00 UTC (nightly maintenance)"
        ),
        "{}",
        rep.comment
    );
    assert!(rep.comment.contains("🧊 frozen"), "{}", rep.comment);
}

#[test]
fn paused() {
    let mut r = started(small());
    finish_wave(&mut r, 0);
    r.current_wave = 1;
    r.state = RolloutState::Paused;
    r.paused_by = Some("alice".into());
    let rep = snap("paused", "paused", Some(&r));
    assert_eq!(conclusion(&rep), "in_progress/-");
    assert_eq!(labels(&rep), ["Resume", "Abort"]);
}

#[test]
fn succeeded() {
    let mut r = started(small());
    for w in 0..3 {
        finish_wave(&mut r, w);
    }
    r.waves[2].approved_by = Some("alice".into());
    r.current_wave = 3;
    r.state = RolloutState::Succeeded;
    r.finished_at = Some(t("2026-11-26T10:30:00Z"));
    let rep = snap("succeeded", "succeeded", Some(&r));
    assert_eq!(conclusion(&rep), "completed/success");
    assert!(rep.check_run.completed_at.is_some());
}

#[test]
fn failed_after_retries() {
    let mut r = halted();
    r.halt = None;
    r.state = RolloutState::Failed;
    r.finished_at = Some(t("2026-11-26T10:31:00Z"));
    let rep = snap("failed", "failed", Some(&r));
    assert_eq!(conclusion(&rep), "completed/failure");
}

#[test]
fn aborted() {
    let mut r = started(small());
    finish_wave(&mut r, 0);
    r.current_wave = 1;
    r.state = RolloutState::Aborted;
    r.aborted_by = Some("bob".into());
    r.finished_at = Some(t("2026-11-26T10:19:00Z"));
    let rep = snap("aborted", "aborted", Some(&r));
    assert_eq!(conclusion(&rep), "completed/cancelled");
}

#[test]
fn superseded() {
    let mut r = started(small());
    finish_wave(&mut r, 0);
    r.current_wave = 1;
    r.state = RolloutState::Superseded;
    r.superseded_by = Some("20261126102000000-def456".into());
    r.finished_at = Some(t("2026-11-26T10:20:00Z"));
    let rep = snap("superseded", "superseded", Some(&r));
    assert_eq!(conclusion(&rep), "completed/cancelled");
}

#[test]
fn failed_before_planning() {
    let mut rec = record("failed");
    rec.error = Some(
        "convoy.yml:4:5: unknown key `pathz`; did you mean `paths`?\nconvoy.yml:11:13: driver `helm` is not defined by the operator"
            .into(),
    );
    let rep = render_rollout(&rec, None, &opts());
    insta::assert_snapshot!("failed_before_planning_comment", rep.comment);
    insta::assert_snapshot!(
        "failed_before_planning_check_run",
        show_check(&rep.check_run)
    );
    assert_eq!(conclusion(&rep), "completed/failure");
    let a = &rep.check_run.output.as_ref().unwrap().annotations;
    assert_eq!(
        a.iter().map(|a| a.start_line).collect::<Vec<_>>(),
        vec![4, 11]
    );
}

#[test]
fn rendering_is_deterministic() {
    let r = halted();
    assert_eq!(report("halted", Some(&r)), report("halted", Some(&r)));
}

/// 5,000 environments × 3 services, 300 environments failed with distinct
/// errors: both bodies fit, and all 300 failures are listed.
#[test]
fn five_thousand_environments_with_three_hundred_failures_fit() {
    let mut r = started(Rollout::new(plan(
        &[
            ("canary", 2, false),
            ("early", 498, false),
            ("rest", 4500, false),
        ],
        &["db", "api", "web"],
    )));
    finish_wave(&mut r, 0);
    finish_wave(&mut r, 1);
    r.current_wave = 2;
    r.waves[2].phase = WavePhase::Running;
    let mut failed = Vec::new();
    let steps = r.waves[2].steps.len();
    for i in 0..steps {
        let env = r.waves[2].steps[i].environment.clone();
        let n: usize = env.as_str()[5..].parse().unwrap();
        if i % 3 == 1 && n.is_multiple_of(15) {
            // 300 environments: api failed with an error of its own.
            fail(
                &mut r,
                2,
                i,
                &format!(
                    "deploy refused by the agent at http://10.1.{}.{}:9101 (HTTP 500): migration {} left the schema locked; see https://logs.example.com/{env}/deploy?attempt=3 for the full output of the failed run",
                    n / 250,
                    n % 250,
                    n * 7
                ),
            );
            failed.push(env);
        } else if i < steps * 3 / 4 {
            r.waves[2].steps[i].state = StepState::Succeeded;
            r.waves[2].steps[i].attempts = 1;
        }
    }
    assert_eq!(failed.len(), 300);
    r.state = RolloutState::Halted;
    r.halt = Some(Halt {
        wave: WaveName::new("rest"),
        at: t("2026-11-26T11:00:00Z"),
        failed: 300,
        allowed: 1,
    });
    let rep = report("halted", Some(&r));
    let out = rep.check_run.output.as_ref().unwrap();
    let text = out.text.as_deref().unwrap();
    for (what, body) in [
        ("comment", &rep.comment),
        ("check-run text", &text.to_owned()),
    ] {
        assert!(
            body.len() <= CHECK_RUN_OUTPUT_MAX_BYTES,
            "{what}: {} bytes",
            body.len()
        );
        for env in &failed {
            assert!(body.contains(&format!("`{env}`")), "{what} lists {env}");
        }
        assert!(
            body.contains("65,535-byte limit"),
            "{what} says what was folded"
        );
        assert!(!body.contains("(truncated"), "{what} was folded, not cut");
        // The commands that recover them all.
        assert!(body.contains(&format!("/convoy retry {}", failed[0])));
    }
    assert!(out.summary.len() <= CHECK_RUN_OUTPUT_MAX_BYTES);
    assert_eq!(labels(&rep), ["Retry failed", "Roll back", "Abort"]);
}

// ---------------------------------------------------------------------------
// convoy/preflight

mod preflight {
    use super::*;
    use convoy::engine::freeze::ActiveFreeze;
    use convoy::report::preflight::{PreflightFacts, PreflightOutcome, Probe, render_preflight};
    use convoy::spec::{Pos, SpecError};
    use convoy::store::Freeze;

    fn facts(outcome: PreflightOutcome) -> PreflightFacts {
        PreflightFacts {
            head_sha: CommitSha::new(SHA),
            base: BranchName::new("main"),
            pull_request: 42,
            checked_at: t("2026-11-26T09:00:00Z"),
            outcome,
        }
    }

    fn show(name: &str, f: &PreflightFacts) -> NewCheckRun {
        let run = render_preflight(f, &opts());
        insta::assert_snapshot!(format!("preflight_{name}"), show_check(&run));
        run
    }

    fn planned(p: Plan, probes: Vec<Probe>, freeze: Option<ActiveFreeze>) -> PreflightOutcome {
        PreflightOutcome::Planned {
            plan: Box::new(p),
            probes,
            freeze,
            emergency_freeze: None,
            from_base: None,
        }
    }

    #[test]
    fn changes_the_base_branch_carries_into_the_merge_are_named() {
        use convoy::report::preflight::FromBase;
        let mut outcome = planned(plan(&[("rest", 3, false)], &["api", "web"]), vec![], None);
        if let PreflightOutcome::Planned { from_base, .. } = &mut outcome {
            *from_base = Some(Box::new(FromBase::Carried {
                since: CommitSha::new("1111111aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
                base_head: CommitSha::new("2222222bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"),
                services: vec![ServiceName::new("web")],
                not_in_plan: vec![ServiceName::new("worker")],
            }));
        }
        let run = render_preflight(&facts(outcome), &opts());
        // Worth knowing, not a reason to hold the merge.
        assert_eq!(conclusion_of(&run), "completed/success");
        let summary = &run.output.as_ref().unwrap().summary;
        assert!(
            summary.contains(
                "`main` has changes not rolled out yet: its last successful rollout was `1111111`, and up to `2222222` it also changes `web`, which this pull request does not touch. A merge now rolls it out too, unless a rollout of `main` succeeds first. And it adds `worker`, which this branch's `convoy.yml` does not define: a merge rolls it out too, but this plan cannot show it."
            ),
            "{summary}"
        );
        // When the base cannot be read, the check says the plan may be
        // short, also when the pull request's own change rolls nothing out.
        let mut outcome = planned(plan(&[("rest", 3, false)], &[]), vec![], None);
        if let PreflightOutcome::Planned { from_base, .. } = &mut outcome {
            *from_base = Some(Box::new(FromBase::Unread {
                since: CommitSha::new("1111111aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
            }));
        }
        let run = render_preflight(&facts(outcome), &opts());
        assert_eq!(conclusion_of(&run), "completed/success");
        let summary = &run.output.as_ref().unwrap().summary;
        assert!(
            summary.contains(
                "convoy could not read what `main` changed since its last successful rollout (`1111111`): the plan shows this pull request's own change only"
            ),
            "{summary}"
        );
        assert!(summary.contains("rolls nothing out"), "{summary}");
        assert!(!summary.contains("as neutral"), "{summary}");
    }

    fn stored_freeze(scope: &str, until: Option<&str>, reason: Option<&str>) -> Freeze {
        Freeze {
            scope: scope.into(),
            until: until.map(t),
            reason: reason.map(Into::into),
            by: "bob".into(),
            at: t("2026-11-26T08:00:00Z"),
        }
    }

    #[test]
    fn an_emergency_freeze_of_the_repository_is_shown() {
        let mut outcome = planned(
            plan(&[("canary", 2, false), ("rest", 8, false)], &["db", "api"]),
            vec![],
            None,
        );
        if let PreflightOutcome::Planned {
            emergency_freeze, ..
        } = &mut outcome
        {
            *emergency_freeze = Some(stored_freeze("acme/app", None, Some("incident 42")));
        }
        let run = show("emergency_freeze", &facts(outcome));
        // A warning, not a failure: the merge may go ahead and wait.
        assert_eq!(conclusion_of(&run), "completed/success");
        let summary = &run.output.as_ref().unwrap().summary;
        assert!(
            summary.contains(
                "An emergency freeze of this repository by `bob` is in force until lifted (incident 42)"
            ),
            "{summary}"
        );
        assert!(summary.contains("`/convoy unfreeze` lifts"), "{summary}");
    }

    #[test]
    fn an_operator_freeze_of_all_repositories_is_shown_with_its_end() {
        let mut outcome = planned(plan(&[("rest", 3, false)], &["api"]), vec![], None);
        if let PreflightOutcome::Planned {
            emergency_freeze, ..
        } = &mut outcome
        {
            *emergency_freeze = Some(stored_freeze("*", Some("2026-11-26T12:00:00Z"), None));
        }
        let run = render_preflight(&facts(outcome), &opts());
        let summary = &run.output.as_ref().unwrap().summary;
        assert!(
            summary.contains(
                "An emergency freeze of every repository by `bob` is in force until 2026-11-26 12:00 UTC: a rollout started now starts no step until it ends."
            ),
            "{summary}"
        );
        assert!(
            summary.contains("`convoy unfreeze --all` lifts it"),
            "{summary}"
        );
    }

    #[test]
    fn the_freeze_in_force_that_lasts_longest_is_the_one_shown() {
        use convoy::store::Freeze;
        let now = t("2026-11-26T09:00:00Z");
        let expired = stored_freeze("acme/app", Some("2026-11-26T08:30:00Z"), Some("old"));
        let short = stored_freeze("acme/app", Some("2026-11-26T10:00:00Z"), Some("short"));
        let long = stored_freeze("*", Some("2026-11-26T18:00:00Z"), Some("long"));
        let open = stored_freeze("acme/app", None, Some("open"));
        assert_eq!(Freeze::in_force(&[], now), None);
        assert_eq!(Freeze::in_force(std::slice::from_ref(&expired), now), None);
        let pick = |fs: &[Freeze]| Freeze::in_force(fs, now).and_then(|f| f.reason);
        assert_eq!(
            pick(&[expired.clone(), short.clone(), long.clone()]).as_deref(),
            Some("long")
        );
        assert_eq!(pick(&[long, open, short, expired]).as_deref(), Some("open"));
    }

    #[test]
    fn invalid_config_fails_with_annotations() {
        let run = show(
            "invalid",
            &facts(PreflightOutcome::Invalid {
                errors: vec![
                    SpecError {
                        pos: Pos { line: 4, col: 5 },
                        message: "unknown key `pathz`; did you mean `paths`?".into(),
                    },
                    SpecError {
                        pos: Pos { line: 19, col: 12 },
                        message: "retries: expected a number, found `many`".into(),
                    },
                ],
            }),
        );
        assert_eq!(conclusion_of(&run), "completed/failure");
        let a = &run.output.as_ref().unwrap().annotations;
        assert_eq!(
            a.iter()
                .map(|a| (a.path.as_str(), a.start_line, a.start_column))
                .collect::<Vec<_>>(),
            vec![("convoy.yml", 4, Some(5)), ("convoy.yml", 19, Some(12))]
        );
    }

    #[test]
    fn a_clean_plan_succeeds() {
        let run = show(
            "clean",
            &facts(planned(
                plan(&[("canary", 2, false), ("rest", 8, false)], &["db", "api"]),
                vec![],
                None,
            )),
        );
        assert_eq!(conclusion_of(&run), "completed/success");
    }

    #[test]
    fn warnings_do_not_fail_the_check() {
        let run = show(
            "warnings",
            &facts(planned(
                plan(
                    &[("canary", 2, false), ("early", 3, false), ("rest", 5, true)],
                    &["db", "api"],
                ),
                vec![
                    Probe::Unreachable {
                        environment: EnvName::new("cust-0004"),
                        service: ServiceName::new("db"),
                        reason: "connection refused".into(),
                    },
                    Probe::Drifted {
                        environment: EnvName::new("cust-0007"),
                        service: ServiceName::new("api"),
                        expected: "0123456789ab".into(),
                        found: "hotfix-1".into(),
                    },
                ],
                Some(ActiveFreeze {
                    until: t("2026-11-27T00:00:00Z"),
                    reason: Some("release freeze".into()),
                }),
            )),
        );
        assert_eq!(conclusion_of(&run), "completed/success");
    }

    #[test]
    fn nothing_to_roll_out() {
        let run = show("noop", &facts(planned(plan(&[], &[]), vec![], None)));
        assert_eq!(conclusion_of(&run), "completed/success");
    }

    #[test]
    fn five_thousand_unreachable_environments_fit() {
        let p = plan(&[("canary", 2, false), ("rest", 4998, false)], &["app"]);
        let probes = p
            .targets
            .keys()
            .map(|e| Probe::Unreachable {
                environment: e.clone(),
                service: ServiceName::new("app"),
                reason: format!("connection refused by http://10.0.0.1:9101/{e} after 5 s"),
            })
            .collect();
        let run = render_preflight(&facts(planned(p, probes, None)), &opts());
        let out = run.output.unwrap();
        assert!(out.summary.len() <= CHECK_RUN_OUTPUT_MAX_BYTES);
        assert!(out.text.unwrap().len() <= CHECK_RUN_OUTPUT_MAX_BYTES);
        assert!(out.summary.contains("5,000 environments are unreachable"));
    }

    fn conclusion_of(run: &NewCheckRun) -> String {
        let v = serde_json::to_value(run).unwrap();
        format!(
            "{}/{}",
            v["status"].as_str().unwrap(),
            v["conclusion"].as_str().unwrap_or("-")
        )
    }
}
