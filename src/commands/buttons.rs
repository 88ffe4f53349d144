//! Check-run buttons ↔ commands. A click takes the same path as the command
//! its identifier stands for. Identifiers, labels and descriptions come from
//! the command table and always fit GitHub's limits.

use crate::domain::WaveName;

use super::command::{Command, RetryTarget, RollbackTarget};
use super::table::{ButtonSpec, Verb};

/// GitHub's limits for a check-run action (in characters; identifiers are
/// kept within 20 *bytes*, which is stricter).
pub const MAX_IDENTIFIER: usize = 20;
pub const MAX_LABEL: usize = 20;
pub const MAX_DESCRIPTION: usize = 40;

/// `approve:<wave>` when the name fits, else `approve#<index>` (the wave's
/// 0-based position in the rollout's plan, which never changes for a
/// rollout).
const APPROVE_NAMED: &str = "approve:";
const APPROVE_INDEXED: &str = "approve#";

/// One check-run action, ready for the `actions` array.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Button {
    pub identifier: String,
    pub label: String,
    pub description: String,
}

/// Why a `requested_action` identifier maps to no command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ButtonError {
    #[error("unknown button `{0}`")]
    Unknown(String),
    #[error("button `{identifier}` names wave number {index}, and this rollout has {waves} waves")]
    NoSuchWave {
        identifier: String,
        index: usize,
        waves: usize,
    },
}

fn spec(verb: Verb) -> Option<ButtonSpec> {
    verb.spec().button
}

fn from_spec(spec: ButtonSpec) -> Button {
    Button {
        identifier: spec.identifier.to_owned(),
        label: spec.label.to_owned(),
        description: spec.description.to_owned(),
    }
}

/// The button for a command, or `None` when the command has no button (or
/// names a wave too long for an identifier that is not in `waves`).
/// `waves`: the rollout's waves in plan order.
pub fn button_for(command: &Command, waves: &[WaveName]) -> Option<Button> {
    match command {
        Command::Retry {
            target: RetryTarget::Failed,
        }
        | Command::Rollback {
            target: RollbackTarget::All,
        }
        | Command::Abort
        | Command::Resume
        | Command::Approve { wave: None } => spec(command.verb()).map(from_spec),
        Command::Approve { wave: Some(wave) } => {
            let base = spec(Verb::Approve)?;
            let named = format!("{APPROVE_NAMED}{wave}");
            let identifier = if named.len() <= MAX_IDENTIFIER {
                named
            } else {
                let index = waves.iter().position(|w| w == wave)?;
                format!("{APPROVE_INDEXED}{index}")
            };
            let label = Some(format!("{} {wave}", base.label))
                .filter(|l| l.chars().count() <= MAX_LABEL)
                .unwrap_or_else(|| base.label.to_owned());
            let description = Some(format!("Release wave {wave}"))
                .filter(|d| d.chars().count() <= MAX_DESCRIPTION)
                .unwrap_or_else(|| base.description.to_owned());
            // An index identifier is at most 8 + 20 digits: within limits
            // only for indexes below 10^12, which any plan is.
            (identifier.len() <= MAX_IDENTIFIER).then_some(Button {
                identifier,
                label,
                description,
            })
        }
        _ => None,
    }
}

/// The command a clicked button stands for. `waves`: the rollout's waves in
/// plan order (to resolve `approve#<index>`).
pub fn command_for_action(identifier: &str, waves: &[WaveName]) -> Result<Command, ButtonError> {
    if let Some(name) = identifier.strip_prefix(APPROVE_NAMED)
        && !name.is_empty()
    {
        return Ok(Command::Approve {
            wave: Some(WaveName::new(name)),
        });
    }
    if let Some(number) = identifier.strip_prefix(APPROVE_INDEXED) {
        let index: usize = number
            .parse()
            .map_err(|_| ButtonError::Unknown(identifier.to_owned()))?;
        return waves
            .get(index)
            .map(|wave| Command::Approve {
                wave: Some(wave.clone()),
            })
            .ok_or(ButtonError::NoSuchWave {
                identifier: identifier.to_owned(),
                index,
                waves: waves.len(),
            });
    }
    let verb = super::table::COMMANDS
        .iter()
        .find(|spec| spec.button.is_some_and(|b| b.identifier == identifier))
        .map(|spec| spec.verb)
        .ok_or_else(|| ButtonError::Unknown(identifier.to_owned()))?;
    Ok(match verb {
        Verb::Retry => Command::Retry {
            target: RetryTarget::Failed,
        },
        Verb::Rollback => Command::Rollback {
            target: RollbackTarget::All,
        },
        Verb::Abort => Command::Abort,
        Verb::Resume => Command::Resume,
        Verb::Approve => Command::Approve { wave: None },
        _ => return Err(ButtonError::Unknown(identifier.to_owned())),
    })
}
