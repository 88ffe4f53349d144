//! Error positions and messages of `convoy.yml` validation, one snapshot per
//! rule, and the shipped example being valid.

use std::collections::BTreeMap;

use convoy::config::{Config, DriverConfig};
use convoy::plan::model::{FailureBudget, FreezeWindow, OnDrift};
use convoy::spec::{CheckContext, Limits, parse_spec, parse_spec_bytes};

/// Every error of `yaml` as `convoy.yml:LINE:COL: message` lines, or `OK`.
fn check_with(yaml: &str, ctx: &CheckContext) -> String {
    match parse_spec(yaml, ctx) {
        Ok(_) => "OK".into(),
        Err(errors) => errors
            .iter()
            .map(|e| e.render("convoy.yml"))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

fn check(yaml: &str) -> String {
    check_with(yaml, &CheckContext::default())
}

fn operator() -> Config {
    let toml = "[github]\nwebhook_secret = \"s\"\n\
                [drivers.agent]\nkind = \"http-agent\"\nallowed_hosts = [\"127.0.0.1\", \"*.internal.example.com\"]\n\
                [drivers.helm]\nkind = \"command\"\nargv = [\"helm\"]\nstatus_argv = [\"status\"]\n";
    Config::from_toml(toml, "convoy.toml", &[]).unwrap()
}

/// A valid file the cases below break one rule at a time.
const BASE: &str = "\
version: 1
services:
  db:
    paths: [\"migrations/**\"]
  api:
    paths: [\"services/api/**\"]
    depends_on: [db]
environments:
  - name: one
    labels: { ring: canary }
    driver: agent
    url: http://127.0.0.1:9101
  - name: two
    labels: { ring: main }
    driver: agent
    url: http://127.0.0.1:9102
waves:
  - name: canary
    selector: { ring: canary }
";

#[test]
fn base_is_valid() {
    assert_eq!(check(BASE), "OK");
    assert_eq!(
        check_with(BASE, &CheckContext::from_config(&operator())),
        "OK"
    );
}

#[test]
fn example_is_valid_against_the_shipped_operator_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let yaml = std::fs::read_to_string(format!("{root}/config/convoy.example.yml")).unwrap();
    let toml = std::fs::read_to_string(format!("{root}/config/convoy.toml")).unwrap();
    let env = [("CONVOY_GITHUB_WEBHOOK_SECRET".to_string(), "s".to_string())];
    let config = Config::from_toml(&toml, "convoy.toml", &env).unwrap();
    let spec = parse_spec(&yaml, &CheckContext::from_config(&config)).unwrap_or_else(|e| {
        panic!("{e:#?}");
    });
    assert_eq!(spec.services.len(), 3);
    assert_eq!(spec.environments.len(), 12);
    assert_eq!(spec.waves.len(), 3);
    assert_eq!(spec.policy.freeze.len(), 2);
    assert!(matches!(spec.policy.freeze[1], FreezeWindow::Weekly { .. }));
    assert_eq!(spec.waves[2].failure_budget, FailureBudget::Percent(10));
    assert!(spec.waves[2].approval);
    assert_eq!(spec.policy.max_parallel, 5);
    assert_eq!(spec.policy.on_drift, OnDrift::Halt);
    assert!(spec.policy.forbid_self_approval);
}

#[test]
fn defaults_apply() {
    let spec = parse_spec(BASE, &CheckContext::default()).unwrap();
    let p = &spec.policy;
    assert_eq!(p.retries, 2);
    assert_eq!(p.backoff.as_secs(), 10);
    assert_eq!(p.deploy_timeout.as_secs(), 600);
    assert_eq!(p.verify_timeout.as_secs(), 300);
    assert_eq!(p.poll_interval.as_secs(), 2);
    assert_eq!(p.max_parallel, 10);
    assert_eq!(spec.waves[0].bake.as_secs(), 0);
    assert_eq!(spec.waves[0].failure_budget, FailureBudget::Count(0));
    assert_eq!(
        spec.environments[0].labels,
        BTreeMap::from([("ring".to_string(), "canary".to_string())])
    );
}

#[test]
fn syntax_error() {
    insta::assert_snapshot!(check("version: 1\nservices: [a,\n"));
}

#[test]
fn empty_and_wrong_shapes() {
    insta::assert_snapshot!(check(""));
    insta::assert_snapshot!("list_document", check("- a\n- b\n"));
    insta::assert_snapshot!("missing_sections", check("version: 1\n"));
}

#[test]
fn version() {
    insta::assert_snapshot!(check(&BASE.replace("version: 1", "version: 2")));
    insta::assert_snapshot!("version_missing", check(&BASE.replace("version: 1\n", "")));
    insta::assert_snapshot!(
        "version_string",
        check(&BASE.replace("version: 1", "version: \"1\""))
    );
}

#[test]
fn unknown_keys_with_suggestions() {
    let yaml = format!("{BASE}policy:\n  retires: 3\n  zzz: 1\nwavez: []\n")
        .replace("    depends_on: [db]", "    depend_on: [db]");
    insta::assert_snapshot!(check(&yaml));
}

#[test]
fn duplicate_keys() {
    insta::assert_snapshot!(check(&format!(
        "{BASE}policy:\n  retries: 1\n  retries: 2\n"
    )));
}

#[test]
fn names_invalid_and_duplicate() {
    let yaml = BASE
        .replace("  api:\n", "  Api_1:\n")
        .replace("name: two", "name: one")
        .replace("name: canary", "name: -canary");
    insta::assert_snapshot!(check(&yaml));
}

#[test]
fn durations() {
    let yaml = format!(
        "{BASE}    bake: 2x\npolicy:\n  backoff: 10\n  deploy_timeout: 0s\n  verify_timeout: soon\n  poll_interval: 1h30m\n"
    );
    insta::assert_snapshot!(check(&yaml));
}

#[test]
fn durations_over_ten_years_are_refused() {
    let yaml = format!("{BASE}    bake: 200000000d\npolicy:\n  deploy_timeout: 3651d\n");
    let out = check(&yaml);
    assert!(
        out.contains("bake: invalid duration `200000000d`: too large (at most 3650d)"),
        "{out}"
    );
    assert!(
        out.contains("deploy_timeout: invalid duration `3651d`: too large (at most 3650d)"),
        "{out}"
    );
}

#[test]
fn environment_names_that_commands_read_as_keywords_are_refused() {
    let base = check(BASE);
    assert!(!base.contains("reserved"), "{base}");
    for word in ["all", "failed"] {
        let yaml = BASE.replacen("name: two", &format!("name: {word}"), 1);
        assert_ne!(yaml, BASE, "BASE names `two`");
        let out = check(&yaml);
        assert!(
            out.contains(&format!("environment name `{word}` is reserved")),
            "{out}"
        );
    }
}

#[test]
fn a_url_with_credentials_is_refused_without_repeating_them() {
    let yaml = BASE.replacen(
        "url: http://127.0.0.1:9102",
        "url: http://deployer:hunter2@127.0.0.1:9102",
        1,
    );
    assert_ne!(yaml, BASE);
    let out = check(&yaml);
    assert!(
        out.contains("the url of environment `two` carries a user name or password"),
        "{out}"
    );
    assert!(!out.contains("hunter2"), "{out}");
}

#[test]
fn percent_range_and_increase() {
    let yaml = format!(
        "{BASE}  - name: a\n    percent: 50\n  - name: b\n    percent: 40\n  - name: c\n    percent: 101\n  - name: d\n    percent: 0\n  - name: e\n    percent: 10%\n"
    );
    insta::assert_snapshot!(check(&yaml));
}

#[test]
fn failure_budget_forms() {
    let ok = format!(
        "{BASE}    failure_budget: 3\n  - name: b\n    failure_budget: 2%\n  - name: c\n    failure_budget: \"4\"\n"
    );
    let spec = parse_spec(&ok, &CheckContext::default()).unwrap();
    let budgets: Vec<FailureBudget> = spec.waves.iter().map(|w| w.failure_budget).collect();
    assert_eq!(
        budgets,
        [
            FailureBudget::Count(3),
            FailureBudget::Percent(2),
            FailureBudget::Count(4)
        ]
    );
    let bad = format!(
        "{BASE}    failure_budget: -1\n  - name: b\n    failure_budget: 101%\n  - name: c\n    failure_budget: lots\n"
    );
    insta::assert_snapshot!(check(&bad));
}

#[test]
fn selectors() {
    let yaml = BASE.replace(
        "selector: { ring: canary }",
        "selector: { rnig: canary, ring: canari }",
    );
    insta::assert_snapshot!(check(&yaml));
    // A value no environment has, far from any, is allowed (no canary now).
    let ok = BASE.replace(
        "selector: { ring: canary }",
        "selector: { ring: experimental }",
    );
    assert_eq!(check(&ok), "OK");
}

#[test]
fn references_with_suggestions() {
    let yaml = BASE
        .replace("depends_on: [db]", "depends_on: [dbb, cache]")
        .replace(
            "    url: http://127.0.0.1:9102\n",
            "    url: http://127.0.0.1:9102\n    services: [apj]\n    depends_on: [onr]\n",
        );
    insta::assert_snapshot!(check(&yaml));
}

#[test]
fn service_cycle() {
    let yaml = BASE.replace(
        "    paths: [\"migrations/**\"]\n",
        "    paths: [\"migrations/**\"]\n    depends_on: [api]\n",
    );
    insta::assert_snapshot!(check(&yaml));
    insta::assert_snapshot!(
        "service_self_cycle",
        check(&BASE.replace("depends_on: [db]", "depends_on: [api]"))
    );
}

#[test]
fn environment_cycle() {
    let yaml = BASE
        .replace(
            "    url: http://127.0.0.1:9101\n",
            "    url: http://127.0.0.1:9101\n    depends_on: [two]\n",
        )
        .replace(
            "    url: http://127.0.0.1:9102\n",
            "    url: http://127.0.0.1:9102\n    depends_on: [one]\n",
        );
    insta::assert_snapshot!(check(&yaml));
}

#[test]
fn environment_dependency_on_a_later_wave() {
    // `one` is the canary; it may not wait for `two`, which comes after.
    let yaml = BASE.replace(
        "    url: http://127.0.0.1:9101\n",
        "    url: http://127.0.0.1:9101\n    depends_on: [two]\n",
    );
    insta::assert_snapshot!(check(&yaml));
    // The other way round is fine.
    let ok = BASE.replace(
        "    url: http://127.0.0.1:9102\n",
        "    url: http://127.0.0.1:9102\n    depends_on: [one]\n",
    );
    assert_eq!(check(&ok), "OK");
}

#[test]
fn freeze_windows() {
    let yaml = format!(
        "{BASE}policy:\n  freeze:\n\
         \x20   - {{ from: \"2026-13-24\", to: \"2026-12-27T00:00:00Z\" }}\n\
         \x20   - {{ from: \"2026-12-27T00:00:00Z\", to: \"2026-12-24T00:00:00Z\", tz: UTC }}\n\
         \x20   - {{ weekly: [fri, sunday, fir], from: \"16:00\", to: \"15:00\", tz: Europe/Berln }}\n\
         \x20   - {{ weekly: [mon], from: \"1600\", to: \"17:00\" }}\n\
         \x20   - {{ weekly: [], from: \"08:00\", to: \"09:00\", tz: UTC }}\n\
         \x20   - {{ reason: nothing }}\n"
    );
    insta::assert_snapshot!(check(&yaml));
}

#[test]
fn policy_enums_and_values() {
    let yaml = format!(
        "{BASE}policy:\n  on_drift: hlat\n  concurrency: supercede\n  auto_rollback: yes\n  retries: -1\n  max_parallel: 0\n  assumed_success: 1.5\n  branches: main\n"
    );
    insta::assert_snapshot!(check(&yaml));
}

#[test]
fn drivers_and_hosts_against_the_operator() {
    let yaml = BASE
        .replace(
            "    driver: agent\n    url: http://127.0.0.1:9101\n",
            "    driver: agnet\n    url: http://127.0.0.1:9101\n",
        )
        .replace(
            "    url: http://127.0.0.1:9102\n",
            "    url: https://evil.example.com/x\n",
        )
        .replace(
            "waves:\n",
            "  - name: three\n    driver: agent\n  - name: four\n    driver: helm\n    url: http://127.0.0.1:1\n  - name: five\n    driver: agent\n    url: ftp://127.0.0.1/\n  - name: six\n    driver: agent\n    url: http://a.internal.example.com:80\n  - name: seven\n    driver: agent\n    url: \"http://[::1]:80\"\nwaves:\n",
        );
    let config = operator();
    insta::assert_snapshot!(check_with(&yaml, &CheckContext::from_config(&config)));
    // Without the operator config only the URL's form is checked.
    insta::assert_snapshot!("drivers_without_operator", check(&yaml));
}

#[test]
fn size_and_count_limits() {
    let big = format!("{BASE}# {}\n", "x".repeat(1024 * 1024));
    insta::assert_snapshot!("too_big", check(&big));
    let ctx = CheckContext {
        drivers: None,
        limits: Limits {
            max_environments: 1,
            ..Limits::default()
        },
    };
    insta::assert_snapshot!("too_many_environments", check_with(BASE, &ctx));
    let not_utf8 = b"version: 1\nservices:\n  a\xff: {}\n";
    let errors = parse_spec_bytes(not_utf8, &CheckContext::default()).unwrap_err();
    assert_eq!(
        errors[0].render("convoy.yml"),
        "convoy.yml:3:4: not valid UTF-8"
    );
}

#[test]
fn every_error_is_reported_not_only_the_first() {
    let yaml = format!("{BASE}policy:\n  retires: 3\n  on_drift: nope\n  backoff: x\n")
        .replace("version: 1", "version: 3");
    let errors = parse_spec(&yaml, &CheckContext::default()).unwrap_err();
    assert_eq!(errors.len(), 4, "{errors:#?}");
}

#[test]
fn names_that_yaml_would_read_as_other_types_stay_names() {
    let yaml = BASE
        .replace("name: one", "name: \"no\"")
        .replace("name: two", "name: 007");
    let spec = parse_spec(&yaml.replace("\"no\"", "no"), &CheckContext::default()).unwrap();
    assert_eq!(spec.environments[0].name.as_str(), "no");
    assert_eq!(spec.environments[1].name.as_str(), "007");
}

#[test]
fn driver_config_kinds_are_what_the_tests_assume() {
    let c = operator();
    assert!(matches!(c.drivers["agent"], DriverConfig::HttpAgent(_)));
    assert!(matches!(c.drivers["helm"], DriverConfig::Command(_)));
}
