//! Wave assignment (SPEC 6.1): which environment goes in which wave.
//!
//! Waves are filled in order. A wave's candidates are the environments not
//! yet assigned that match its selector, in the stable order of ascending
//! SHA-256 of the environment name (so cohorts stay the same across
//! releases). Without `percent` a wave takes all its candidates; with
//! `percent: P` it takes candidates until the environments assigned so far,
//! in all waves, reach ceil(P% × fleet size). The rest form the implicit
//! final wave.

use sha2::{Digest, Sha256};

use crate::spec::model::{ConvoySpec, EnvSpec, WaveSpec};

/// The name of the implicit final wave.
pub const REST: &str = "rest";

/// The result of assignment, by index into `spec.environments`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// One entry per declared wave, plus a last one for the implicit `rest`
    /// wave (possibly empty); each in the stable order.
    pub waves: Vec<Vec<usize>>,
    /// For each environment, the index of its wave in `waves`.
    pub wave_of: Vec<usize>,
}

impl Assignment {
    /// Index of the implicit wave in `waves`.
    pub fn rest_index(&self) -> usize {
        self.waves.len().saturating_sub(1)
    }
}

/// SHA-256 of the name: the key of the stable order.
pub fn stable_key(name: &str) -> [u8; 32] {
    Sha256::digest(name.as_bytes()).into()
}

/// Environment indices in the stable order (ties, which need equal names,
/// broken by index so the order is total).
pub fn stable_order(envs: &[EnvSpec]) -> Vec<usize> {
    let mut keyed: Vec<([u8; 32], usize)> = envs
        .iter()
        .enumerate()
        .map(|(i, e)| (stable_key(e.name.as_str()), i))
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, i)| i).collect()
}

/// Assigns every environment of `spec` to exactly one wave.
pub fn assign(spec: &ConvoySpec) -> Assignment {
    assign_parts(&spec.environments, &spec.waves)
}

/// [`assign`] on the parts, for validation of a partly valid file.
pub fn assign_parts(envs: &[EnvSpec], waves: &[WaveSpec]) -> Assignment {
    assign_in_order(envs, waves, &stable_order(envs))
}

/// [`assign_parts`] with the stable order already computed (`order` must
/// be [`stable_order`] of `envs`).
pub fn assign_in_order(envs: &[EnvSpec], waves: &[WaveSpec], order: &[usize]) -> Assignment {
    let fleet = envs.len();
    let rest = waves.len();
    let mut wave_of = vec![usize::MAX; fleet];
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); waves.len() + 1];
    let mut assigned = 0usize;
    for (w, wave) in waves.iter().enumerate() {
        // ceil(P% × fleet), in integers; P is validated to 1..=100 but the
        // planner must not misbehave on anything else.
        let limit = wave.percent.map(|p| {
            let p = p.min(100) as usize;
            (p * fleet).div_ceil(100)
        });
        for &i in order {
            if let Some(limit) = limit
                && assigned >= limit
            {
                break;
            }
            if wave_of[i] == usize::MAX && envs[i].matches(&wave.selector) {
                wave_of[i] = w;
                out[w].push(i);
                assigned += 1;
            }
        }
    }
    for &i in order {
        if wave_of[i] == usize::MAX {
            wave_of[i] = rest;
            out[rest].push(i);
        }
    }
    Assignment {
        waves: out,
        wave_of,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::domain::{EnvName, WaveName};
    use crate::plan::model::FailureBudget;
    use crate::spec::yaml::Pos;

    fn env(name: &str, ring: &str) -> EnvSpec {
        EnvSpec {
            name: EnvName::new(name),
            labels: BTreeMap::from([("ring".to_string(), ring.to_string())]),
            driver: "agent".into(),
            url: None,
            services: None,
            depends_on: vec![],
            pos: Pos::START,
        }
    }

    fn wave(name: &str, selector: Option<&str>, percent: Option<u32>) -> WaveSpec {
        WaveSpec {
            name: WaveName::new(name),
            selector: selector
                .map(|r| BTreeMap::from([("ring".to_string(), r.to_string())]))
                .unwrap_or_default(),
            percent,
            bake: Duration::ZERO,
            max_parallel: None,
            failure_budget: FailureBudget::default(),
            approval: false,
            pos: Pos::START,
        }
    }

    #[test]
    fn the_spec_example_gives_2_8_90() {
        let envs: Vec<EnvSpec> = (0..100)
            .map(|i| env(&format!("e{i}"), if i < 2 { "canary" } else { "main" }))
            .collect();
        let waves = [
            wave("canary", Some("canary"), None),
            wave("early", None, Some(10)),
            wave("all", None, Some(100)),
        ];
        let a = assign_parts(&envs, &waves);
        let sizes: Vec<usize> = a.waves.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![2, 8, 90, 0]);
        assert!(a.waves[0].iter().all(|&i| i < 2));
    }

    #[test]
    fn leftovers_form_the_rest_wave_in_stable_order() {
        let envs: Vec<EnvSpec> = (0..10).map(|i| env(&format!("e{i}"), "x")).collect();
        let a = assign_parts(&envs, &[wave("early", None, Some(30))]);
        assert_eq!(a.waves[0].len(), 3);
        assert_eq!(a.waves[1].len(), 7);
        let keys: Vec<[u8; 32]> = a.waves[1]
            .iter()
            .map(|&i| stable_key(envs[i].name.as_str()))
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn percent_rounds_up() {
        let envs: Vec<EnvSpec> = (0..3).map(|i| env(&format!("e{i}"), "x")).collect();
        let a = assign_parts(&envs, &[wave("one", None, Some(1))]);
        assert_eq!(a.waves[0].len(), 1);
    }
}
