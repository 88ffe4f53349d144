//! `command`: the operator's program, run directly (SPEC 4.2).
//!
//! The argv comes from the operator's config only; a repository can merely
//! pick the driver by name. Placeholders are substituted inside each
//! argument and the program is executed without a shell, so a value such as
//! `$(touch /tmp/x)` reaches the program literally. The program runs in its
//! own process group, and a timeout kills the whole group, so helpers it
//! started do not outlive it.

use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    AgentStatus, Driver, DriverError, Endpoint, PreflightOutcome, StepRequest, truncate_chars,
};
use crate::config::CommandDriver;
use crate::domain::{CommitSha, ServiceName};

/// Output kept from a run: enough for an error message and a status JSON.
const MAX_OUTPUT: usize = 1024 * 1024;

#[derive(Clone, Debug)]
pub struct CommandDriverImpl {
    name: String,
    cfg: CommandDriver,
}

/// Values for `{service}`, `{version}`, `{environment}` and `{rollout}`.
#[derive(Clone, Copy, Debug)]
pub struct Placeholders<'a> {
    pub service: &'a str,
    pub version: &'a str,
    pub environment: &'a str,
    pub rollout: &'a str,
}

/// Substitutes placeholders in every argument. Done in one pass over each
/// argument, so a value containing `{service}` is not substituted again.
pub fn substitute(argv: &[String], p: &Placeholders<'_>) -> Vec<String> {
    argv.iter()
        .map(|arg| {
            let mut out = String::with_capacity(arg.len());
            let mut rest = arg.as_str();
            'outer: while !rest.is_empty() {
                for (name, value) in [
                    ("{service}", p.service),
                    ("{version}", p.version),
                    ("{environment}", p.environment),
                    ("{rollout}", p.rollout),
                ] {
                    if let Some(after) = rest.strip_prefix(name) {
                        out.push_str(value);
                        rest = after;
                        continue 'outer;
                    }
                }
                let mut chars = rest.chars();
                if let Some(c) = chars.next() {
                    out.push(c);
                }
                rest = chars.as_str();
            }
            out
        })
        .collect()
}

/// How one run ended.
#[derive(Debug)]
struct RunOutput {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl CommandDriverImpl {
    pub fn new(name: &str, cfg: &CommandDriver) -> CommandDriverImpl {
        CommandDriverImpl {
            name: name.to_string(),
            cfg: cfg.clone(),
        }
    }

    async fn run(&self, argv: &[String], what: &str) -> Result<RunOutput, DriverError> {
        run_argv(&self.name, argv, self.cfg.timeout, what).await
    }

    fn failure(&self, what: &str, out: &RunOutput) -> DriverError {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = {
            let t = stderr.trim();
            let n = t.chars().count();
            t.chars().skip(n.saturating_sub(300)).collect()
        };
        let detail = if tail.is_empty() {
            String::new()
        } else {
            format!(": {tail}")
        };
        match out.code {
            Some(code) => {
                let msg = format!("{what}: exit code {code}{detail}");
                if self.cfg.permanent_exit_codes.contains(&code) || code == 126 || code == 127 {
                    DriverError::permanent(msg)
                } else {
                    DriverError::transient(msg)
                }
            }
            None => DriverError::transient(format!("{what}: killed by a signal{detail}")),
        }
    }
}

/// Linux's "Text file busy": the program file is still open for writing
/// somewhere, typically because another thread forked while a script was
/// being written (the child holds the descriptor until it execs). It
/// clears by itself within moments; a deploy must not fail on it.
const ETXTBSY: i32 = 26;

async fn spawn_retrying_busy(
    cmd: &mut tokio::process::Command,
) -> std::io::Result<tokio::process::Child> {
    let mut delay = Duration::from_millis(5);
    for _ in 0..6 {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
    cmd.spawn()
}

/// Runs `argv` in its own process group with a timeout; on timeout the
/// whole group is killed.
async fn run_argv(
    driver: &str,
    argv: &[String],
    timeout: Duration,
    what: &str,
) -> Result<RunOutput, DriverError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(DriverError::permanent(format!(
            "{what}: driver `{driver}` has no command"
        )));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = spawn_retrying_busy(&mut cmd)
        .await
        .map_err(|e| DriverError::permanent(format!("{what}: cannot run `{program}`: {e}")))?;
    // Armed until the command has finished: a caller that stops waiting
    // (the step's deploy_timeout, a shutdown) drops this future, and
    // `kill_on_drop` alone would kill only the leader, leaving what it
    // started (helm, kubectl) running beside the next attempt.
    let mut group = GroupGuard(child.id());
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            group.disarm();
            let mut stdout = out.stdout;
            let mut stderr = out.stderr;
            stdout.truncate(MAX_OUTPUT);
            stderr.truncate(MAX_OUTPUT);
            Ok(RunOutput {
                code: out.status.code(),
                stdout,
                stderr,
            })
        }
        Ok(Err(e)) => Err(DriverError::transient(format!(
            "{what}: waiting for `{program}` failed: {e}"
        ))),
        Err(_) => {
            group.kill();
            Err(DriverError::transient(format!(
                "{what}: `{program}` timed out after {}; its process group was killed",
                crate::duration::format_duration(timeout)
            )))
        }
    }
}

/// The process group of a command still running: killed when this is
/// dropped, unless the command finished first.
struct GroupGuard(Option<u32>);

impl GroupGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }

    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            kill_group(pid);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills a process group we created with `process_group(0)` (its id is the
/// leader's pid).
fn kill_group(pid: u32) {
    let Ok(pgid) = i32::try_from(pid) else {
        return;
    };
    if pgid <= 1 {
        return; // never signal "every process" or init by mistake
    }
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid
    // addresses the process group we created for this child.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

#[async_trait]
impl Driver for CommandDriverImpl {
    async fn deploy(&self, req: &StepRequest) -> Result<(), DriverError> {
        let argv = substitute(
            &self.cfg.argv,
            &Placeholders {
                service: req.service.as_str(),
                version: req.version.as_str(),
                environment: req.endpoint.environment.as_str(),
                rollout: req.rollout.as_str(),
            },
        );
        let out = self.run(&argv, "deploy").await?;
        if out.code == Some(0) {
            Ok(())
        } else {
            Err(self.failure("deploy", &out))
        }
    }

    async fn status(
        &self,
        endpoint: &Endpoint,
        service: &ServiceName,
    ) -> Result<AgentStatus, DriverError> {
        if self.cfg.status_argv.is_empty() {
            return Err(DriverError::permanent(format!(
                "status: driver `{}` has no status_argv",
                self.name
            )));
        }
        let argv = substitute(
            &self.cfg.status_argv,
            &Placeholders {
                service: service.as_str(),
                version: "",
                environment: endpoint.environment.as_str(),
                rollout: "",
            },
        );
        let out = self.run(&argv, "status").await?;
        if out.code != Some(0) {
            return Err(self.failure("status", &out));
        }
        AgentStatus::read(&out.stdout, service).map_err(|e| {
            DriverError::permanent(format!(
                "status: output is not the status JSON ({e}): {}",
                truncate_chars(String::from_utf8_lossy(&out.stdout).trim(), 200)
            ))
        })
    }

    async fn preflight(
        &self,
        _endpoint: &Endpoint,
        _service: &ServiceName,
        _version: &CommitSha,
    ) -> Result<PreflightOutcome, DriverError> {
        Ok(PreflightOutcome::NotProvided)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_substituted_once_per_argument() {
        let argv: Vec<String> = [
            "deploy",
            "{service}@{version}",
            "--ctx={environment}",
            "{rollout}",
            "{unknown}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let p = Placeholders {
            service: "{version}",
            version: "abc",
            environment: "acme eu",
            rollout: "r1",
        };
        assert_eq!(
            substitute(&argv, &p),
            [
                "deploy",
                "{version}@abc",
                "--ctx=acme eu",
                "r1",
                "{unknown}"
            ]
        );
    }
}
