//! Which services a merge affects (SPEC 6.1).

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::domain::ServiceName;
use crate::spec::model::{ConvoySpec, ServiceSpec};

/// The repository file; a change to it is judged by what it changes, not by
/// globs.
pub const SPEC_FILE: &str = "convoy.yml";

/// What changed since the last successful rollout.
#[derive(Clone, Copy, Debug)]
pub enum Change<'a> {
    /// Nothing was rolled out on this branch before: every service.
    FirstRollout,
    Diff {
        /// Paths changed between the two commits (a rename as both paths;
        /// a submodule as its folder with a trailing `/`).
        paths: &'a [String],
        /// `convoy.yml` at the previous commit; `None` when it was missing
        /// or invalid there (then a change to it affects every service, as
        /// nothing can be compared).
        previous: Option<&'a ConvoySpec>,
    },
}

impl<'a> Change<'a> {
    /// The change a [`ChangeSet`](crate::git::ChangeSet) read from the
    /// repository describes.
    pub fn of(set: &'a crate::git::ChangeSet) -> Change<'a> {
        match &set.changed_paths {
            None => Change::FirstRollout,
            Some(paths) => Change::Diff {
                paths,
                previous: set.previous_spec.as_ref(),
            },
        }
    }
}

/// Compiles a service's globs. `*` does not cross `/`; `**` does. Globs were
/// validated with the same builder, so an error here only drops that glob.
pub fn compile_globs(paths: &[String]) -> GlobSet {
    let mut b = GlobSetBuilder::new();
    for p in paths {
        if let Ok(g) = GlobBuilder::new(p).literal_separator(true).build() {
            b.add(g);
        }
    }
    b.build().unwrap_or_else(|_| GlobSet::empty())
}

/// The affected services, in file order:
/// - first rollout: all;
/// - services without `paths`: always;
/// - a service whose globs match a changed path (other than `convoy.yml`);
/// - when `convoy.yml` changed: a service that is new or whose definition
///   (paths, depends_on) differs from the previous commit's. A change to
///   environments, waves or policy alone affects nothing.
pub fn affected_services(spec: &ConvoySpec, change: Change<'_>) -> Vec<ServiceName> {
    let (paths, previous) = match change {
        Change::FirstRollout => {
            return spec.services.iter().map(|s| s.name.clone()).collect();
        }
        Change::Diff { paths, previous } => (paths, previous),
    };
    let spec_changed = paths.iter().any(|p| p == SPEC_FILE);
    let other: Vec<&str> = paths
        .iter()
        .map(String::as_str)
        .filter(|p| *p != SPEC_FILE)
        .collect();
    spec.services
        .iter()
        .filter(|s| {
            s.paths.is_empty() || (spec_changed && definition_changed(s, previous)) || {
                let set = compile_globs(&s.paths);
                other.iter().any(|p| match p.strip_suffix('/') {
                    Some(folder) => submodule_matches(&s.paths, &set, folder),
                    None => set.is_match(p),
                })
            }
        })
        .map(|s| s.name.clone())
        .collect()
}

/// Whether a service's globs may cover what changed in the submodule at
/// `folder`. Its files are another repository's, so any of them may have
/// changed: the folder counts when a glob names it or could match a path
/// below it.
fn submodule_matches(globs: &[String], set: &GlobSet, folder: &str) -> bool {
    set.is_match(folder) || globs.iter().any(|g| reaches_into(g, folder))
}

/// Whether `glob` could match some path below `folder`: its leading
/// components match the folder's one by one (`vendor/*/src/**` reaches
/// into `vendor/lib`), and something is left for below; a `**` on the way
/// may match anything below (`**/*.rs` reaches into every folder). A
/// component that does not compile on its own (a brace spanning a `/`)
/// counts as matching: a bump wrongly skipped is worse than one deployed.
fn reaches_into(glob: &str, folder: &str) -> bool {
    let mut parts = glob.split('/');
    for name in folder.split('/') {
        match parts.next() {
            None => return false,
            Some("**") => return true,
            Some(part) => {
                let matches = GlobBuilder::new(part)
                    .literal_separator(true)
                    .build()
                    .map_or(true, |g| g.compile_matcher().is_match(name));
                if !matches {
                    return false;
                }
            }
        }
    }
    parts.next().is_some()
}

fn definition_changed(service: &ServiceSpec, previous: Option<&ConvoySpec>) -> bool {
    match previous.and_then(|p| p.service(service.name.as_str())) {
        None => true,
        Some(old) => !old.same_definition(service),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{CheckContext, parse_spec};

    const YML: &str = "\
version: 1
services:
  db:
    paths: [\"migrations/**\"]
  api:
    paths: [\"services/api/**\", \"libs/**\"]
    depends_on: [db]
  web:
    paths: [\"services/web/**\", \"*.md\"]
  cron: {}
environments:
  - { name: a, driver: agent }
";

    fn spec(text: &str) -> ConvoySpec {
        parse_spec(text, &CheckContext::default()).unwrap()
    }

    fn names(v: Vec<ServiceName>) -> Vec<String> {
        v.into_iter().map(|s| s.into_inner()).collect()
    }

    fn diff(s: &ConvoySpec, paths: &[&str], prev: Option<&ConvoySpec>) -> Vec<String> {
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        names(affected_services(
            s,
            Change::Diff {
                paths: &paths,
                previous: prev,
            },
        ))
    }

    #[test]
    fn globs_pick_services_and_pathless_ones_always_come() {
        let s = spec(YML);
        assert_eq!(
            names(affected_services(&s, Change::FirstRollout)),
            ["db", "api", "web", "cron"]
        );
        assert_eq!(
            diff(&s, &["services/web/app.js"], Some(&s)),
            ["web", "cron"]
        );
        assert_eq!(diff(&s, &["libs/x/y.rs"], Some(&s)), ["api", "cron"]);
        assert_eq!(diff(&s, &["README.md"], Some(&s)), ["web", "cron"]);
        // `*` does not cross a slash.
        assert_eq!(diff(&s, &["docs/README.md"], Some(&s)), ["cron"]);
        assert_eq!(diff(&s, &[], Some(&s)), ["cron"]);
    }

    #[test]
    fn a_submodule_counts_for_the_globs_that_reach_into_it() {
        let s = spec(
            "version: 1\nservices:\n  api:\n    paths: [\"services/api/**\"]\n  \
             lib:\n    paths: [\"vendor/lib/src/*.rs\"]\n  pinned:\n    paths: [\"vendor/pin\"]\n  \
             any:\n    paths: [\"vendor/*/**\"]\n  \
             src:\n    paths: [\"services/*/src/**\"]\n  \
             web:\n    paths: [\"services/web/**\"]\n\
             environments:\n  - { name: a, driver: agent }\n",
        );
        assert_eq!(diff(&s, &["services/api/"], Some(&s)), ["api", "src"]);
        assert_eq!(diff(&s, &["vendor/lib/"], Some(&s)), ["lib", "any"]);
        assert_eq!(diff(&s, &["vendor/pin/"], Some(&s)), ["pinned", "any"]);
        // A folder that only shares a prefix with a glob's is not inside it.
        assert_eq!(diff(&s, &["services/apiary/"], Some(&s)), ["src"]);
        assert_eq!(diff(&s, &["vendor/"], Some(&s)), ["lib", "pinned", "any"]);
        // A plain file of that name is not a folder.
        assert_eq!(diff(&s, &["services/api"], Some(&s)), Vec::<String>::new());
        // A glob for files anywhere may match inside any submodule.
        let docs = spec(
            "version: 1\nservices:\n  docs:\n    paths: [\"**/*.md\"]\n\
             environments:\n  - { name: a, driver: agent }\n",
        );
        assert_eq!(diff(&docs, &["vendor/lib/"], Some(&docs)), ["docs"]);
        assert_eq!(
            diff(&docs, &["vendor/lib"], Some(&docs)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn convoy_yml_counts_only_through_changed_services() {
        let s = spec(YML);
        assert_eq!(diff(&s, &["convoy.yml"], Some(&s)), ["cron"]);
        let changed = spec(&YML.replace("\"libs/**\"", "\"lib/**\""));
        assert_eq!(diff(&changed, &["convoy.yml"], Some(&s)), ["api", "cron"]);
        let more_envs = spec(&format!("{YML}  - {{ name: b, driver: agent }}\n"));
        assert_eq!(diff(&more_envs, &["convoy.yml"], Some(&s)), ["cron"]);
        // Nothing to compare with: every service.
        assert_eq!(
            diff(&s, &["convoy.yml"], None),
            ["db", "api", "web", "cron"]
        );
    }
}
