//! The rules of SPEC 6.2–6.5 as one pure function of (rollout, event, now).
//!
//! Every entry point mutates the rollout in place and returns the effects
//! the runtime must carry out *after* persisting the new state. Stale
//! events (an old attempt's answer, a timer for a state long gone) are
//! ignored, so the runtime may deliver events late or twice.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::freeze::active_freeze;
use super::model::*;
use crate::domain::{EnvName, WaveName};
use crate::plan::model::{OnDrift, StepKey};

/// Retry backoff never exceeds this (SPEC 2: "capped at 5m").
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Status polls are never closer together than this, whatever
/// `poll_interval` says.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Accumulates effects, the most important change and which steps changed
/// during one transition.
struct Out {
    effects: Vec<Effect>,
    importance: Option<Importance>,
    /// Steps changed that no effect names (the event's own step).
    touched: Vec<StepKey>,
    /// Some change touched steps nobody named (cascades, resets, skips).
    all_changed: bool,
}

impl Out {
    fn new() -> Out {
        Out {
            effects: Vec::new(),
            importance: None,
            touched: Vec::new(),
            all_changed: false,
        }
    }

    fn mark(&mut self, importance: Importance) {
        self.importance = Some(self.importance.map_or(importance, |i| i.max(importance)));
    }

    fn push(&mut self, effect: Effect) {
        self.effects.push(effect);
    }

    fn finish(mut self) -> Transition {
        if let Some(importance) = self.importance {
            self.effects.push(Effect::Report { importance });
        }
        let changed = if self.all_changed {
            Changed::All
        } else {
            let mut keys: BTreeSet<StepKey> = self.touched.into_iter().collect();
            for e in &self.effects {
                match e {
                    Effect::RunPreflight { key, .. }
                    | Effect::CheckDependencies { key, .. }
                    | Effect::Deploy { key, .. }
                    | Effect::RecordAttempt { key, .. }
                    | Effect::DriftDetected { key, .. }
                    | Effect::ScheduleTimer {
                        timer: Timer::Retry { key, .. },
                        ..
                    } => {
                        keys.insert(key.clone());
                    }
                    _ => {}
                }
            }
            Changed::Steps(keys.into_iter().collect())
        };
        Transition {
            effects: self.effects,
            changed,
        }
    }
}

/// The result of one transition: what to do, and which steps to write.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// Carry these out, in order, after persisting the rollout.
    pub effects: Vec<Effect>,
    /// Steps whose stored form changed. The rollout's own fields and its
    /// waves' fields may change on any transition; write them every time.
    pub changed: Changed,
}

/// Which steps a transition changed, for a store that writes per step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changed {
    /// Possibly any step (commands that reset or skip, cascades, recovery).
    All,
    /// Only these (possibly none).
    Steps(Vec<StepKey>),
}

/// Delay before retry number `failed_attempts` (1 for the first retry):
/// `backoff × 2^(n-1)`, scaled by `0.75 + jitter / 2` (so `jitter = 0.5`
/// gives the nominal delay and the spread is ±25 %), capped at 5 minutes.
pub fn backoff_delay(backoff: Duration, failed_attempts: u32, jitter: f64) -> Duration {
    let exp = failed_attempts.saturating_sub(1).min(30);
    let nominal = backoff
        .checked_mul(1u32 << exp)
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.5
    };
    nominal.mul_f64(0.75 + jitter / 2.0).min(MAX_BACKOFF)
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(chrono(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn key_str(k: &StepKey) -> String {
    format!("{}/{}", k.environment, k.service)
}

// ---------------------------------------------------------------------------
// Entry points

/// Applies an event no human asked for and returns the effects. Never
/// fails: an event that does not fit the current state is ignored.
pub fn handle(r: &mut Rollout, event: Event, ctx: &Ctx) -> Vec<Effect> {
    apply(r, event, ctx).effects
}

/// [`handle`], also saying which steps changed (for per-step storage).
pub fn apply(r: &mut Rollout, event: Event, ctx: &Ctx) -> Transition {
    r.ensure_index();
    let mut out = Out::new();
    match &event {
        Event::Preflight { key, .. }
        | Event::DependencyHealth { key, .. }
        | Event::DeployAccepted { key, .. }
        | Event::DeployFailed { key, .. }
        | Event::DeployNotSent { key, .. }
        | Event::StepTimedOut { key, .. }
        | Event::Status { key, .. }
        | Event::StatusUnavailable { key, .. } => out.touched.push(key.clone()),
        Event::BakeHealth { results, .. } => {
            out.touched.extend(results.iter().map(|(k, _)| k.clone()))
        }
        Event::Recover | Event::RolledBack { .. } => out.all_changed = true,
        _ => {}
    }
    let before = r.state;
    match event {
        Event::Start => {
            if r.state == RolloutState::Queued {
                r.state = RolloutState::Running;
                r.started_at = Some(ctx.now);
                out.mark(Importance::Matters);
                if r.step_count() == 0 {
                    finish(r, RolloutState::Noop, ctx, &mut out);
                }
            }
        }
        Event::Recover => recover(r, ctx, &mut out),
        Event::Tick => {}
        Event::Preflight {
            key,
            attempt,
            result,
        } => on_preflight(r, &key, attempt, result, ctx, &mut out),
        Event::DependencyHealth {
            key,
            attempt,
            results,
        } => on_dependency_health(r, &key, attempt, results, ctx, &mut out),
        Event::DeployAccepted { key, attempt } => {
            if let Some((w, i)) = current_step(r, &key, attempt, &[StepState::Deploying]) {
                begin_verify(r, w, i, ctx, &mut out);
            }
        }
        Event::DeployFailed {
            key,
            attempt,
            kind,
            error,
        } => {
            if let Some((w, i)) = current_step(r, &key, attempt, &[StepState::Deploying]) {
                attempt_failed(r, w, i, kind, format!("deploy: {error}"), ctx, &mut out);
            }
        }
        Event::DeployNotSent { key, attempt } => {
            if let Some((w, i)) = current_step(r, &key, attempt, &[StepState::Deploying]) {
                if r.state.is_terminal() {
                    // As a step still in its preflight at the abort: it
                    // deployed nothing, so no attempt is counted or kept.
                    let s = &mut r.waves[w].steps[i];
                    undo_preflight(s, "not started: the rollout was aborted");
                    s.deploy_deadline = None;
                    out.mark(Importance::Matters);
                } else {
                    let error = "deploy: not sent".to_owned();
                    attempt_failed(r, w, i, FailureKind::Transient, error, ctx, &mut out);
                }
            }
        }
        Event::StepTimedOut { key, attempt } => {
            if let Some((w, i)) = current_step(
                r,
                &key,
                attempt,
                &[StepState::Preflight, StepState::Deploying],
            ) {
                let what = match r.waves[w].steps[i].state {
                    StepState::Preflight => "preflight timed out".to_string(),
                    _ => format!(
                        "deploy not accepted within {}",
                        crate::duration::format_duration(r.policy.deploy_timeout)
                    ),
                };
                attempt_failed(r, w, i, FailureKind::Transient, what, ctx, &mut out);
            }
        }
        Event::Status {
            key,
            attempt,
            report,
        } => {
            if let Some((w, i)) = current_step(r, &key, attempt, &[StepState::Verifying]) {
                on_status(r, w, i, Ok(report), ctx, &mut out);
            }
        }
        Event::StatusUnavailable {
            key,
            attempt,
            error,
        } => {
            if let Some((w, i)) = current_step(r, &key, attempt, &[StepState::Verifying]) {
                on_status(r, w, i, Err(error), ctx, &mut out);
            }
        }
        Event::TimerFired { timer } => on_timer(r, timer, ctx, &mut out),
        Event::BakeHealth {
            wave,
            round,
            results,
        } => on_bake_health(r, wave, round, results, ctx, &mut out),
        Event::Superseded { by } => {
            if !r.state.is_terminal() && r.superseded_by.is_none() {
                r.superseded_by = Some(by);
                out.mark(Importance::Matters);
                if r.state == RolloutState::Queued {
                    finish(r, RolloutState::Superseded, ctx, &mut out);
                }
            }
        }
        Event::RolledBack { environments } => {
            let envs: HashSet<&EnvName> = environments.iter().collect();
            for wave in &mut r.waves {
                for s in &mut wave.steps {
                    if envs.contains(&s.environment)
                        && s.attempts > 0
                        && s.state.is_terminal()
                        && s.state != StepState::Skipped
                    {
                        s.state = StepState::RolledBack;
                        out.mark(Importance::Matters);
                    } else if envs.contains(&s.environment) && s.state == StepState::Preflight {
                        // Nothing deployed yet; its preflight's answer must
                        // not start a deploy over the pin.
                        undo_preflight(s, "skipped: the environment was rolled back");
                        s.state = StepState::Skipped;
                        s.finished_at = Some(ctx.now);
                        out.mark(Importance::Matters);
                    } else if envs.contains(&s.environment) && s.state == StepState::Pending {
                        // The rollback pins the environment until the next
                        // merge (SPEC 6.8): a step not yet run there, or
                        // waiting to retry, must not deploy over the pin.
                        s.state = StepState::Skipped;
                        s.retry_at = None;
                        s.note = Some("skipped: the environment was rolled back".into());
                        s.finished_at = Some(ctx.now);
                        out.mark(Importance::Matters);
                    }
                }
            }
        }
    }
    advance(r, ctx, &mut out);
    settle_state(r, before, &mut out);
    out.finish()
}

/// Applies a human's command after checking it makes sense now.
pub fn command(r: &mut Rollout, cmd: Command, ctx: &Ctx) -> Result<Vec<Effect>, CommandError> {
    apply_command(r, cmd, ctx).map(|t| t.effects)
}

/// [`command`], also saying which steps changed (for per-step storage).
pub fn apply_command(r: &mut Rollout, cmd: Command, ctx: &Ctx) -> Result<Transition, CommandError> {
    validate(r, &cmd)?;
    r.ensure_index();
    let mut out = Out::new();
    if matches!(
        cmd,
        Command::Retry { .. } | Command::Skip { .. } | Command::Abort { .. }
    ) {
        out.all_changed = true;
    }
    let before = r.state;
    match cmd {
        Command::Approve { wave, by } => {
            let w = waiting_for_approval(r).ok_or_else(|| {
                CommandError(format!(
                    "wave `{}` is not waiting for approval",
                    wave.as_ref().map(|w| w.as_str()).unwrap_or("?")
                ))
            })?;
            r.waves[w].approved_by = Some(by);
            out.mark(Importance::Matters);
        }
        Command::Pause { by } => {
            r.paused_by = Some(by);
        }
        Command::Resume { .. } => {
            r.paused_by = None;
            out.mark(Importance::Matters);
        }
        Command::Abort { by } => {
            r.aborted_by = Some(by);
            // A step still in its preflight has deployed nothing: it does
            // not start, and the preflight's answer, when it comes, finds
            // no step waiting for it. Deploys already sent go on to their
            // end (the runtime waits for them).
            for wave in &mut r.waves {
                for s in &mut wave.steps {
                    if s.state == StepState::Preflight {
                        undo_preflight(s, "not started: the rollout was aborted");
                    }
                }
            }
            finish(r, RolloutState::Aborted, ctx, &mut out);
        }
        Command::Retry { environments, .. } => {
            let envs: Option<HashSet<EnvName>> =
                (!environments.is_empty()).then(|| environments.into_iter().collect());
            let mut reset: HashSet<StepKey> = HashSet::new();
            for wave in &r.waves {
                for s in &wave.steps {
                    let named = envs.as_ref().is_none_or(|e| e.contains(&s.environment));
                    if s.state == StepState::Failed && named {
                        reset.insert(s.key());
                    }
                }
            }
            // Steps that failed only because one of these failed come back
            // too, transitively.
            loop {
                let more: Vec<StepKey> = r
                    .steps()
                    .filter(|s| s.state == StepState::Failed && !reset.contains(&s.key()))
                    .filter(|s| s.blocked_by.as_ref().is_some_and(|b| reset.contains(b)))
                    .map(|s| s.key())
                    .collect();
                if more.is_empty() {
                    break;
                }
                reset.extend(more);
            }
            reset_steps(r, &reset, ctx);
            out.mark(Importance::Matters);
        }
        Command::Skip { environments, by } => {
            let envs: HashSet<EnvName> = environments.into_iter().collect();
            let mut skipped = HashSet::new();
            for wave in &mut r.waves {
                for s in &mut wave.steps {
                    if envs.contains(&s.environment)
                        && matches!(s.state, StepState::Pending | StepState::Failed)
                    {
                        s.state = StepState::Skipped;
                        s.retry_at = None;
                        s.note = Some(format!("skipped by {by}"));
                        s.finished_at = Some(ctx.now);
                        skipped.insert(s.key());
                    }
                }
            }
            // Steps that failed only because a now-skipped step failed may
            // run after all (a skipped step satisfies its dependents).
            let unblocked: HashSet<StepKey> = r
                .steps()
                .filter(|s| s.state == StepState::Failed)
                .filter(|s| s.blocked_by.as_ref().is_some_and(|b| skipped.contains(b)))
                .map(|s| s.key())
                .collect();
            reset_steps(r, &unblocked, ctx);
            reopen_if_needed(r, ctx);
            out.mark(Importance::Matters);
        }
        Command::Freeze { until, reason, by } => {
            r.emergency_freeze = Some(EmergencyFreeze { by, reason, until });
            if let Some(at) = until {
                out.push(Effect::ScheduleTimer {
                    at,
                    timer: Timer::EmergencyFreezeEnd,
                });
            }
        }
        Command::Unfreeze { .. } => {
            r.emergency_freeze = None;
            out.mark(Importance::Matters);
        }
    }
    advance(r, ctx, &mut out);
    settle_state(r, before, &mut out);
    Ok(out.finish())
}

/// Whether `cmd` makes sense for `r` now; the error is a reply for humans.
pub fn validate(r: &Rollout, cmd: &Command) -> Result<(), CommandError> {
    let fail = |msg: String| Err(CommandError(msg));
    let ended = |what: &str| {
        Err(CommandError(format!(
            "the rollout is {}; nothing to {what}",
            r.state.as_str()
        )))
    };
    match cmd {
        Command::Approve { wave, .. } => {
            if r.state.is_terminal() {
                return ended("approve");
            }
            if let Some(name) = wave
                && !r.waves.iter().any(|w| &w.name == name)
            {
                return fail(format!(
                    "unknown wave `{name}`{}",
                    crate::suggest::did_you_mean(
                        name.as_str(),
                        r.waves.iter().map(|w| w.name.as_str())
                    )
                ));
            }
            match (waiting_for_approval(r), wave) {
                (None, Some(name)) => fail(format!("wave `{name}` is not waiting for approval")),
                (None, None) => fail("no wave is waiting for approval".into()),
                (Some(w), Some(name)) if &r.waves[w].name != name => fail(format!(
                    "wave `{name}` is not waiting for approval; wave `{}` is",
                    r.waves[w].name
                )),
                _ => Ok(()),
            }
        }
        Command::Pause { .. } => {
            if r.state.is_terminal() {
                return ended("pause");
            }
            match &r.paused_by {
                Some(by) => fail(format!("already paused by {by}")),
                None => Ok(()),
            }
        }
        Command::Resume { .. } => {
            if r.state.is_terminal() {
                return ended("resume");
            }
            if r.paused_by.is_none() {
                if r.halt.is_some() {
                    return fail(
                        "the rollout is halted, not paused: use retry or skip to go on".into(),
                    );
                }
                return fail("the rollout is not paused".into());
            }
            Ok(())
        }
        Command::Abort { .. } => {
            if r.state.is_terminal() {
                return fail(format!("the rollout already ended: {}", r.state.as_str()));
            }
            Ok(())
        }
        Command::Retry { environments, .. } => {
            if matches!(
                r.state,
                RolloutState::Aborted | RolloutState::Superseded | RolloutState::Noop
            ) {
                return ended("retry");
            }
            check_envs(r, environments)?;
            if environments.is_empty() {
                if !r.steps().any(|s| s.state == StepState::Failed) {
                    return fail("nothing to retry: no failed steps".into());
                }
            } else {
                for env in environments {
                    if !r
                        .steps()
                        .any(|s| &s.environment == env && s.state == StepState::Failed)
                    {
                        return fail(format!("nothing to retry in `{env}`: no failed steps"));
                    }
                }
            }
            Ok(())
        }
        Command::Skip { environments, .. } => {
            if matches!(
                r.state,
                RolloutState::Aborted | RolloutState::Superseded | RolloutState::Noop
            ) {
                return ended("skip");
            }
            if environments.is_empty() {
                return fail("name the environments to skip".into());
            }
            check_envs(r, environments)?;
            for env in environments {
                let steps: Vec<&StepRun> = r.steps().filter(|s| &s.environment == env).collect();
                if let Some(s) = steps.iter().find(|s| s.is_in_flight()) {
                    return fail(format!(
                        "`{env}` has a step in flight ({} is {}); skip it once that ends",
                        s.service,
                        s.state.as_str()
                    ));
                }
                if !steps
                    .iter()
                    .any(|s| matches!(s.state, StepState::Pending | StepState::Failed))
                {
                    return fail(format!("nothing to skip in `{env}`: every step has ended"));
                }
            }
            Ok(())
        }
        Command::Freeze { .. } => {
            if r.state.is_terminal() {
                return ended("freeze");
            }
            Ok(())
        }
        Command::Unfreeze { .. } => {
            if r.emergency_freeze.is_none() {
                return fail("the rollout is not frozen".into());
            }
            Ok(())
        }
    }
}

fn check_envs(r: &Rollout, envs: &[EnvName]) -> Result<(), CommandError> {
    let known = r.environments();
    for env in envs {
        if !known.contains(&env) {
            return Err(CommandError(format!(
                "unknown environment `{env}`{}",
                crate::suggest::did_you_mean(env.as_str(), known.iter().map(|e| e.as_str()))
            )));
        }
    }
    Ok(())
}

/// The environments a rollback should cover (SPEC 6.8): the named ones,
/// each of which this rollout must have touched, or every touched one.
pub fn rollback_targets(r: &Rollout, named: &[EnvName]) -> Result<Vec<EnvName>, CommandError> {
    let touched = r.touched_environments();
    if named.is_empty() {
        if touched.is_empty() {
            return Err(CommandError(
                "nothing to roll back: no environment was touched yet".into(),
            ));
        }
        return Ok(touched);
    }
    check_envs(r, named)?;
    for env in named {
        if !touched.contains(env) {
            return Err(CommandError(format!(
                "nothing to roll back in `{env}`: this rollout never deployed there"
            )));
        }
    }
    Ok(named.to_vec())
}

/// The index of the wave waiting for approval, if one is.
pub fn waiting_for_approval(r: &Rollout) -> Option<usize> {
    if r.state.is_terminal() {
        return None;
    }
    let w = r.waves.get(r.current_wave)?;
    (w.phase == WavePhase::Pending && w.approval && w.approved_by.is_none())
        .then_some(r.current_wave)
}

// ---------------------------------------------------------------------------
// Step events

/// The step of `key` if its current attempt is `attempt` and it is in one of
/// `states`.
fn current_step(
    r: &Rollout,
    key: &StepKey,
    attempt: u32,
    states: &[StepState],
) -> Option<(usize, usize)> {
    let (w, i) = r.find(key)?;
    let s = &r.waves[w].steps[i];
    (s.attempts == attempt && states.contains(&s.state)).then_some((w, i))
}

fn on_preflight(
    r: &mut Rollout,
    key: &StepKey,
    attempt: u32,
    result: PreflightResult,
    ctx: &Ctx,
    out: &mut Out,
) {
    let Some((w, i)) = current_step(r, key, attempt, &[StepState::Preflight]) else {
        return;
    };
    match result {
        PreflightResult::Failed { reason, kind } => {
            attempt_failed(r, w, i, kind, format!("preflight: {reason}"), ctx, out);
        }
        PreflightResult::Passed {
            running,
            baseline,
            since,
        } => {
            let target = r.waves[w].steps[i].version.as_str().to_owned();
            if running.as_deref() == Some(target.as_str()) {
                // Already there (a repeat after a crash, or someone else
                // deployed it): only verify.
                begin_verify(r, w, i, ctx, out);
                return;
            }
            if let (Some(found), Some(expected)) = (&running, &baseline)
                && found != expected
            {
                let drift = drift_message(expected, found, since);
                out.push(Effect::DriftDetected {
                    key: key.clone(),
                    expected: expected.clone(),
                    found: found.clone(),
                    action: r.policy.on_drift,
                });
                match r.policy.on_drift {
                    OnDrift::Halt => {
                        out.push(Effect::RecordAttempt {
                            key: key.clone(),
                            version: r.waves[w].steps[i].version.clone(),
                            attempt,
                            succeeded: false,
                            error: Some(drift.clone()),
                        });
                        r.waves[w].steps[i].held_for_drift = true;
                        fail_step(r, w, i, drift, ctx, out);
                        return;
                    }
                    OnDrift::Skip => {
                        let s = &mut r.waves[w].steps[i];
                        s.state = StepState::Skipped;
                        s.note = Some(format!("skipped: {drift}"));
                        s.finished_at = Some(ctx.now);
                        out.mark(Importance::Matters);
                        return;
                    }
                    OnDrift::Overwrite => {
                        r.waves[w].steps[i].note = Some(format!("overwrote drift: {drift}"));
                    }
                }
            }
            begin_deploy(r, w, i, ctx, out);
        }
    }
}

/// SPEC 6.6's halt message, with when the change outside convoy began.
pub fn drift_message(
    expected: &str,
    found: &str,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> String {
    match since {
        Some(t) => format!(
            "drifted: expected {expected}, found {found} (changed outside convoy since {})",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        None => format!("drifted: expected {expected}, found {found}"),
    }
}

/// The steps that `(w, i)` waits for and this rollout deployed: their
/// health is checked before the step starts (SPEC 6.3). Skipped ones were
/// not deployed by this rollout and have nothing to verify.
fn dependencies_to_check(r: &Rollout, w: usize, i: usize) -> Vec<StepKey> {
    r.waves[w].steps[i]
        .waits_for
        .iter()
        .filter(|k| r.step(k).is_some_and(|d| d.state == StepState::Succeeded))
        .cloned()
        .collect()
}

/// The effect that begins the preflight of the step at `(w, i)`, whose
/// attempt was already counted.
fn preflight_effect(r: &Rollout, w: usize, i: usize) -> Effect {
    let s = &r.waves[w].steps[i];
    let dependencies = dependencies_to_check(r, w, i);
    if dependencies.is_empty() {
        Effect::RunPreflight {
            key: s.key(),
            attempt: s.attempts,
            version: s.version.clone(),
        }
    } else {
        Effect::CheckDependencies {
            key: s.key(),
            attempt: s.attempts,
            dependencies,
        }
    }
}

/// Judges the health of a step's dependencies: each must still be healthy
/// at the version this rollout deployed, else the attempt fails preflight
/// (transient: a dependency may recover; retried per policy).
fn on_dependency_health(
    r: &mut Rollout,
    key: &StepKey,
    attempt: u32,
    results: Vec<(StepKey, HealthReport)>,
    ctx: &Ctx,
    out: &mut Out,
) {
    let Some((w, i)) = current_step(r, key, attempt, &[StepState::Preflight]) else {
        return;
    };
    let mut problems = Vec::new();
    for (dep, report) in results {
        // Only what this rollout deployed and still stands counts; a step
        // rolled back meanwhile is not this step's business here.
        let Some(d) = r.step(&dep).filter(|d| d.state == StepState::Succeeded) else {
            continue;
        };
        let detail = report
            .message
            .as_deref()
            .filter(|m| !m.is_empty())
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        if !report.healthy {
            problems.push(format!("dependency {} is unhealthy{detail}", key_str(&dep)));
        } else if report.version.as_deref() != Some(d.version.as_str()) {
            problems.push(format!(
                "dependency {} runs {}, not {}",
                key_str(&dep),
                report.version.as_deref().map(short).unwrap_or("nothing"),
                short(d.version.as_str())
            ));
        }
    }
    if problems.is_empty() {
        let effect = preflight_effect_after_dependencies(r, w, i);
        out.push(effect);
        return;
    }
    attempt_failed(
        r,
        w,
        i,
        FailureKind::Transient,
        format!("preflight: {}", problems.join("; ")),
        ctx,
        out,
    );
}

/// The step's own preflight, once its dependencies were found healthy.
fn preflight_effect_after_dependencies(r: &Rollout, w: usize, i: usize) -> Effect {
    let s = &r.waves[w].steps[i];
    Effect::RunPreflight {
        key: s.key(),
        attempt: s.attempts,
        version: s.version.clone(),
    }
}

fn begin_deploy(r: &mut Rollout, w: usize, i: usize, ctx: &Ctx, out: &mut Out) {
    let deadline = add(ctx.now, r.policy.deploy_timeout);
    let s = &mut r.waves[w].steps[i];
    s.state = StepState::Deploying;
    s.deploy_deadline = Some(deadline);
    s.recovering = false;
    out.push(Effect::Deploy {
        key: s.key(),
        attempt: s.attempts,
        version: s.version.clone(),
        deadline,
    });
    out.mark(Importance::CountsOnly);
}

fn begin_verify(r: &mut Rollout, w: usize, i: usize, ctx: &Ctx, out: &mut Out) {
    let deadline = add(ctx.now, r.policy.verify_timeout);
    let s = &mut r.waves[w].steps[i];
    s.state = StepState::Verifying;
    s.verify_deadline = Some(deadline);
    s.deploy_deadline = None;
    // Agents that finish at once should not wait a poll interval.
    out.push(Effect::PollStatus {
        key: s.key(),
        attempt: s.attempts,
    });
    out.mark(Importance::CountsOnly);
}

fn on_status(
    r: &mut Rollout,
    w: usize,
    i: usize,
    report: Result<HealthReport, String>,
    ctx: &Ctx,
    out: &mut Out,
) {
    // A zero interval would poll the agent in a tight loop.
    let poll_interval = r.policy.poll_interval.max(MIN_POLL_INTERVAL);
    let verify_timeout = r.policy.verify_timeout;
    let s = &r.waves[w].steps[i];
    let at_target = match &report {
        Ok(h) => h.healthy && h.version.as_deref() == Some(s.version.as_str()),
        Err(_) => false,
    };
    if at_target {
        succeed_step(r, w, i, ctx, out);
        return;
    }
    if s.recovering && !r.state.is_terminal() {
        // Re-verified after a restart and not at the target: deploy again
        // (drivers treat a repeated deploy as a no-op, so this is safe).
        // Not after an abort, which starts nothing new: the deploy that
        // was in flight is waited for until its deadlines (the time it had
        // to be accepted, then to verify) have passed.
        begin_deploy(r, w, i, ctx, out);
        return;
    }
    let deadline = s.verify_deadline.unwrap_or(ctx.now);
    if ctx.now >= deadline {
        let last = match report {
            Ok(h) => format!(
                "version {}, {}{}",
                h.version.as_deref().unwrap_or("none"),
                if h.healthy { "healthy" } else { "unhealthy" },
                h.message
                    .filter(|m| !m.is_empty())
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
            Err(e) => format!("status unavailable: {e}"),
        };
        let error = format!(
            "not at {} and healthy within {} (last status: {last})",
            short(s.version.as_str()),
            crate::duration::format_duration(verify_timeout)
        );
        attempt_failed(r, w, i, FailureKind::Transient, error, ctx, out);
        return;
    }
    let at = add(ctx.now, poll_interval).min(deadline);
    out.push(Effect::ScheduleTimer {
        at,
        timer: Timer::Poll {
            key: s.key(),
            attempt: s.attempts,
        },
    });
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

fn succeed_step(r: &mut Rollout, w: usize, i: usize, ctx: &Ctx, out: &mut Out) {
    let s = &mut r.waves[w].steps[i];
    s.state = StepState::Succeeded;
    s.finished_at = Some(ctx.now);
    s.error = None;
    s.recovering = false;
    s.verify_deadline = None;
    out.push(Effect::RecordAttempt {
        key: s.key(),
        version: s.version.clone(),
        attempt: s.attempts,
        succeeded: true,
        error: None,
    });
    out.mark(Importance::CountsOnly);
}

/// One attempt failed: retry a transient failure while retries remain,
/// else fail the step.
fn attempt_failed(
    r: &mut Rollout,
    w: usize,
    i: usize,
    kind: FailureKind,
    error: String,
    ctx: &Ctx,
    out: &mut Out,
) {
    let retries = r.policy.retries;
    let backoff = r.policy.backoff;
    let s = &mut r.waves[w].steps[i];
    out.push(Effect::RecordAttempt {
        key: s.key(),
        version: s.version.clone(),
        attempt: s.attempts,
        succeeded: false,
        error: Some(error.clone()),
    });
    s.recovering = false;
    s.deploy_deadline = None;
    s.verify_deadline = None;
    // After an abort nothing new starts, retries included.
    let may_retry = !r.state.is_terminal();
    let s = &mut r.waves[w].steps[i];
    if may_retry && kind == FailureKind::Transient && s.run_attempts <= retries {
        let at = add(ctx.now, backoff_delay(backoff, s.run_attempts, ctx.jitter));
        s.state = StepState::Pending;
        s.retry_at = Some(at);
        s.error = Some(error);
        out.push(Effect::ScheduleTimer {
            at,
            timer: Timer::Retry {
                key: s.key(),
                attempt: s.attempts + 1,
            },
        });
        out.mark(Importance::CountsOnly);
    } else {
        fail_step(r, w, i, error, ctx, out);
    }
}

/// Marks a step failed, fails the steps that can now never start, and halts
/// the rollout when the wave is over its failure budget.
fn fail_step(r: &mut Rollout, w: usize, i: usize, error: String, ctx: &Ctx, out: &mut Out) {
    let s = &mut r.waves[w].steps[i];
    s.state = StepState::Failed;
    s.error = Some(error);
    s.retry_at = None;
    s.finished_at = Some(ctx.now);
    let key = s.key();
    let held = s.held_for_drift;
    out.mark(Importance::Matters);
    if cascade_failure(r, key, held, ctx) {
        out.all_changed = true;
    }
    check_budgets(r, ctx, out);
}

/// Fails the pending steps that wait (transitively) for `failed`; whether
/// any did. They are held for drift when `failed` is.
fn cascade_failure(r: &mut Rollout, failed: StepKey, held: bool, ctx: &Ctx) -> bool {
    let mut any = false;
    let mut queue = vec![failed];
    while let Some(dep) = queue.pop() {
        for wave in &mut r.waves {
            for s in &mut wave.steps {
                if s.state == StepState::Pending
                    && s.retry_at.is_none()
                    && s.waits_for.contains(&dep)
                {
                    s.state = StepState::Failed;
                    s.error = Some(format!("not started: {} failed", key_str(&dep)));
                    s.blocked_by = Some(dep.clone());
                    s.held_for_drift = held;
                    s.finished_at = Some(ctx.now);
                    queue.push(s.key());
                    any = true;
                }
            }
        }
    }
    any
}

/// Halts on the first started wave whose failures exceed its budget.
fn check_budgets(r: &mut Rollout, ctx: &Ctx, out: &mut Out) {
    if r.state.is_terminal() {
        return;
    }
    if let Some(halt) = &mut r.halt {
        // Steps in flight at the halt may fail after it: the reason keeps
        // counting them, so it says how far over the budget the wave is.
        if let Some(wave) = r.waves.iter().find(|w| w.name == halt.wave) {
            let failed = wave.failed_steps();
            if failed != halt.failed {
                halt.failed = failed;
                out.mark(Importance::Matters);
            }
        }
        return;
    }
    if let Some(wave) = r
        .waves
        .iter()
        .find(|w| w.phase != WavePhase::Pending && w.over_budget())
    {
        r.halt = Some(Halt {
            wave: wave.name.clone(),
            at: ctx.now,
            failed: wave.failed_steps(),
            allowed: wave.allowed_failures(),
        });
        out.mark(Importance::Waiting);
    }
}

fn reset_steps(r: &mut Rollout, keys: &HashSet<StepKey>, _ctx: &Ctx) {
    if keys.is_empty() {
        return;
    }
    r.invalidate_index();
    for (w, wave) in r.waves.iter_mut().enumerate() {
        let mut touched = false;
        for s in &mut wave.steps {
            if keys.contains(&s.key()) {
                s.state = StepState::Pending;
                s.run_attempts = 0;
                s.error = None;
                s.blocked_by = None;
                s.held_for_drift = false;
                s.retry_at = None;
                s.finished_at = None;
                touched = true;
            }
        }
        if touched {
            if matches!(wave.phase, WavePhase::Baking | WavePhase::Done) {
                wave.phase = WavePhase::Running;
                wave.bake_until = None;
                wave.finished_at = None;
            }
            r.current_wave = r.current_wave.min(w);
        }
    }
    if r.halt.is_some()
        && !r
            .waves
            .iter()
            .any(|w| w.phase != WavePhase::Pending && w.over_budget())
    {
        r.halt = None;
    }
    r.auto_rollback_done = false;
    reopen_if_needed(r, _ctx);
}

/// A `failed` rollout that got work back (retry, skip) runs again.
fn reopen_if_needed(r: &mut Rollout, _ctx: &Ctx) {
    if r.halt.is_some()
        && !r
            .waves
            .iter()
            .any(|w| w.phase != WavePhase::Pending && w.over_budget())
    {
        r.halt = None;
    }
    if r.state == RolloutState::Failed && r.steps().any(|s| !s.state.is_terminal()) {
        r.state = RolloutState::Running;
        r.finished_at = None;
    }
}

// ---------------------------------------------------------------------------
// Timers, bake, recovery

fn on_timer(r: &mut Rollout, timer: Timer, ctx: &Ctx, out: &mut Out) {
    match timer {
        // A due retry starts in `advance` (unless something holds it).
        Timer::Retry { .. } | Timer::FreezeEnd => {}
        Timer::Poll { key, attempt } => {
            if let Some((w, i)) = current_step(r, &key, attempt, &[StepState::Verifying]) {
                out.push(Effect::PollStatus {
                    key: r.waves[w].steps[i].key(),
                    attempt,
                });
            }
        }
        Timer::Bake { wave, round } => {
            // A timer left over from an earlier bake of the same wave (one
            // that a halt cut short) fires before its round is due: ignore.
            if let Some(wr) = r.waves.get(wave)
                && wr.phase == WavePhase::Baking
                && wr.bake_round == round
                && ctx.now >= bake_round_at(wr, round)
            {
                out.push(Effect::CheckHealth {
                    wave,
                    round,
                    keys: bake_keys(wr),
                });
            }
        }
        Timer::EmergencyFreezeEnd => {
            if let Some(f) = &r.emergency_freeze
                && f.until.is_some_and(|u| u <= ctx.now)
            {
                r.emergency_freeze = None;
                out.mark(Importance::Matters);
            }
        }
    }
}

fn bake_keys(w: &WaveRun) -> Vec<StepKey> {
    w.steps
        .iter()
        .filter(|s| s.state == StepState::Succeeded)
        .map(|s| s.key())
        .collect()
}

/// Health is checked this many times during a bake, evenly spread, the last
/// at its end: often enough to catch a service that dies, rarely enough not
/// to hammer a thousand agents.
pub fn bake_rounds(bake: Duration) -> u32 {
    (bake.as_secs() / 30).clamp(1, 4) as u32
}

fn bake_round_at(w: &WaveRun, round: u32) -> DateTime<Utc> {
    let until = w.bake_until.unwrap_or(DateTime::<Utc>::MIN_UTC);
    let n = bake_rounds(w.bake);
    // Checked: a bake from a document stored before durations had a limit
    // may reach past the calendar's start.
    let start = until
        .checked_sub_signed(chrono(w.bake))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    add(start, w.bake.mul_f64(f64::from(round) / f64::from(n)))
}

fn on_bake_health(
    r: &mut Rollout,
    wave: usize,
    round: u32,
    results: Vec<(StepKey, HealthReport)>,
    ctx: &Ctx,
    out: &mut Out,
) {
    let Some(wr) = r.waves.get(wave) else {
        return;
    };
    if wr.phase != WavePhase::Baking || wr.bake_round != round {
        return;
    }
    for (key, report) in results {
        let Some(i) = r.waves[wave]
            .steps
            .iter()
            .position(|s| s.environment == key.environment && s.service == key.service)
        else {
            continue;
        };
        let s = &r.waves[wave].steps[i];
        if s.state != StepState::Succeeded {
            continue;
        }
        let wrong_version = report.version.as_deref() != Some(s.version.as_str());
        if !report.healthy || wrong_version {
            let what = if !report.healthy {
                "unhealthy during bake".to_string()
            } else {
                format!(
                    "version changed during bake to {}",
                    report.version.as_deref().unwrap_or("none")
                )
            };
            let msg = match report.message.filter(|m| !m.is_empty()) {
                Some(m) => format!("{what}: {m}"),
                None => what,
            };
            fail_step(r, wave, i, msg, ctx, out);
        }
    }
    let wr = &mut r.waves[wave];
    if wr.phase != WavePhase::Baking {
        return;
    }
    if wr.over_budget() {
        // Halted: no more rounds. Once a retry or skip brings the wave back
        // inside its budget, it bakes anew from the start.
        wr.phase = WavePhase::Running;
        wr.bake_until = None;
        return;
    }
    if round >= bake_rounds(wr.bake) {
        wr.phase = WavePhase::Done;
        wr.finished_at = Some(ctx.now);
        out.mark(Importance::Matters);
    } else {
        wr.bake_round += 1;
        let at = bake_round_at(wr, wr.bake_round);
        out.push(Effect::ScheduleTimer {
            at,
            timer: Timer::Bake {
                wave,
                round: wr.bake_round,
            },
        });
    }
}

fn recover(r: &mut Rollout, ctx: &Ctx, out: &mut Out) {
    if r.state.is_terminal() && !r.draining() {
        return;
    }
    let verify_timeout = r.policy.verify_timeout;
    // A preflight cut short starts again from its dependency check.
    let mut preflights = Vec::new();
    for (w, wave) in r.waves.iter().enumerate() {
        for (i, s) in wave.steps.iter().enumerate() {
            if s.state == StepState::Preflight {
                preflights.push(preflight_effect(r, w, i));
            }
        }
    }
    out.effects.extend(preflights);
    for wave in &mut r.waves {
        for s in &mut wave.steps {
            match s.state {
                StepState::Preflight => {}
                StepState::Deploying | StepState::Verifying => {
                    if s.state == StepState::Deploying {
                        s.recovering = true;
                        s.state = StepState::Verifying;
                        // The deploy may still be on its way: it keeps the
                        // time it had to be accepted, then the time to
                        // verify (what an aborted rollout waits for).
                        let accepted_by = s.deploy_deadline.map_or(ctx.now, |d| d.max(ctx.now));
                        s.verify_deadline = Some(add(accepted_by, verify_timeout));
                    }
                    out.push(Effect::PollStatus {
                        key: s.key(),
                        attempt: s.attempts,
                    });
                }
                StepState::Pending => {
                    if let Some(at) = s.retry_at {
                        out.push(Effect::ScheduleTimer {
                            at,
                            timer: Timer::Retry {
                                key: s.key(),
                                attempt: s.attempts + 1,
                            },
                        });
                    }
                }
                _ => {}
            }
        }
    }
    for (w, wave) in r.waves.iter().enumerate() {
        if wave.phase == WavePhase::Baking {
            out.push(Effect::ScheduleTimer {
                at: bake_round_at(wave, wave.bake_round),
                timer: Timer::Bake {
                    wave: w,
                    round: wave.bake_round,
                },
            });
        }
    }
    if let Some(at) = r.frozen_until {
        out.push(Effect::ScheduleTimer {
            at,
            timer: Timer::FreezeEnd,
        });
    }
    if let Some(at) = r.emergency_freeze.as_ref().and_then(|f| f.until) {
        out.push(Effect::ScheduleTimer {
            at,
            timer: Timer::EmergencyFreezeEnd,
        });
    }
    out.mark(Importance::Matters);
}

// ---------------------------------------------------------------------------
// Moving on: waves, steps, the rollout's state

fn finish(r: &mut Rollout, state: RolloutState, ctx: &Ctx, out: &mut Out) {
    r.state = state;
    r.finished_at = Some(ctx.now);
    r.frozen_until = None;
    r.frozen_reason = None;
    out.push(Effect::Finished { state });
    out.mark(Importance::Terminal);
}

/// Whether nothing may start right now, whatever the wave.
fn steps_held(r: &Rollout) -> bool {
    r.paused_by.is_some()
        || r.emergency_freeze.is_some()
        || r.halt.is_some()
        || r.superseded_by.is_some()
}

/// Starts whatever may start and moves waves along.
fn advance(r: &mut Rollout, ctx: &Ctx, out: &mut Out) {
    if r.state.is_terminal() || r.state == RolloutState::Queued {
        return;
    }
    if let Some(f) = &r.emergency_freeze
        && f.until.is_some_and(|u| u <= ctx.now)
    {
        r.emergency_freeze = None;
        out.mark(Importance::Matters);
    }
    if r.superseded_by.is_some() {
        if !r.steps().any(|s| s.is_in_flight()) {
            finish(r, RolloutState::Superseded, ctx, out);
        }
        return;
    }
    loop {
        let cur = r.current_wave;
        if cur >= r.waves.len() {
            let state = if r.steps().any(|s| s.state == StepState::Failed) {
                RolloutState::Failed
            } else {
                RolloutState::Succeeded
            };
            finish(r, state, ctx, out);
            return;
        }
        match r.waves[cur].phase {
            WavePhase::Pending => {
                if steps_held(r) {
                    break;
                }
                let wave = &r.waves[cur];
                if wave.approval && wave.approved_by.is_none() {
                    break;
                }
                if let Some(f) = active_freeze(&r.policy.freeze, ctx.now) {
                    if r.frozen_until != Some(f.until) {
                        out.push(Effect::ScheduleTimer {
                            at: f.until,
                            timer: Timer::FreezeEnd,
                        });
                        out.mark(Importance::Waiting);
                    }
                    r.frozen_until = Some(f.until);
                    r.frozen_reason = f.reason;
                    break;
                }
                r.frozen_until = None;
                r.frozen_reason = None;
                let wave = &mut r.waves[cur];
                wave.phase = WavePhase::Running;
                wave.started_at = Some(ctx.now);
                out.mark(Importance::Matters);
                check_budgets(r, ctx, out);
            }
            WavePhase::Running => {
                // SPEC 6.3, per step: a freeze window that began while the
                // wave ran stops new starts too; in-flight steps finish.
                if !steps_held(r) && !hold_for_freeze(r, cur, ctx, out) {
                    start_steps(r, cur, ctx, out);
                }
                if wave_all_terminal(r, cur) && !r.waves[cur].over_budget() {
                    let wave = &mut r.waves[cur];
                    if wave.bake.is_zero() || bake_keys(wave).is_empty() {
                        wave.phase = WavePhase::Done;
                        wave.finished_at = Some(ctx.now);
                        out.mark(Importance::Matters);
                        r.current_wave += 1;
                        continue;
                    }
                    wave.phase = WavePhase::Baking;
                    wave.bake_until = Some(add(ctx.now, wave.bake));
                    wave.bake_round = 1;
                    out.push(Effect::ScheduleTimer {
                        at: bake_round_at(wave, 1),
                        timer: Timer::Bake {
                            wave: cur,
                            round: 1,
                        },
                    });
                    out.mark(Importance::Matters);
                }
                break;
            }
            WavePhase::Baking => {
                // Nothing starts while baking; the next wave checks anew.
                r.frozen_until = None;
                r.frozen_reason = None;
                break;
            }
            WavePhase::Done => r.current_wave += 1,
        }
    }
    maybe_auto_rollback(r, out);
}

/// Whether a freeze window in force at `now` holds the running wave `w`'s
/// steps that have yet to start; records until when (the waiting reason)
/// and asks for a timer at its end. Clears a freeze that has ended.
fn hold_for_freeze(r: &mut Rollout, w: usize, ctx: &Ctx, out: &mut Out) -> bool {
    let freeze = if r.policy.freeze.is_empty() {
        None
    } else {
        active_freeze(&r.policy.freeze, ctx.now)
    };
    // Only a wave with steps still to start is held: in-flight steps finish
    // whatever the window says, and a wave with none left is not waiting.
    let f = match freeze {
        Some(f)
            if r.waves[w]
                .steps
                .iter()
                .any(|s| s.state == StepState::Pending) =>
        {
            f
        }
        _ => {
            if r.frozen_until.is_some() {
                r.frozen_until = None;
                r.frozen_reason = None;
                out.mark(Importance::Matters);
            }
            return false;
        }
    };
    if r.frozen_until != Some(f.until) {
        out.push(Effect::ScheduleTimer {
            at: f.until,
            timer: Timer::FreezeEnd,
        });
        out.mark(Importance::Waiting);
    }
    r.frozen_until = Some(f.until);
    r.frozen_reason = f.reason;
    true
}

/// Starts the current wave's steps that may start: dependencies done, and
/// their environment already in progress or a `max_parallel` slot free.
/// Environments are taken in wave order; the work done is proportional to
/// the environments in progress, not to the wave's size.
fn start_steps(r: &mut Rollout, w: usize, ctx: &Ctx, out: &mut Out) {
    r.ensure_index();
    let mut idx = std::mem::take(&mut r.index);
    let (starts, active) = plan_starts(r, &mut idx, w, ctx.now);
    let stuck = starts.is_empty() && active == 0 && idx.cursor[w] < idx.groups[w].len();
    r.index = idx;
    for i in starts {
        start_attempt(&mut r.waves[w].steps[i], ctx, out);
        let effect = preflight_effect(r, w, i);
        out.push(effect);
    }
    // Nothing active and nothing startable, yet steps remain: they wait for
    // each other or for steps that will never finish (a cycle the planner
    // should have refused, a rolled-back dependency). Fail them rather than
    // wait forever.
    if stuck {
        let mut failed = Vec::new();
        for s in r.waves[w]
            .steps
            .iter_mut()
            .filter(|s| s.state == StepState::Pending)
        {
            s.state = StepState::Failed;
            s.error = Some("not started: waits for steps that can never finish".into());
            s.finished_at = Some(ctx.now);
            failed.push(s.key());
        }
        if !failed.is_empty() {
            out.all_changed = true;
            out.mark(Importance::Matters);
            for key in failed {
                cascade_failure(r, key, false, ctx);
            }
            check_budgets(r, ctx, out);
        }
    }
}

/// Which steps of wave `w` to start now, and how many environments are in
/// progress afterwards.
fn plan_starts(r: &Rollout, idx: &mut Index, w: usize, now: DateTime<Utc>) -> (Vec<usize>, usize) {
    let wave = &r.waves[w];
    let groups = &idx.groups[w];
    let max = wave.max_parallel.max(1) as usize;
    let mut c = idx.cursor[w];
    while c < groups.len() && groups[c].iter().all(|&i| wave.steps[i].state.is_terminal()) {
        c += 1;
    }
    idx.cursor[w] = c;
    let frontier = idx.frontier[w];
    let group_active = |g: &Vec<usize>| g.iter().any(|&i| wave.steps[i].is_active());
    let mut active = groups
        .iter()
        .enumerate()
        .take(frontier + 1)
        .skip(c)
        .filter(|(_, g)| group_active(g))
        .count();
    let deps_ready = |s: &StepRun| {
        // A dependency outside the plan cannot be waited for; the planner
        // never emits one, and stored data must not wedge the rollout.
        s.waits_for.iter().all(|k| match idx.pos.get(k) {
            None => true,
            Some(&(dw, di)) => r.waves[dw].steps[di].state.satisfies_dependents(),
        })
    };
    let mut starts = Vec::new();
    let mut new_frontier = frontier;
    for (g, steps) in groups.iter().enumerate().skip(c) {
        let was_active = group_active(steps);
        if !was_active && active >= max && g > frontier {
            break; // only never-started environments remain, and no slot
        }
        let mut took_slot = false;
        for &i in steps {
            let s = &wave.steps[i];
            if s.state != StepState::Pending {
                continue;
            }
            if let Some(at) = s.retry_at {
                if at <= now {
                    starts.push(i);
                }
                continue;
            }
            let needs_slot = !was_active && !took_slot;
            if needs_slot && active >= max {
                continue;
            }
            if !deps_ready(s) {
                continue;
            }
            if needs_slot {
                active += 1;
                took_slot = true;
            }
            starts.push(i);
        }
        if took_slot {
            new_frontier = new_frontier.max(g);
        }
    }
    idx.frontier[w] = new_frontier;
    (starts, active)
}

/// Whether every step of wave `w` has ended.
fn wave_all_terminal(r: &mut Rollout, w: usize) -> bool {
    r.ensure_index();
    let wave = &r.waves[w];
    let groups = &r.index.groups[w];
    let mut c = r.index.cursor[w];
    while c < groups.len() && groups[c].iter().all(|&i| wave.steps[i].state.is_terminal()) {
        c += 1;
    }
    let done = c == groups.len();
    r.index.cursor[w] = c;
    done
}

/// Takes back an attempt that did not get past its preflight: the step is
/// pending again, as if it had not started, with `note` saying why.
fn undo_preflight(s: &mut StepRun, note: &str) {
    s.attempts = s.attempts.saturating_sub(1);
    s.run_attempts = s.run_attempts.saturating_sub(1);
    if s.attempts == 0 {
        s.started_at = None;
    }
    s.state = StepState::Pending;
    s.note = Some(note.into());
}

fn start_attempt(s: &mut StepRun, ctx: &Ctx, out: &mut Out) {
    s.attempts += 1;
    s.run_attempts += 1;
    s.state = StepState::Preflight;
    s.retry_at = None;
    s.finished_at = None;
    if s.started_at.is_none() {
        s.started_at = Some(ctx.now);
    }
    out.mark(Importance::CountsOnly);
}

fn maybe_auto_rollback(r: &mut Rollout, out: &mut Out) {
    if !r.policy.auto_rollback || r.auto_rollback_done || r.state.is_terminal() {
        return;
    }
    let Some(halt) = &r.halt else {
        return;
    };
    let Some(w) = r.waves.iter().position(|w| w.name == halt.wave) else {
        return;
    };
    // Roll back once the wave's in-flight steps are done, so the rollback
    // never races a deploy of this rollout.
    if r.waves[w].steps.iter().any(|s| s.is_in_flight()) {
        return;
    }
    r.auto_rollback_done = true;
    let environments = r.touched_in_wave(w);
    if !environments.is_empty() {
        out.push(Effect::StartRollback {
            wave: halt.wave.clone(),
            environments,
        });
        out.mark(Importance::Matters);
    }
}

/// Derives the rollout's state from its holds and reports a change.
fn settle_state(r: &mut Rollout, before: RolloutState, out: &mut Out) {
    if !r.state.is_terminal() && r.state != RolloutState::Queued {
        r.state = if r.halt.is_some() {
            RolloutState::Halted
        } else if r.paused_by.is_some() {
            RolloutState::Paused
        } else if r.emergency_freeze.is_some() {
            RolloutState::Frozen
        } else if waiting_for_approval(r).is_some() {
            RolloutState::AwaitingApproval
        } else if r.frozen_until.is_some()
            && r.waves
                .get(r.current_wave)
                .is_some_and(|w| matches!(w.phase, WavePhase::Pending | WavePhase::Running))
        {
            RolloutState::Frozen
        } else {
            RolloutState::Running
        };
    }
    if r.state != before {
        out.mark(match r.state {
            RolloutState::AwaitingApproval
            | RolloutState::Frozen
            | RolloutState::Paused
            | RolloutState::Halted => Importance::Waiting,
            s if s.is_terminal() => Importance::Terminal,
            _ => Importance::Matters,
        });
    }
}

/// The name of a wave, for messages.
pub fn wave_name(r: &Rollout, w: usize) -> Option<&WaveName> {
    r.waves.get(w).map(|w| &w.name)
}
