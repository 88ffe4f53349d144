//! The one command table. The parser looks commands up here, `/convoy help`
//! is rendered from it, the authorization decision reads `access` from it and
//! the check-run buttons take their identifier, label and description from
//! it — so nothing about a command is written twice.

use serde::Serialize;

/// Which command a line names, without its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verb {
    Help,
    Status,
    Plan,
    Retry,
    Skip,
    Pause,
    Resume,
    Abort,
    Approve,
    Rollback,
    Adopt,
    Resync,
    Freeze,
    Unfreeze,
}

/// Who may run a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Anyone who can comment.
    Anyone,
    /// Repository permission `write` or `admin` (GitHub's permission
    /// endpoint; `maintain` is reported as `write`).
    Write,
    /// Write, and — when `policy.approvers` is set — listed there by login
    /// or as a member of a listed `@org/team`.
    Approver,
}

impl Access {
    /// How the help table and refusals name this level.
    pub fn label(self) -> &'static str {
        match self {
            Access::Anyone => "anyone",
            Access::Write => "write",
            Access::Approver => "approver",
        }
    }
}

/// The shape of a command's arguments. The parser dispatches on it and the
/// usage text (`[ENV…|failed]`) is derived from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgShape {
    /// No arguments.
    None,
    /// Environment names, or the keyword alone, or nothing (= the keyword).
    EnvsOrKeyword(&'static str),
    /// One or more environment names.
    Envs,
    /// An optional wave name.
    OptionalWave,
    /// One environment and an optional service.
    EnvAndOptionalService,
    /// Exactly one environment.
    Env,
    /// An optional duration, then free text.
    DurationAndReason,
}

impl ArgShape {
    /// The usage text shown after the command name; empty for no arguments.
    pub fn usage(self) -> String {
        match self {
            ArgShape::None => String::new(),
            ArgShape::EnvsOrKeyword(keyword) => format!("[ENV…|{keyword}]"),
            ArgShape::Envs => "ENV…".into(),
            ArgShape::OptionalWave => "[WAVE]".into(),
            ArgShape::EnvAndOptionalService => "ENV [SERVICE]".into(),
            ArgShape::Env => "ENV".into(),
            ArgShape::DurationAndReason => "[DURATION] [REASON…]".into(),
        }
    }
}

/// A check-run button standing for a command (GitHub limits: identifier
/// ≤ 20, label ≤ 20, description ≤ 40 characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ButtonSpec {
    pub identifier: &'static str,
    pub label: &'static str,
    pub description: &'static str,
}

/// One row of the command table.
#[derive(Clone, Copy, Debug)]
pub struct CommandSpec {
    pub verb: Verb,
    /// The word after the prefix (`retry`).
    pub name: &'static str,
    pub args: ArgShape,
    pub access: Access,
    /// One line for `/convoy help`.
    pub summary: &'static str,
    pub button: Option<ButtonSpec>,
}

impl CommandSpec {
    /// `retry [ENV…|failed]`: the name and its usage, without the prefix.
    pub fn syntax(&self) -> String {
        let usage = self.args.usage();
        if usage.is_empty() {
            self.name.to_owned()
        } else {
            format!("{} {usage}", self.name)
        }
    }
}

/// Every command, in the order `/convoy help` lists them.
pub static COMMANDS: [CommandSpec; 14] = [
    CommandSpec {
        verb: Verb::Help,
        name: "help",
        args: ArgShape::None,
        access: Access::Anyone,
        summary: "list the commands",
        button: None,
    },
    CommandSpec {
        verb: Verb::Status,
        name: "status",
        args: ArgShape::None,
        access: Access::Anyone,
        summary: "refresh the rollout comment now",
        button: None,
    },
    CommandSpec {
        verb: Verb::Plan,
        name: "plan",
        args: ArgShape::None,
        access: Access::Anyone,
        summary: "rerun the preflight check on an open pull request",
        button: None,
    },
    CommandSpec {
        verb: Verb::Retry,
        name: "retry",
        args: ArgShape::EnvsOrKeyword("failed"),
        access: Access::Write,
        summary: "retry failed steps (default: all failed) and resume",
        button: Some(ButtonSpec {
            identifier: "retry-failed",
            label: "Retry failed",
            description: "Retry the failed steps and resume",
        }),
    },
    CommandSpec {
        verb: Verb::Skip,
        name: "skip",
        args: ArgShape::Envs,
        access: Access::Write,
        summary: "mark these environments' steps skipped, out of the failure budget",
        button: None,
    },
    CommandSpec {
        verb: Verb::Pause,
        name: "pause",
        args: ArgShape::None,
        access: Access::Write,
        summary: "stop starting new steps",
        button: None,
    },
    CommandSpec {
        verb: Verb::Resume,
        name: "resume",
        args: ArgShape::None,
        access: Access::Write,
        summary: "start new steps again after a pause",
        button: Some(ButtonSpec {
            identifier: "resume",
            label: "Resume",
            description: "Start new steps again",
        }),
    },
    CommandSpec {
        verb: Verb::Abort,
        name: "abort",
        args: ArgShape::None,
        access: Access::Write,
        summary: "stop the rollout for good; the check run ends `cancelled`",
        button: Some(ButtonSpec {
            identifier: "abort",
            label: "Abort",
            description: "Stop the rollout; nothing new starts",
        }),
    },
    CommandSpec {
        verb: Verb::Approve,
        name: "approve",
        args: ArgShape::OptionalWave,
        access: Access::Approver,
        summary: "release a wave waiting for approval (default: the waiting one)",
        button: Some(ButtonSpec {
            identifier: "approve",
            label: "Approve",
            description: "Release the wave waiting for approval",
        }),
    },
    CommandSpec {
        verb: Verb::Rollback,
        name: "rollback",
        args: ArgShape::EnvsOrKeyword("all"),
        access: Access::Write,
        summary: "deploy the last good versions back (default: every environment this rollout touched)",
        button: Some(ButtonSpec {
            identifier: "rollback",
            label: "Roll back",
            description: "Deploy the last good versions back",
        }),
    },
    CommandSpec {
        verb: Verb::Adopt,
        name: "adopt",
        args: ArgShape::EnvAndOptionalService,
        access: Access::Write,
        summary: "accept what runs in an environment now as its new baseline",
        button: None,
    },
    CommandSpec {
        verb: Verb::Resync,
        name: "resync",
        args: ArgShape::Env,
        access: Access::Write,
        summary: "redeploy the desired version to a drifted environment",
        button: None,
    },
    CommandSpec {
        verb: Verb::Freeze,
        name: "freeze",
        args: ArgShape::DurationAndReason,
        access: Access::Write,
        summary: "emergency stop: no rollout of this repository starts a new step until unfrozen or the duration ends",
        button: None,
    },
    CommandSpec {
        verb: Verb::Unfreeze,
        name: "unfreeze",
        args: ArgShape::None,
        access: Access::Write,
        summary: "lift a freeze set with `freeze`",
        button: None,
    },
];

impl Verb {
    /// This verb's row in [`COMMANDS`].
    pub fn spec(self) -> &'static CommandSpec {
        // The table lists the verbs in declaration order; the test
        // `table_is_in_verb_order` keeps it that way, and the fallback
        // search keeps this total even if it were not.
        let index = self as usize;
        match COMMANDS.get(index) {
            Some(spec) if spec.verb == self => spec,
            _ => COMMANDS
                .iter()
                .find(|spec| spec.verb == self)
                .unwrap_or(&COMMANDS[0]),
        }
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn access(self) -> Access {
        self.spec().access
    }

    /// The verb for a command word, compared without regard to ASCII case.
    pub fn from_name(word: &str) -> Option<Verb> {
        COMMANDS
            .iter()
            .find(|spec| spec.name.eq_ignore_ascii_case(word))
            .map(|spec| spec.verb)
    }

    /// Every command word, in table order (for "did you mean").
    pub fn names() -> impl Iterator<Item = &'static str> + Clone {
        COMMANDS.iter().map(|spec| spec.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_verb_order_and_names_are_unique() {
        for (index, spec) in COMMANDS.iter().enumerate() {
            assert_eq!(spec.verb as usize, index, "{} out of order", spec.name);
            assert_eq!(Verb::from_name(spec.name), Some(spec.verb));
            assert_eq!(spec.verb.spec().name, spec.name);
        }
    }

    #[test]
    fn buttons_fit_github_limits() {
        for spec in &COMMANDS {
            if let Some(button) = spec.button {
                assert!(button.identifier.len() <= 20, "{}", button.identifier);
                assert!(button.label.chars().count() <= 20, "{}", button.label);
                assert!(
                    button.description.chars().count() <= 40,
                    "{}",
                    button.description
                );
            }
        }
    }

    #[test]
    fn usage_is_derived_from_the_shape() {
        assert_eq!(Verb::Retry.spec().syntax(), "retry [ENV…|failed]");
        assert_eq!(Verb::Rollback.spec().syntax(), "rollback [ENV…|all]");
        assert_eq!(Verb::Freeze.spec().syntax(), "freeze [DURATION] [REASON…]");
        assert_eq!(Verb::Adopt.spec().syntax(), "adopt ENV [SERVICE]");
        assert_eq!(Verb::Help.spec().syntax(), "help");
    }
}
