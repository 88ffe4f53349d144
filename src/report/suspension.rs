//! Installations GitHub has suspended, as the reporter sees them. GitHub
//! refuses a suspended installation's API calls, so while it lasts the
//! reporter says so once per rollout, and once it is lifted the reports it
//! refused meanwhile are rendered again. Each replica looks at the store
//! itself (every [`POLL`]): the replica driving a rollout is the one that
//! reports it, whichever replica took the `unsuspend` delivery.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::{InstallationId, RolloutId};

/// How often the reporter reads which installations are suspended.
pub const POLL: Duration = Duration::from_secs(2);

/// What the reporter knows of suspensions (pure; the reporter does the
/// I/O).
#[derive(Debug, Default)]
pub struct Suspensions {
    /// Suspended at the last look: the account, and when this process
    /// first saw it suspended.
    current: HashMap<InstallationId, (String, DateTime<Utc>)>,
    /// Rollouts warned about, with their installation, while it lasts.
    warned: HashMap<RolloutId, InstallationId>,
}

impl Suspensions {
    /// Takes the store's list of suspended installations, read at `now`;
    /// returns those lifted since the last look, each with when it was
    /// first seen suspended.
    pub fn update(
        &mut self,
        suspended: Vec<(InstallationId, String)>,
        now: DateTime<Utc>,
    ) -> Vec<(InstallationId, DateTime<Utc>)> {
        let next: HashMap<InstallationId, (String, DateTime<Utc>)> = suspended
            .into_iter()
            .map(|(id, account)| {
                let since = self.current.get(&id).map_or(now, |(_, since)| *since);
                (id, (account, since))
            })
            .collect();
        let mut lifted: Vec<(InstallationId, DateTime<Utc>)> = self
            .current
            .iter()
            .filter(|(id, _)| !next.contains_key(id))
            .map(|(id, (_, since))| (*id, *since))
            .collect();
        lifted.sort();
        self.warned
            .retain(|_, installation| next.contains_key(installation));
        self.current = next;
        lifted
    }

    /// The account to name when rollout `id`, of `installation`, is
    /// rendered: once per rollout and suspension, `None` otherwise.
    pub fn warn(&mut self, id: &RolloutId, installation: InstallationId) -> Option<String> {
        let (account, _) = self.current.get(&installation)?;
        match self.warned.insert(id.clone(), installation) {
            None => Some(account.clone()),
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn each_rollout_is_warned_about_once_per_suspension() {
        let mut s = Suspensions::default();
        let (one, two) = (InstallationId(1), InstallationId(2));
        let (a, b) = (RolloutId::new("a"), RolloutId::new("b"));
        assert_eq!(s.warn(&a, one), None, "not suspended");
        s.update(vec![(one, "acme".into())], at(0));
        assert_eq!(s.warn(&a, one).as_deref(), Some("acme"));
        assert_eq!(s.warn(&a, one), None, "not on every render");
        assert_eq!(s.warn(&b, one).as_deref(), Some("acme"), "each rollout");
        assert_eq!(s.warn(&b, two), None, "another installation");
        s.update(vec![], at(10));
        assert_eq!(s.warn(&a, one), None, "lifted");
        s.update(vec![(one, "acme".into())], at(20));
        assert_eq!(s.warn(&a, one).as_deref(), Some("acme"), "suspended anew");
    }

    #[test]
    fn a_lifted_suspension_is_reported_once_with_when_it_was_first_seen() {
        let mut s = Suspensions::default();
        let (one, two) = (InstallationId(1), InstallationId(2));
        assert!(s.update(vec![(one, "acme".into())], at(0)).is_empty());
        assert!(
            s.update(vec![(one, "acme".into()), (two, "globex".into())], at(5))
                .is_empty()
        );
        assert_eq!(
            s.update(vec![(two, "globex".into())], at(9)),
            vec![(one, at(0))]
        );
        assert!(s.update(vec![(two, "globex".into())], at(12)).is_empty());
        assert_eq!(s.update(vec![], at(15)), vec![(two, at(5))]);
    }
}
