//! The reporter's transport: pure pacing and coalescing decisions with a
//! hand-moved clock, then end to end through the GitHub stand-in, and a
//! restart over the same SQLite ledger.

use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use convoy::config::Secret;
use convoy::domain::{InstallationId, RepoName, RolloutId};
use convoy::github::*;
use convoy::report::transport::*;
use convoy::testkit::github_standin::{
    Fault, FaultKind, GitHubStandIn, StandInConfig, TEST_APP_ID, TEST_APP_PRIVATE_KEY_PEM,
};

fn s(secs: f64) -> Duration {
    Duration::from_secs_f64(secs)
}

fn key(inst: i64, rollout: &str, issue: u64) -> ReportKey {
    ReportKey {
        installation: InstallationId(inst),
        repo: RepoName::new("acme/app"),
        rollout: RolloutId::new(rollout),
        object: ReportObject::Comment { issue },
    }
}

fn body(text: &str) -> Desired {
    Desired::Comment {
        body: text.to_owned(),
    }
}

fn cfg() -> PacingConfig {
    PacingConfig {
        min_update_interval: s(5.0),
        progress_interval: s(30.0),
        writes_per_minute: 60,
        retry_base: s(5.0),
        retry_max: s(300.0),
        edit_burst: DEFAULT_EDIT_BURST,
        edit_refill: DEFAULT_EDIT_REFILL,
    }
}

fn jobs(next: Next) -> Vec<Job> {
    match next {
        Next::Send(j) => j,
        other => panic!("expected sends, got {other:?}"),
    }
}

fn bodies(jobs: &[Job]) -> Vec<String> {
    jobs.iter()
        .map(|j| match &j.desired {
            Desired::Comment { body } => body.clone(),
            Desired::CheckRun(r) => r.name.clone(),
            Desired::Issue { body, .. } => body.clone(),
        })
        .collect()
}

/// Sends what is due at `now` and reports them all as landed.
fn deliver_all(sched: &mut Scheduler, now: Duration) -> Vec<String> {
    match sched.next(now) {
        Next::Send(js) => {
            for (i, j) in js.iter().enumerate() {
                sched.sent(j, 100 + i as u64, now);
            }
            bodies(&js)
        }
        _ => Vec::new(),
    }
}

#[test]
fn the_newest_body_wins_and_an_unchanged_body_is_never_sent() {
    let mut sched = Scheduler::new(cfg());
    let k = key(1, "r1", 7);
    sched.desire(k.clone(), body("v1"), Importance::Matters, s(0.0));
    assert_eq!(deliver_all(&mut sched, s(0.0)), vec!["v1"]);
    sched.desire(k.clone(), body("v1"), Importance::Matters, s(10.0));
    assert_eq!(
        sched.next(s(10.0)),
        Next::Idle,
        "unchanged body is not sent"
    );
    sched.desire(k.clone(), body("v2"), Importance::CountsOnly, s(11.0));
    sched.desire(k.clone(), body("v3"), Importance::CountsOnly, s(12.0));
    assert_eq!(sched.next(s(12.0)), Next::WaitUntil(s(30.0)));
    assert_eq!(
        deliver_all(&mut sched, s(30.0)),
        vec!["v3"],
        "v2 coalesced away"
    );
    // Back to what GitHub shows before it was sent: nothing to do.
    sched.desire(k.clone(), body("v4"), Importance::CountsOnly, s(31.0));
    sched.desire(k.clone(), body("v3"), Importance::CountsOnly, s(32.0));
    assert_eq!(sched.next(s(40.0)), Next::Idle);
    assert_eq!(sched.pending(), 0);
}

#[test]
fn a_change_that_matters_shows_within_min_update_interval() {
    let mut sched = Scheduler::new(cfg());
    let k = key(1, "r1", 7);
    sched.desire(k.clone(), body("start"), Importance::Matters, s(0.0));
    assert_eq!(deliver_all(&mut sched, s(0.0)), vec!["start"]);
    sched.desire(
        k.clone(),
        body("wave 2 started"),
        Importance::Matters,
        s(1.0),
    );
    assert_eq!(sched.next(s(1.0)), Next::WaitUntil(s(5.0)));
    assert_eq!(sched.next(s(4.9)), Next::WaitUntil(s(5.0)));
    assert_eq!(deliver_all(&mut sched, s(5.0)), vec!["wave 2 started"]);
    // After a quiet period a change goes at once.
    sched.desire(
        k.clone(),
        body("failed: acme-eu"),
        Importance::Matters,
        s(60.0),
    );
    assert_eq!(deliver_all(&mut sched, s(60.0)), vec!["failed: acme-eu"]);
}

#[test]
fn counts_alone_wait_for_progress_interval_but_keep_a_pending_change_urgent() {
    let mut sched = Scheduler::new(cfg());
    let k = key(1, "r1", 7);
    sched.desire(k.clone(), body("0/10"), Importance::Matters, s(0.0));
    deliver_all(&mut sched, s(0.0));
    sched.desire(k.clone(), body("1/10"), Importance::CountsOnly, s(1.0));
    assert_eq!(sched.next(s(1.0)), Next::WaitUntil(s(30.0)));
    // A change that matters lands in the same pending body...
    sched.desire(
        k.clone(),
        body("2/10, acme-eu failed"),
        Importance::Matters,
        s(2.0),
    );
    // ...and a counts-only update after it does not make it less urgent.
    sched.desire(
        k.clone(),
        body("3/10, acme-eu failed"),
        Importance::CountsOnly,
        s(3.0),
    );
    assert_eq!(sched.next(s(3.0)), Next::WaitUntil(s(5.0)));
    assert_eq!(
        deliver_all(&mut sched, s(5.0)),
        vec!["3/10, acme-eu failed"]
    );
}

#[test]
fn a_terminal_state_goes_at_once() {
    let mut sched = Scheduler::new(cfg());
    let k = key(1, "r1", 7);
    sched.desire(k.clone(), body("running"), Importance::Matters, s(0.0));
    deliver_all(&mut sched, s(0.0));
    sched.desire(k.clone(), body("succeeded"), Importance::Terminal, s(1.5));
    assert_eq!(deliver_all(&mut sched, s(1.5)), vec!["succeeded"]);
}

#[test]
fn writes_of_one_installation_are_paced_together_most_urgent_first() {
    let mut sched = Scheduler::new(cfg()); // 60/min → one write a second
    sched.desire(key(1, "a", 1), body("a"), Importance::CountsOnly, s(0.0));
    sched.desire(key(1, "b", 2), body("b"), Importance::Matters, s(0.0));
    sched.desire(key(1, "c", 3), body("c"), Importance::Terminal, s(0.0));
    sched.desire(key(1, "d", 4), body("d"), Importance::Waiting, s(0.0));
    sched.desire(key(2, "e", 5), body("e"), Importance::CountsOnly, s(0.0));
    // One write per installation now, the terminal one first.
    let first = jobs(sched.next(s(0.0)));
    assert_eq!(bodies(&first), vec!["c", "e"]);
    for j in &first {
        sched.sent(j, 1, s(0.0));
    }
    assert_eq!(sched.next(s(0.5)), Next::WaitUntil(s(1.0)));
    assert_eq!(deliver_all(&mut sched, s(1.0)), vec!["d"], "waiting next");
    assert_eq!(deliver_all(&mut sched, s(2.0)), vec!["b"]);
    assert_eq!(deliver_all(&mut sched, s(3.0)), vec!["a"]);
    assert_eq!(sched.next(s(4.0)), Next::Idle);
}

#[test]
fn pacing_holds_a_thousand_environment_rollout_under_the_budget() {
    // 50 rollouts of one installation, each changing every 250 ms for ten
    // minutes: at most writes_per_minute writes per minute.
    let mut sched = Scheduler::new(cfg());
    let mut writes: Vec<u64> = Vec::new();
    let mut n = 0u64;
    // Whole milliseconds: float steps would blur the minute boundaries.
    for t in (0..600_000u64).step_by(250) {
        let now = Duration::from_millis(t);
        for r in 0..50 {
            n += 1;
            sched.desire(
                key(1, &format!("r{r}"), r),
                body(&format!("{n}")),
                Importance::CountsOnly,
                now,
            );
        }
        for _ in deliver_all(&mut sched, now) {
            writes.push(t);
        }
    }
    for (i, w) in writes.iter().enumerate() {
        let in_minute = writes[i..].iter().take_while(|x| **x < w + 60_000).count();
        assert!(
            in_minute <= 60,
            "{in_minute} writes in the minute after {w} ms"
        );
    }
    assert!(
        writes.len() > 500,
        "the pace is used, not starved: {}",
        writes.len()
    );
}

#[test]
fn a_failed_send_is_retried_with_backoff_and_the_newest_body() {
    let mut sched = Scheduler::new(cfg());
    let k = key(1, "r1", 7);
    sched.desire(k.clone(), body("v1"), Importance::Matters, s(0.0));
    let job = jobs(sched.next(s(0.0))).remove(0);
    // While v1 is in flight, the same body again changes nothing...
    sched.desire(k.clone(), body("v1"), Importance::Matters, s(0.1));
    assert_eq!(sched.pending(), 1);
    // ...and a newer body waits for the flight to end.
    sched.desire(k.clone(), body("v2"), Importance::CountsOnly, s(0.2));
    assert_eq!(sched.next(s(0.3)), Next::Idle);
    sched.failed(job, s(1.0), 0.0); // GitHub down
    // Backoff 5 s × (½ + ½·jitter); the newest body goes, as urgent as v1.
    assert_eq!(sched.next(s(1.0)), Next::WaitUntil(s(3.5)));
    assert_eq!(deliver_all(&mut sched, s(3.5)), vec!["v2"]);
    assert_eq!(sched.pending(), 0);
}

#[test]
fn a_refused_body_is_not_retried_but_a_newer_one_goes() {
    let mut sched = Scheduler::new(cfg());
    let k = key(1, "r1", 7);
    sched.desire(k.clone(), body("bad"), Importance::Terminal, s(0.0));
    let job = jobs(sched.next(s(0.0))).remove(0);
    sched.refused(&job);
    assert_eq!(sched.next(s(100.0)), Next::Idle);
    sched.desire(k.clone(), body("good"), Importance::Terminal, s(100.0));
    assert_eq!(deliver_all(&mut sched, s(100.0)), vec!["good"]);
}

#[test]
fn a_restored_ledger_entry_suppresses_the_same_body() {
    let mut sched = Scheduler::new(cfg());
    let k = key(1, "r1", 7);
    sched.restore(k.clone(), Some(55), body("v9").digest());
    sched.desire(k.clone(), body("v9"), Importance::Terminal, s(0.0));
    assert_eq!(sched.next(s(0.0)), Next::Idle);
    sched.desire(k.clone(), body("v10"), Importance::Terminal, s(1.0));
    let j = jobs(sched.next(s(1.0))).remove(0);
    assert_eq!(j.object_id, Some(55), "edits the known object");
}

#[test]
fn a_lone_failure_goes_promptly_however_old_the_object_but_a_storm_is_spaced_by_the_budget() {
    let mut sched = Scheduler::new(cfg());
    let k = key(1, "r1", 7);
    sched.desire(k.clone(), body("started"), Importance::Matters, s(0.0));
    assert_eq!(deliver_all(&mut sched, s(0.0)), vec!["started"]);
    // Forty minutes later a failure still goes within min_update_interval.
    sched.desire(k.clone(), body("e1 failed"), Importance::Matters, s(2400.0));
    assert_eq!(deliver_all(&mut sched, s(2400.0)), vec!["e1 failed"]);
    // A storm of failures, one every 5 s for five minutes: the first go
    // within min_update_interval while the bucket lasts, then they are
    // coalesced to about one edit per refill (30 s).
    let mut t = 2400.0;
    let mut sent = 0;
    for i in 2..=61 {
        t += 5.0;
        sched.desire(
            k.clone(),
            body(&format!("e{i} failed")),
            Importance::Matters,
            s(t),
        );
        sent += deliver_all(&mut sched, s(t)).len();
    }
    assert!(sent >= 14, "the bucket's burst went promptly: {sent}");
    assert!(sent <= 14 + 10 + 1, "{sent} edits in five minutes");
    t += 1.0;
    sched.desire(k.clone(), body("e62 failed"), Importance::Matters, s(t));
    let Next::WaitUntil(at) = sched.next(s(t)) else {
        panic!("the bucket is empty")
    };
    assert!(at > s(t) && at <= s(t + 30.0), "{at:?}");
    // A halt (a waiting state) is exempt: min_update_interval after the
    // last send, and it carries the pending body with it.
    sched.desire(k.clone(), body("halted"), Importance::Waiting, s(t + 1.0));
    assert_eq!(deliver_all(&mut sched, s(t + 5.0)), vec!["halted"]);
    // The end goes at once.
    sched.desire(k.clone(), body("failed"), Importance::Terminal, s(t + 6.0));
    assert_eq!(deliver_all(&mut sched, s(t + 6.0)), vec!["failed"]);
}

#[test]
fn counts_alone_leave_half_the_bucket_to_changes_that_matter() {
    let mut sched = Scheduler::new(cfg());
    let k = key(1, "r1", 7);
    // Counts every progress_interval for an hour: the bucket never drops
    // below half, so a failure after that still goes at once.
    let mut t = 0.0;
    while t < 3600.0 {
        sched.desire(
            k.clone(),
            body(&format!("{t} done")),
            Importance::CountsOnly,
            s(t),
        );
        deliver_all(&mut sched, s(t));
        t += 30.0;
    }
    sched.desire(k.clone(), body("e1 failed"), Importance::Matters, s(t));
    assert_eq!(deliver_all(&mut sched, s(t)), vec!["e1 failed"]);
    // Counts alone right after a burst of failures wait for the bucket to
    // refill to half.
    for i in 2..=12 {
        t += 5.0;
        sched.desire(
            k.clone(),
            body(&format!("e{i} failed")),
            Importance::Matters,
            s(t),
        );
        deliver_all(&mut sched, s(t));
    }
    sched.desire(
        k.clone(),
        body("counts"),
        Importance::CountsOnly,
        s(t + 30.0),
    );
    assert!(matches!(sched.next(s(t + 30.0)), Next::WaitUntil(_)));
    // A zero refill turns the budget off.
    let mut off = Scheduler::new(PacingConfig {
        edit_refill: Duration::ZERO,
        ..cfg()
    });
    let mut t = 0.0;
    for i in 0..100 {
        off.desire(k.clone(), body(&format!("v{i}")), Importance::Matters, s(t));
        assert_eq!(deliver_all(&mut off, s(t)).len(), 1);
        t += 5.0;
    }
}

/// What a 1,000-environment rollout hands the transport over its life, as
/// (time, importance, comment text): both objects (comment and check run)
/// change on every event, as the reporter renders them together.
/// With `all_matter`, every change is treated as one that matters (a
/// failure on every step, say): the worst case for the budget.
fn rollout_updates(duration: Duration, all_matter: bool) -> Vec<(Duration, Importance, String)> {
    let d = duration.as_secs_f64();
    let mut out = Vec::new();
    let mut push = |at: f64, imp: Importance, text: String| {
        let imp = if all_matter {
            imp.max(Importance::Matters)
        } else {
            imp
        };
        out.push((Duration::from_secs_f64(at), imp, text));
    };
    push(
        0.0,
        Importance::Matters,
        "running: wave canary started".into(),
    );
    let (mut done, mut failed) = (0u32, 0u32);
    // canary 10 envs in the first 5 %, early 90 in the next 20 %, an
    // approval wait of 5 %, then 900 in the rest.
    let waves: [(&str, u32, f64, f64); 3] = [
        ("canary", 10, 0.0, 0.05),
        ("early", 90, 0.05, 0.25),
        ("rest", 900, 0.30, 1.0),
    ];
    for (name, n, from, to) in waves {
        if name == "rest" {
            push(
                0.25 * d,
                Importance::Waiting,
                format!("awaiting approval of {name}; {done} done"),
            );
            push(
                0.30 * d,
                Importance::Matters,
                format!("wave {name} approved and started"),
            );
        } else if name != "canary" {
            push(
                from * d,
                Importance::Matters,
                format!("wave {name} started; {done} done"),
            );
        }
        for i in 0..n {
            let at = (from + (to - from) * f64::from(i + 1) / f64::from(n + 1)) * d;
            // Two services per environment: two changes of counts.
            done += 1;
            push(
                at,
                Importance::CountsOnly,
                format!("{done} done, {failed} failed (db)"),
            );
            if (done + failed) % 37 == 0 {
                failed += 1;
                push(
                    at,
                    Importance::Matters,
                    format!("{done} done, {failed} failed"),
                );
            } else {
                push(
                    at,
                    Importance::CountsOnly,
                    format!("{done} done, {failed} failed (api)"),
                );
            }
        }
        push(
            to * d,
            Importance::Matters,
            format!("wave {name} done; {done} done"),
        );
    }
    push(
        d,
        Importance::Terminal,
        format!("succeeded: {done} done, {failed} failed"),
    );
    out
}

#[derive(Default)]
struct Tally {
    /// GitHub requests per rollout: every send, plus the comment search a
    /// first comment send makes (GET) when no id is known.
    requests: std::collections::BTreeMap<String, usize>,
    /// Content-creating requests (POST/PATCH) per installation, by time.
    writes: std::collections::BTreeMap<i64, Vec<Duration>>,
    /// Longest wait between a waiting or terminal body being handed over
    /// and it (or a newer body) going out.
    worst_urgent_delay: Duration,
    /// The last body sent per key equals the last one desired.
    last_sent: std::collections::HashMap<ReportKey, String>,
    last_desired: std::collections::HashMap<ReportKey, String>,
}

/// Drives `rollouts` (installation, rollout id), all starting at 0 and
/// lasting `duration`, through one scheduler with a clock moved by 50 ms
/// ticks; every send lands at once.
fn drive(cfg: PacingConfig, rollouts: &[(i64, &str)], duration: Duration) -> Tally {
    drive_updates(cfg, rollouts, rollout_updates(duration, false), duration)
}

fn drive_updates(
    cfg: PacingConfig,
    rollouts: &[(i64, &str)],
    updates: Vec<(Duration, Importance, String)>,
    duration: Duration,
) -> Tally {
    let mut sched = Scheduler::new(cfg);
    let mut tally = Tally::default();
    let mut next_update = 0;
    let mut urgent_since: std::collections::HashMap<ReportKey, Duration> = Default::default();
    let mut ids = 1000u64;
    let end = duration + Duration::from_secs(600);
    let mut now = Duration::ZERO;
    while now <= end {
        while next_update < updates.len() && updates[next_update].0 <= now {
            let (_, imp, text) = &updates[next_update];
            for (inst, id) in rollouts {
                let ck = key(*inst, id, 7);
                let rk = ReportKey {
                    object: ReportObject::CheckRun {
                        name: "convoy/rollout".into(),
                        generation: 0,
                    },
                    ..ck.clone()
                };
                let conclusion =
                    (*imp == Importance::Terminal).then_some(CheckRunConclusion::Success);
                let bodies = [(ck, comment(id, text)), (rk, check(text, conclusion))];
                for (k, d) in bodies {
                    if *imp >= Importance::Waiting {
                        urgent_since.entry(k.clone()).or_insert(now);
                    }
                    tally.last_desired.insert(k.clone(), d.digest());
                    sched.desire(k, d, *imp, now);
                }
            }
            next_update += 1;
        }
        if let Next::Send(js) = sched.next(now) {
            for j in js {
                let rollout = j.key.rollout.as_str().to_owned();
                let search =
                    matches!(j.key.object, ReportObject::Comment { .. }) && j.object_id.is_none();
                *tally.requests.entry(rollout).or_default() += 1 + usize::from(search);
                tally
                    .writes
                    .entry(j.key.installation.0)
                    .or_default()
                    .push(now);
                if let Some(since) = urgent_since.remove(&j.key) {
                    tally.worst_urgent_delay = tally.worst_urgent_delay.max(now - since);
                }
                tally.last_sent.insert(j.key.clone(), j.digest.clone());
                ids += 1;
                sched.sent(&j, ids, now);
            }
        }
        now += Duration::from_millis(50);
    }
    assert_eq!(sched.pending(), 0, "everything was delivered");
    tally
}

fn assert_paced(tally: &Tally, writes_per_minute: usize) {
    for (inst, writes) in &tally.writes {
        for (i, w) in writes.iter().enumerate() {
            let in_minute = writes[i..]
                .iter()
                .take_while(|x| **x < *w + Duration::from_secs(60))
                .count();
            assert!(
                in_minute <= writes_per_minute,
                "installation {inst}: {in_minute} writes in the minute after {w:?}"
            );
        }
    }
}

#[test]
fn a_thousand_environment_rollout_of_a_minute_costs_at_most_40_requests() {
    // Not trivially small either: progress was shown along the way.
    assert_within_budget(s(60.0), 10, 40);
}

/// A 1,000-environment rollout lasting `duration` costs between `least`
/// and `most` requests, ends shown as it ended, shows waiting and final
/// states within min_update_interval, and keeps writes_per_minute.
fn assert_within_budget(duration: Duration, least: usize, most: usize) {
    let tally = drive(cfg(), &[(1, "r1")], duration);
    let n = tally.requests["r1"];
    eprintln!("{duration:?}: {n} requests");
    assert!(n <= most, "{n} requests");
    assert!(n >= least, "progress keeps being shown: {n} requests");
    assert_eq!(
        tally.last_sent, tally.last_desired,
        "the final state is shown"
    );
    assert!(
        tally.worst_urgent_delay <= s(5.0),
        "{:?}",
        tally.worst_urgent_delay
    );
    assert_paced(&tally, 60);
}

#[test]
fn a_thousand_environment_rollout_of_an_hour_costs_at_most_300_requests() {
    // The approval wait and the end go out promptly even late in the hour.
    assert_within_budget(s(3600.0), 100, 300);
}

#[test]
fn the_budget_holds_when_every_change_matters() {
    for (duration, limit) in [(s(60.0), 40), (s(3600.0), 300)] {
        let updates = rollout_updates(duration, true);
        let tally = drive_updates(cfg(), &[(1, "r1")], updates.clone(), duration);
        let n = tally.requests["r1"];
        eprintln!("{duration:?}, every change matters: {n} requests");
        assert!(n <= limit, "{duration:?}: {n} requests");
        assert_eq!(tally.last_sent, tally.last_desired);
        // Without the budget over time, min_update_interval alone would
        // let an hour of such changes cost far more.
        let unbudgeted = PacingConfig {
            edit_refill: Duration::ZERO,
            ..cfg()
        };
        let m = drive_updates(unbudgeted, &[(1, "r1")], updates, duration).requests["r1"];
        if duration >= s(3600.0) {
            assert!(m > 2 * limit, "{m} requests without the budget");
        }
    }
}

#[test]
fn longer_rollouts_stay_within_budget_too() {
    // Six hours, every change a failure: two objects, each at most the
    // bucket plus one edit per refill, plus the end and the approval wait.
    let duration = s(6.0 * 3600.0);
    let tally = drive_updates(
        cfg(),
        &[(1, "r1")],
        rollout_updates(duration, true),
        duration,
    );
    let n = tally.requests["r1"];
    eprintln!("six hours: {n} requests");
    let per_object = DEFAULT_EDIT_BURST as usize + (6 * 3600 / 30);
    assert!(n <= 2 * per_object + 5, "{n} requests");
}

#[test]
fn several_rollouts_of_one_installation_share_writes_per_minute() {
    // Four rollouts of installation 1 and one of installation 2, at once,
    // for an hour; 30 writes a minute per installation.
    let cfg = PacingConfig {
        writes_per_minute: 30,
        ..cfg()
    };
    let rollouts = [(1, "a"), (1, "b"), (1, "c"), (1, "d"), (2, "e")];
    let tally = drive(cfg.clone(), &rollouts, s(3600.0));
    assert_paced(&tally, 30);
    eprintln!("several for an hour: {:?}", tally.requests);
    for (_, id) in rollouts {
        let n = tally.requests[id];
        assert!(n <= 300, "{id}: {n} requests");
    }
    assert_eq!(
        tally.last_sent, tally.last_desired,
        "every final state is shown"
    );
    // Waiting and terminal bodies go first: even with four rollouts
    // competing for one pace they wait at most a few write slots.
    assert!(
        tally.worst_urgent_delay <= cfg.min_update_interval + 8 * cfg.spacing(),
        "{:?}",
        tally.worst_urgent_delay
    );
    // And the minute-long case with several at once.
    let tally = drive(cfg, &rollouts, s(60.0));
    assert_paced(&tally, 30);
    for (_, id) in rollouts {
        assert!(tally.requests[id] <= 40, "{id}: {}", tally.requests[id]);
    }
}

// ---- end to end ------------------------------------------------------------

const INST: InstallationId = InstallationId(9);

fn fast_cfg() -> PacingConfig {
    PacingConfig {
        min_update_interval: Duration::from_millis(50),
        progress_interval: Duration::from_millis(200),
        writes_per_minute: 6000,
        retry_base: Duration::from_millis(20),
        retry_max: Duration::from_millis(100),
        edit_burst: DEFAULT_EDIT_BURST,
        edit_refill: Duration::from_millis(200),
    }
}

fn client(standin: &GitHubStandIn) -> Arc<dyn GitHubApi> {
    let mut cfg = GitHubClientConfig::new(
        standin.url(),
        TEST_APP_ID,
        Secret::new(TEST_APP_PRIVATE_KEY_PEM),
    );
    cfg.retry = RetryPolicy {
        max_attempts: 2,
        base_backoff: Duration::from_millis(2),
        max_backoff: Duration::from_millis(10),
        secondary_min: Duration::from_millis(10),
        max_wait: Duration::from_millis(20),
        request_timeout: Duration::from_secs(5),
    };
    Arc::new(GitHubClient::new(cfg).unwrap_or_else(|e| panic!("{e}")))
}

async fn standin() -> GitHubStandIn {
    let s = GitHubStandIn::start(StandInConfig::for_tests())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.add_pull_request("acme/app", 7, "alice", &"a".repeat(40), "f", "main", true);
    s
}

fn comment_key(rollout: &str) -> ReportKey {
    ReportKey {
        installation: INST,
        repo: RepoName::new("acme/app"),
        rollout: RolloutId::new(rollout),
        object: ReportObject::Comment { issue: 7 },
    }
}

fn check_key(rollout: &str) -> ReportKey {
    ReportKey {
        installation: INST,
        repo: RepoName::new("acme/app"),
        rollout: RolloutId::new(rollout),
        object: ReportObject::CheckRun {
            name: "convoy/rollout".into(),
            generation: 0,
        },
    }
}

fn comment(rollout: &str, text: &str) -> Desired {
    body(&format!("<!-- convoy:rollout:{rollout} -->\n{text}"))
}

fn check(summary: &str, conclusion: Option<CheckRunConclusion>) -> Desired {
    let mut run = NewCheckRun::new("convoy/rollout", "f".repeat(40));
    run.external_id = Some("r1".into());
    run.status = if conclusion.is_some() {
        CheckRunStatus::Completed
    } else {
        CheckRunStatus::InProgress
    };
    run.conclusion = conclusion;
    run.output = Some(CheckRunOutput {
        title: "convoy".into(),
        summary: summary.into(),
        text: None,
        annotations: vec![],
    });
    Desired::CheckRun(Box::new(run))
}

async fn idle(t: &Transport) {
    tokio::time::timeout(Duration::from_secs(20), t.wait_idle())
        .await
        .unwrap_or_else(|_| panic!("transport did not drain: {t:?}"));
}

#[tokio::test]
async fn a_body_the_gate_refuses_is_dropped_and_others_still_go() {
    // Several replicas: a replica that lost rollout r1 to another must not
    // send what it rendered before; its other rollouts are unaffected.
    let s = standin().await;
    let (t, task) = Transport::start(client(&s), Arc::new(MemoryLedger::new()), fast_cfg())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = asked.clone();
    t.set_gate(Arc::new(move |key: ReportKey| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move { key.rollout.as_str() != "r1" })
    }));
    t.desire(
        comment_key("r1"),
        comment("r1", "stale"),
        Importance::Terminal,
    );
    t.desire(
        comment_key("r2"),
        comment("r2", "fresh"),
        Importance::Terminal,
    );
    idle(&t).await;
    assert_eq!(t.pending(), 0, "the refused body is not kept pending");
    assert!(asked.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    let state = s.state();
    assert!(
        state
            .comments_on("acme/app", 7)
            .iter()
            .all(|c| { !c["body"].as_str().unwrap_or_default().contains("stale") })
    );
    assert!(
        state
            .comments_on("acme/app", 7)
            .iter()
            .any(|c| c["body"].as_str().unwrap_or_default().contains("fresh"))
    );
    t.stop();
    let _ = task.await;
}

#[tokio::test]
async fn end_to_end_coalesced_through_the_standin() {
    let s = standin().await;
    let (t, task) = Transport::start(client(&s), Arc::new(MemoryLedger::new()), fast_cfg())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    t.desire(comment_key("r1"), comment("r1", "v1"), Importance::Matters);
    t.desire(check_key("r1"), check("0/3", None), Importance::Matters);
    idle(&t).await;
    // Three quick updates: only the newest is shown, and at once (terminal).
    t.desire(
        comment_key("r1"),
        comment("r1", "v2"),
        Importance::CountsOnly,
    );
    t.desire(
        comment_key("r1"),
        comment("r1", "v3"),
        Importance::CountsOnly,
    );
    t.desire(
        comment_key("r1"),
        comment("r1", "done"),
        Importance::Terminal,
    );
    t.desire(
        check_key("r1"),
        check("3/3", Some(CheckRunConclusion::Success)),
        Importance::Terminal,
    );
    idle(&t).await;
    // The same again: nothing is sent.
    let before = s.state().requests.len();
    t.desire(
        comment_key("r1"),
        comment("r1", "done"),
        Importance::Terminal,
    );
    idle(&t).await;
    assert_eq!(s.state().requests.len(), before);

    let state = s.state();
    let comments = state.comments_on("acme/app", 7);
    assert_eq!(comments.len(), 1, "one comment per rollout");
    let id = comments[0]["id"].as_u64().unwrap_or_default();
    let history: Vec<String> = state.comments[&id]
        .iter()
        .map(|c| {
            c["body"]
                .as_str()
                .unwrap_or_default()
                .lines()
                .last()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(history, vec!["v1", "done"]);
    assert_eq!(t.object_id(&comment_key("r1")), Some(id));
    let run_id = t.object_id(&check_key("r1")).unwrap_or_default();
    let runs = &state.check_runs[&run_id];
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1]["conclusion"], "success");
    assert_eq!(state.check_runs.len(), 1);
    t.stop();
    let _ = task.await;
    s.assert_no_violations();
}

#[tokio::test]
async fn an_outage_delays_reporting_and_never_blocks_the_caller() {
    let s = standin().await;
    let (t, task) = Transport::start(client(&s), Arc::new(MemoryLedger::new()), fast_cfg())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    t.desire(comment_key("r2"), comment("r2", "v1"), Importance::Matters);
    idle(&t).await;
    s.inject(Fault::new(FaultKind::BadGateway, 1_000_000));
    let started = std::time::Instant::now();
    for i in 0..100 {
        t.desire(
            comment_key("r2"),
            comment("r2", &format!("{i}/100")),
            Importance::CountsOnly,
        );
    }
    t.desire(
        comment_key("r2"),
        comment("r2", "failed"),
        Importance::Terminal,
    );
    // Handing over is immediate even while GitHub is down. (Not a timing
    // target: a blocked call would take the whole outage, i.e. forever.)
    assert!(started.elapsed() < Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.pending(), 1, "still waiting for GitHub");
    s.clear_faults();
    idle(&t).await;
    let state = s.state();
    let c = state.comments_on("acme/app", 7);
    assert_eq!(c.len(), 1);
    assert!(
        c[0]["body"]
            .as_str()
            .unwrap_or_default()
            .ends_with("failed")
    );
    t.stop();
    let _ = task.await;
    s.assert_no_violations();
}

/// The store the server opens (its embedded migrations include 0002).
async fn sqlite(path: &std::path::Path) -> sqlx::SqlitePool {
    convoy::store::sqlite::SqliteStore::open(path)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .write_pool()
        .clone()
}

#[tokio::test]
async fn pending_updates_survive_a_restart_over_the_same_sqlite_ledger() {
    let s = standin().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let db = dir.path().join("convoy.db");

    // First life: the comment and check run are created.
    let pool = sqlite(&db).await;
    let (t, task) = Transport::start(
        client(&s),
        Arc::new(SqliteLedger::new(pool.clone())),
        fast_cfg(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    t.desire(
        comment_key("r3"),
        comment("r3", "running 1/2"),
        Importance::Matters,
    );
    t.desire(check_key("r3"), check("1/2", None), Importance::Matters);
    idle(&t).await;
    t.stop();
    let _ = task.await;
    pool.close().await;
    let requests_before = s.state().requests.len();

    // Second life: the caller re-derives the same bodies from stored state.
    let pool = sqlite(&db).await;
    let (t, task) = Transport::start(
        client(&s),
        Arc::new(SqliteLedger::new(pool.clone())),
        fast_cfg(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    t.desire(
        comment_key("r3"),
        comment("r3", "running 1/2"),
        Importance::Matters,
    );
    t.desire(check_key("r3"), check("1/2", None), Importance::Matters);
    idle(&t).await;
    assert_eq!(s.state().requests.len(), requests_before, "nothing re-sent");
    // Then the rollout finishes: the same objects are edited.
    t.desire(
        comment_key("r3"),
        comment("r3", "succeeded"),
        Importance::Terminal,
    );
    t.desire(
        check_key("r3"),
        check("2/2", Some(CheckRunConclusion::Success)),
        Importance::Terminal,
    );
    idle(&t).await;
    let state = s.state();
    assert_eq!(
        state.comments_on("acme/app", 7).len(),
        1,
        "no second comment"
    );
    assert_eq!(state.check_runs.len(), 1, "no second check run");
    assert_eq!(state.count_requests(&Method::POST, "/issues/7/comments"), 1);
    t.stop();
    let _ = task.await;
    s.assert_no_violations();
}

#[tokio::test]
async fn a_lost_ledger_entry_finds_the_comment_by_its_marker() {
    let s = standin().await;
    let (t, task) = Transport::start(client(&s), Arc::new(MemoryLedger::new()), fast_cfg())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    t.desire(comment_key("r4"), comment("r4", "v1"), Importance::Matters);
    idle(&t).await;
    t.stop();
    let _ = task.await;
    // A crash before the ledger was written: a fresh, empty ledger.
    let (t, task) = Transport::start(client(&s), Arc::new(MemoryLedger::new()), fast_cfg())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    t.desire(comment_key("r4"), comment("r4", "v2"), Importance::Terminal);
    idle(&t).await;
    let state = s.state();
    let c = state.comments_on("acme/app", 7);
    assert_eq!(c.len(), 1);
    assert!(c[0]["body"].as_str().unwrap_or_default().ends_with("v2"));
    t.stop();
    let _ = task.await;
    s.assert_no_violations();
}

/// Looking for its comment by the marker, convoy takes only a bot's: a
/// person's comment that quotes the marker is left alone.
#[tokio::test]
async fn a_person_s_comment_quoting_the_marker_is_not_taken_over() {
    let s = standin().await;
    let quoted = "quoting convoy: <!-- convoy:rollout:r5 -->";
    s.add_user_comment("acme/app", 7, "mallory", quoted);
    let (t, task) = Transport::start(client(&s), Arc::new(MemoryLedger::new()), fast_cfg())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    t.desire(comment_key("r5"), comment("r5", "v1"), Importance::Matters);
    idle(&t).await;
    let state = s.state();
    let c = state.comments_on("acme/app", 7);
    assert_eq!(c.len(), 2, "{c:#?}");
    assert_eq!(c[0]["body"], quoted);
    assert!(c[1]["body"].as_str().unwrap_or_default().ends_with("v1"));
    assert_eq!(c[1]["user"]["type"], "Bot");
    t.stop();
    let _ = task.await;
    s.assert_no_violations();
}

#[tokio::test]
async fn the_drift_issue_is_created_edited_and_closed_in_place() {
    let s = standin().await;
    let (t, task) = Transport::start(client(&s), Arc::new(MemoryLedger::new()), fast_cfg())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let k = ReportKey::repository(
        INST,
        RepoName::new("acme/app"),
        ReportObject::Issue {
            label: "convoy-drift".into(),
        },
    );
    let drift = |body: &str, open: bool| Desired::Issue {
        title: "convoy: drift detected".into(),
        body: body.into(),
        open,
    };
    // Nothing drifted and no issue exists: nothing is created.
    t.desire(k.clone(), drift("no drift", false), Importance::Matters);
    idle(&t).await;
    assert!(s.state().issues.is_empty());
    t.desire(k.clone(), drift("acme-eu: api", true), Importance::Matters);
    idle(&t).await;
    t.desire(
        k.clone(),
        drift("acme-eu: api, web", true),
        Importance::Matters,
    );
    idle(&t).await;
    t.desire(
        k.clone(),
        drift("no drift remains", false),
        Importance::Matters,
    );
    idle(&t).await;
    let state = s.state();
    assert_eq!(state.issues.len(), 1, "one issue, edited in place");
    let history: Vec<(String, String)> = state
        .issues
        .values()
        .next()
        .map(|v| {
            v.iter()
                .map(|i| {
                    (
                        i["body"].as_str().unwrap_or_default().to_owned(),
                        i["state"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        history,
        vec![
            ("acme-eu: api".to_owned(), "open".to_owned()),
            ("acme-eu: api, web".to_owned(), "open".to_owned()),
            ("no drift remains".to_owned(), "closed".to_owned()),
        ]
    );
    t.stop();
    let _ = task.await;
    s.assert_no_violations();
}
