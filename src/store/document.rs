//! Splitting a rollout document into header, targets and steps, and putting
//! them back together. Works on JSON values, so the store needs no knowledge
//! of the engine beyond the two field names: a rollout is an object with a
//! `targets` object and a `waves` array whose items each have a `steps`
//! array.

use serde_json::Value;

use super::StoredStep;

/// A document split for storage.
pub(crate) struct Split {
    pub header: String,
    pub targets: String,
    pub steps: Vec<StoredStep>,
}

/// Splits a complete rollout document; `None` when it does not have the
/// rollout's shape (it is then stored whole, as before per-step storage).
pub(crate) fn split(document: &str) -> Option<Split> {
    let mut value: Value = serde_json::from_str(document).ok()?;
    let obj = value.as_object_mut()?;
    let targets = std::mem::replace(obj.get_mut("targets")?, Value::Object(Default::default()));
    let mut steps = Vec::new();
    for (w, wave) in obj.get_mut("waves")?.as_array_mut()?.iter_mut().enumerate() {
        let list = std::mem::replace(wave.get_mut("steps")?, Value::Array(Vec::new()));
        let Value::Array(list) = list else {
            return None;
        };
        for (i, step) in list.into_iter().enumerate() {
            steps.push(StoredStep {
                wave: u32::try_from(w).ok()?,
                idx: u32::try_from(i).ok()?,
                step: step.to_string(),
            });
        }
    }
    Some(Split {
        header: value.to_string(),
        targets: targets.to_string(),
        steps,
    })
}

/// The complete document from its parts; `steps` in (wave, idx) order.
/// A part that cannot be read is an error message naming it.
pub(crate) fn assemble(
    header: &str,
    targets: &str,
    steps: impl IntoIterator<Item = (i64, String)>,
) -> Result<String, String> {
    let mut value: Value =
        serde_json::from_str(header).map_err(|e| format!("rollout header: {e}"))?;
    let targets: Value =
        serde_json::from_str(targets).map_err(|e| format!("rollout targets: {e}"))?;
    let obj = value
        .as_object_mut()
        .ok_or("rollout header: not an object")?;
    obj.insert("targets".into(), targets);
    let waves = obj
        .get_mut("waves")
        .and_then(Value::as_array_mut)
        .ok_or("rollout header: no waves")?;
    for (wave, step) in steps {
        let step: Value = serde_json::from_str(&step).map_err(|e| format!("rollout step: {e}"))?;
        let list = usize::try_from(wave)
            .ok()
            .and_then(|w| waves.get_mut(w))
            .and_then(|w| w.get_mut("steps"))
            .and_then(Value::as_array_mut)
            .ok_or_else(|| format!("rollout step of wave {wave}, which the header lacks"))?;
        list.push(step);
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_then_assemble_is_the_identity() {
        let doc = r#"{"a":1,"targets":{"e1":{"driver":"x"}},"waves":[{"n":"w0","steps":[{"s":1},{"s":2}]},{"n":"w1","steps":[]},{"n":"w2","steps":[{"s":3}]}]}"#;
        let s = split(doc).expect("splits");
        assert_eq!(
            s.header,
            r#"{"a":1,"targets":{},"waves":[{"n":"w0","steps":[]},{"n":"w1","steps":[]},{"n":"w2","steps":[]}]}"#
        );
        assert_eq!(s.targets, r#"{"e1":{"driver":"x"}}"#);
        let places: Vec<(u32, u32)> = s.steps.iter().map(|x| (x.wave, x.idx)).collect();
        assert_eq!(places, vec![(0, 0), (0, 1), (2, 0)]);
        let back = assemble(
            &s.header,
            &s.targets,
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
    fn a_step_of_a_missing_wave_is_an_error() {
        let err = assemble(r#"{"targets":{},"waves":[]}"#, "{}", [(3, "{}".to_owned())]);
        assert!(err.is_err());
    }
}
