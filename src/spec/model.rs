//! The resolved `convoy.yml`: validated, with every default applied. This is
//! what the planner reads; it never sees raw YAML.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::domain::{EnvName, ServiceName, WaveName};
use crate::plan::model::{EnvTarget, FailureBudget, RolloutPolicy};

use super::yaml::Pos;

#[derive(Clone, Debug, PartialEq)]
pub struct ConvoySpec {
    pub version: u32,
    /// In file order.
    pub services: Vec<ServiceSpec>,
    /// In file order.
    pub environments: Vec<EnvSpec>,
    /// The waves the file declares, in order (the implicit `rest` is not
    /// here; the planner adds it).
    pub waves: Vec<WaveSpec>,
    pub policy: RolloutPolicy,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSpec {
    pub name: ServiceName,
    /// Globs; empty: always affected.
    pub paths: Vec<String>,
    pub depends_on: Vec<ServiceName>,
    /// Where the service is defined (for annotations).
    pub pos: Pos,
}

impl ServiceSpec {
    /// Whether two definitions deploy the same way; used to tell whether a
    /// change to `convoy.yml` changed this service.
    pub fn same_definition(&self, other: &ServiceSpec) -> bool {
        // As sets: listing the same paths or dependencies in another order
        // deploys the same way, and must not send the service to the fleet.
        fn set<T: Ord>(items: &[T]) -> std::collections::BTreeSet<&T> {
            items.iter().collect()
        }
        self.name == other.name
            && set(&self.paths) == set(&other.paths)
            && set(&self.depends_on) == set(&other.depends_on)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct EnvSpec {
    pub name: EnvName,
    pub labels: BTreeMap<String, String>,
    pub driver: String,
    pub url: Option<String>,
    /// `None`: every service lives here.
    pub services: Option<Vec<ServiceName>>,
    pub depends_on: Vec<EnvName>,
    pub pos: Pos,
}

impl EnvSpec {
    /// Whether `service` is deployed to this environment.
    pub fn hosts(&self, service: &str) -> bool {
        match &self.services {
            None => true,
            Some(list) => list.iter().any(|s| s.as_str() == service),
        }
    }

    /// How the engine reaches this environment.
    pub fn target(&self) -> EnvTarget {
        EnvTarget {
            driver: self.driver.clone(),
            url: self.url.clone(),
            labels: self.labels.clone(),
            depends_on: self.depends_on.clone(),
        }
    }

    /// Label equality, all must match; an empty selector matches everything.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct WaveSpec {
    pub name: WaveName,
    pub selector: BTreeMap<String, String>,
    /// Cumulative share of the fleet reached by the end of this wave.
    pub percent: Option<u32>,
    pub bake: Duration,
    /// `None`: the policy's `max_parallel`.
    pub max_parallel: Option<u32>,
    pub failure_budget: FailureBudget,
    pub approval: bool,
    pub pos: Pos,
}

impl ConvoySpec {
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name.as_str() == name)
    }

    /// One line for `convoy check`.
    pub fn summary(&self) -> String {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        format!(
            "{}, {}, {}",
            plural(self.services.len(), "service", "services"),
            plural(self.environments.len(), "environment", "environments"),
            plural(self.waves.len(), "wave", "waves"),
        )
    }
}
