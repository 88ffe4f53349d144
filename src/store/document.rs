//! Splitting a rollout document into header, targets, waves' environments
//! and steps, and putting them back together. Works on JSON text, so the
//! store needs no knowledge of the engine beyond a few field names: a
//! rollout is an object with a `targets` object and a `waves` array whose
//! items each have `environments` and `steps` arrays.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use super::StoredStep;

/// A JSON object whose members are kept as their original text: nothing is
/// re-parsed or re-printed (numbers keep their exact digits), and it is much
/// cheaper than a full `Value` tree.
type RawObject = BTreeMap<String, Box<RawValue>>;

/// A document split for storage.
pub(crate) struct Split {
    pub header: String,
    pub targets: String,
    /// Each wave's `environments`, as a JSON array of arrays.
    pub environments: String,
    pub steps: Vec<StoredStep>,
}

fn raw(text: String) -> Option<Box<RawValue>> {
    RawValue::from_string(text).ok()
}

/// Splits a complete rollout document; `None` when it does not have the
/// rollout's shape (it is then stored whole, as before per-step storage).
pub(crate) fn split(document: &str) -> Option<Split> {
    let mut obj: RawObject = serde_json::from_str(document).ok()?;
    let targets = obj.insert("targets".into(), raw("{}".into())?)?;
    let waves: Vec<RawObject> = serde_json::from_str(obj.get("waves")?.get()).ok()?;
    let mut steps = Vec::new();
    let mut emptied = Vec::with_capacity(waves.len());
    let mut environments = Vec::with_capacity(waves.len());
    for (w, mut wave) in waves.into_iter().enumerate() {
        environments.push(wave.insert("environments".into(), raw("[]".into())?)?);
        let list = wave.insert("steps".into(), raw("[]".into())?)?;
        let list: Vec<Box<RawValue>> = serde_json::from_str(list.get()).ok()?;
        for (i, step) in list.into_iter().enumerate() {
            steps.push(StoredStep {
                wave: u32::try_from(w).ok()?,
                idx: u32::try_from(i).ok()?,
                step: step.get().to_owned(),
            });
        }
        emptied.push(wave);
    }
    obj.insert("waves".into(), raw(serde_json::to_string(&emptied).ok()?)?);
    Some(Split {
        header: serde_json::to_string(&obj).ok()?,
        targets: targets.get().to_owned(),
        environments: serde_json::to_string(&environments).ok()?,
        steps,
    })
}

/// The complete document from its parts; `steps` in (wave, idx) order.
/// A part that cannot be read is an error message naming it.
pub(crate) fn assemble(
    header: &str,
    targets: &str,
    environments: &str,
    steps: impl IntoIterator<Item = (i64, String)>,
) -> Result<String, String> {
    let mut obj: RawObject =
        serde_json::from_str(header).map_err(|e| format!("rollout header: {e}"))?;
    let waves = obj.get("waves").ok_or("rollout header: no waves")?;
    let mut waves: Vec<RawObject> =
        serde_json::from_str(waves.get()).map_err(|e| format!("rollout header waves: {e}"))?;
    let environments: Vec<Box<RawValue>> = serde_json::from_str(environments)
        .map_err(|e| format!("rollout wave environments: {e}"))?;
    if environments.len() != waves.len() {
        return Err(format!(
            "rollout has {} waves but environments for {}",
            waves.len(),
            environments.len()
        ));
    }
    for (wave, envs) in waves.iter_mut().zip(environments) {
        wave.insert("environments".into(), envs);
    }
    // Each wave's steps as the text of a JSON array, built by appending.
    let mut lists: Vec<String> = vec![String::from("["); waves.len()];
    for (wave, step) in steps {
        let list = usize::try_from(wave)
            .ok()
            .and_then(|w| lists.get_mut(w))
            .ok_or_else(|| format!("rollout step of wave {wave}, which the header lacks"))?;
        if list.len() > 1 {
            list.push(',');
        }
        list.push_str(&step);
    }
    for (wave, mut list) in waves.iter_mut().zip(lists) {
        list.push(']');
        let list = RawValue::from_string(list).map_err(|e| format!("rollout steps: {e}"))?;
        wave.insert("steps".into(), list);
    }
    let waves = serde_json::to_string(&waves).map_err(|e| e.to_string())?;
    obj.insert(
        "waves".into(),
        RawValue::from_string(waves).map_err(|e| e.to_string())?,
    );
    obj.insert(
        "targets".into(),
        RawValue::from_string(targets.to_owned()).map_err(|e| format!("rollout targets: {e}"))?,
    );
    serde_json::to_string(&obj).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn split_then_assemble_is_the_identity() {
        let doc = r#"{"a":1,"targets":{"e1":{"driver":"x"}},"waves":[{"environments":["e1"],"n":"w0","steps":[{"s":1},{"s":2}]},{"environments":[],"n":"w1","steps":[]},{"environments":["e1","e2"],"n":"w2","steps":[{"s":3}]}]}"#;
        let s = split(doc).expect("splits");
        assert_eq!(
            s.header,
            r#"{"a":1,"targets":{},"waves":[{"environments":[],"n":"w0","steps":[]},{"environments":[],"n":"w1","steps":[]},{"environments":[],"n":"w2","steps":[]}]}"#
        );
        assert_eq!(s.targets, r#"{"e1":{"driver":"x"}}"#);
        assert_eq!(s.environments, r#"[["e1"],[],["e1","e2"]]"#);
        let places: Vec<(u32, u32)> = s.steps.iter().map(|x| (x.wave, x.idx)).collect();
        assert_eq!(places, vec![(0, 0), (0, 1), (2, 0)]);
        let back = assemble(
            &s.header,
            &s.targets,
            &s.environments,
            s.steps.into_iter().map(|x| (i64::from(x.wave), x.step)),
        )
        .expect("assembles");
        let a: Value = serde_json::from_str(&back).unwrap();
        let b: Value = serde_json::from_str(doc).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn a_document_of_another_shape_is_not_split() {
        assert!(split("[1,2]").is_none());
        assert!(split(r#"{"targets":{}}"#).is_none());
        assert!(split("not json").is_none());
    }

    #[test]
    fn numbers_keep_their_exact_text() {
        let doc = r#"{"risk":0.30000000000000004,"targets":{},"waves":[{"environments":[],"steps":[{"x":1e-7}]}]}"#;
        let s = split(doc).expect("splits");
        let back = assemble(
            &s.header,
            &s.targets,
            &s.environments,
            s.steps.into_iter().map(|x| (i64::from(x.wave), x.step)),
        )
        .expect("assembles");
        assert!(back.contains("0.30000000000000004"), "{back}");
        assert!(back.contains("1e-7"), "{back}");
    }

    #[test]
    fn a_step_of_a_missing_wave_is_an_error() {
        let err = assemble(
            r#"{"targets":{},"waves":[]}"#,
            "{}",
            "[]",
            [(3, "{}".to_owned())],
        );
        assert!(err.is_err());
    }
}
