//! The `http-agent` driver against the simulated fleet (real HTTP on
//! 127.0.0.1), SPEC 4.1.

use std::collections::BTreeMap;
use std::time::Duration;

use convoy::config::{DriverConfig, HttpAgentDriver, Secret};
use convoy::domain::{CommitSha, EnvName, RolloutId, ServiceName};
use convoy::drivers::{
    self, AgentStatus, Driver, Drivers, Endpoint, FailureKind, HttpAgent, PreflightOutcome,
    StepRequest,
};
use convoy::testkit::fleet::{AgentKnobs, Fleet};

const V1: &str = "1111111111111111111111111111111111111111";

fn agent_config(timeout: Duration) -> HttpAgentDriver {
    HttpAgentDriver {
        allowed_hosts: vec!["127.0.0.1".into()],
        headers: BTreeMap::from([("Authorization".to_string(), Secret::new("Bearer t0ps3cret"))]),
        timeout,
    }
}

fn agent() -> HttpAgent {
    HttpAgent::new("agent", &agent_config(Duration::from_secs(5))).unwrap()
}

fn endpoint(fleet: &Fleet, env: &str) -> Endpoint {
    Endpoint {
        environment: EnvName::new(env),
        url: Some(fleet.url(env)),
    }
}

fn request(fleet: &Fleet, env: &str, attempt: u32) -> StepRequest {
    StepRequest {
        rollout: RolloutId::new("r-1"),
        endpoint: endpoint(fleet, env),
        service: ServiceName::new("api"),
        version: CommitSha::new(V1),
        attempt,
    }
}

#[tokio::test]
async fn deploy_then_status_reports_the_new_version() {
    let fleet = Fleet::start(["acme"], 1).await.unwrap();
    let a = agent();
    let api = ServiceName::new("api");
    let before = a.status(&endpoint(&fleet, "acme"), &api).await.unwrap();
    assert_eq!(
        before,
        AgentStatus {
            service: "api".into(),
            version: None,
            healthy: false,
            message: Some("ok".into()),
        }
    );
    a.deploy(&request(&fleet, "acme", 1)).await.unwrap();
    let after = a.status(&endpoint(&fleet, "acme"), &api).await.unwrap();
    assert_eq!(after.version.as_deref(), Some(V1));
    assert!(after.healthy);

    let deploys = fleet.deploys();
    assert_eq!(deploys.len(), 1);
    let d = &deploys[0];
    assert_eq!(
        (
            d.environment.as_str(),
            d.service.as_str(),
            d.version.as_str(),
            d.rollout.as_str(),
            d.attempt,
            d.status
        ),
        ("acme", "api", V1, "r-1", 1, 202)
    );
    // The configured header reached the agent.
    let reqs = fleet.requests();
    assert!(reqs.iter().all(|r| r.headers.get("authorization").map(String::as_str) == Some("Bearer t0ps3cret")));
    // A repeated deploy of the same step is a no-op for the agent.
    a.deploy(&request(&fleet, "acme", 1)).await.unwrap();
    assert!(fleet.deploys()[1].repeat);
    assert!(fleet.overlapping_deploys().is_empty());
}

#[tokio::test]
async fn client_errors_are_permanent_and_server_errors_transient() {
    let fleet = Fleet::start(["bad", "busy", "dead"], 1).await.unwrap();
    fleet.update_knobs("bad", |k| k.permanent_failure = true);
    fleet.update_knobs("busy", |k| k.transient_failure_rate = 1.0);
    fleet.update_knobs("dead", |k| k.unreachable = true);
    let a = agent();

    let e = a.deploy(&request(&fleet, "bad", 1)).await.unwrap_err();
    assert_eq!(e.kind, FailureKind::Permanent);
    assert_eq!(
        e.message,
        "deploy: HTTP 422: this agent refuses every deploy"
    );

    let e = a.deploy(&request(&fleet, "busy", 1)).await.unwrap_err();
    assert_eq!(e.kind, FailureKind::Transient);
    assert!(e.message.starts_with("deploy: HTTP 503"), "{e}");

    let e = a.deploy(&request(&fleet, "dead", 1)).await.unwrap_err();
    assert_eq!(e.kind, FailureKind::Transient);
    assert_eq!(e.message, "deploy: connection failed");
    // Unknown environment on the agent: 404, a client error.
    let e = a.deploy(&request(&fleet, "nobody", 1)).await.unwrap_err();
    assert_eq!(e.kind, FailureKind::Permanent);
}

#[tokio::test]
async fn a_slow_agent_times_out_transiently() {
    let fleet = Fleet::start(["slow"], 1).await.unwrap();
    fleet.update_knobs("slow", |k| k.latency = Duration::from_secs(3));
    let a = HttpAgent::new("agent", &agent_config(Duration::from_millis(200))).unwrap();
    let e = a.deploy(&request(&fleet, "slow", 1)).await.unwrap_err();
    assert_eq!(e.kind, FailureKind::Transient);
    assert_eq!(e.message, "deploy: timed out");
}

#[tokio::test]
async fn status_shows_unhealthy_and_slow_health() {
    let fleet = Fleet::start(["sick", "slow"], 1).await.unwrap();
    fleet.update_knobs("sick", |k| k.unhealthy = true);
    fleet.update_knobs("slow", |k| k.healthy_after = Duration::from_secs(60));
    let a = agent();
    let api = ServiceName::new("api");
    for env in ["sick", "slow"] {
        a.deploy(&request(&fleet, env, 1)).await.unwrap();
        let s = a.status(&endpoint(&fleet, env), &api).await.unwrap();
        assert_eq!(s.version.as_deref(), Some(V1));
        assert!(!s.healthy, "{env}");
    }
    // Out of band: someone else deployed.
    fleet.set_version("sick", "api", Some("hotfix"));
    let s = a.status(&endpoint(&fleet, "sick"), &api).await.unwrap();
    assert_eq!(s.version.as_deref(), Some("hotfix"));
}

#[tokio::test]
async fn preflight_404_means_none_and_answers_are_passed_on() {
    let fleet = Fleet::start(["plain", "yes", "no"], 1).await.unwrap();
    fleet.update_knobs("yes", |k| k.preflight = Some((true, String::new())));
    fleet.update_knobs("no", |k| k.preflight = Some((false, "disk full".into())));
    let a = agent();
    let api = ServiceName::new("api");
    let v = CommitSha::new(V1);
    assert_eq!(
        a.preflight(&endpoint(&fleet, "plain"), &api, &v)
            .await
            .unwrap(),
        PreflightOutcome::NotProvided
    );
    assert_eq!(
        a.preflight(&endpoint(&fleet, "yes"), &api, &v)
            .await
            .unwrap(),
        PreflightOutcome::Ok
    );
    assert_eq!(
        a.preflight(&endpoint(&fleet, "no"), &api, &v)
            .await
            .unwrap(),
        PreflightOutcome::Refused {
            reason: "disk full".into()
        }
    );
}

#[tokio::test]
async fn a_host_outside_allowed_hosts_is_refused_before_any_request() {
    let fleet = Fleet::start(["acme"], 1).await.unwrap();
    let a = agent();
    // Same server, but named by a host the operator did not allow.
    let url = fleet.url("acme").replace("127.0.0.1", "localhost");
    let req = StepRequest {
        endpoint: Endpoint {
            environment: EnvName::new("acme"),
            url: Some(url.clone()),
        },
        ..request(&fleet, "acme", 1)
    };
    let e = a.deploy(&req).await.unwrap_err();
    assert_eq!(e.kind, FailureKind::Permanent);
    assert_eq!(
        e.message,
        "host `localhost` is not in the allowed_hosts of driver `agent`"
    );
    let e = a
        .status(&req.endpoint, &ServiceName::new("api"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, FailureKind::Permanent);
    let e = a
        .preflight(&req.endpoint, &ServiceName::new("api"), &CommitSha::new(V1))
        .await
        .unwrap_err();
    assert_eq!(e.kind, FailureKind::Permanent);
    assert_eq!(fleet.request_count(), 0, "nothing may reach the fleet");

    // Credentials smuggled into the URL are refused too.
    let sneaky = fleet.url("acme").replace("http://", "http://user:pw@");
    let e = a
        .status(
            &Endpoint {
                environment: EnvName::new("acme"),
                url: Some(sneaky),
            },
            &ServiceName::new("api"),
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("credentials in the URL"), "{e}");
    assert_eq!(fleet.request_count(), 0);
}

#[test]
fn check_target_validates_driver_names_and_hosts() {
    let configs = BTreeMap::from([(
        "agent".to_string(),
        DriverConfig::HttpAgent(agent_config(Duration::from_secs(5))),
    )]);
    assert!(drivers::check_target(&configs, "agent", Some("http://127.0.0.1:9101")).is_ok());
    assert_eq!(
        drivers::check_target(&configs, "agen", Some("http://127.0.0.1:9101")).unwrap_err(),
        "unknown driver `agen` (the operator defined: agent), did you mean `agent`?"
    );
    assert_eq!(
        drivers::check_target(&configs, "agent", Some("http://evil.example.com/")).unwrap_err(),
        "host `evil.example.com` is not in the allowed_hosts of driver `agent`"
    );
    assert_eq!(
        drivers::check_target(&configs, "agent", None).unwrap_err(),
        "driver `agent` is an http-agent: the environment needs a `url`"
    );
    assert!(
        drivers::check_target(&configs, "agent", Some("file:///etc/passwd"))
            .unwrap_err()
            .contains("speaks http or https")
    );
}

#[test]
fn registry_refuses_undefined_drivers_and_hides_secrets() {
    let configs = BTreeMap::from([(
        "agent".to_string(),
        DriverConfig::HttpAgent(agent_config(Duration::from_secs(5))),
    )]);
    let registry = Drivers::from_config(&configs).unwrap();
    assert!(registry.get("agent").is_ok());
    let e = registry.get("ssh").err().unwrap();
    assert_eq!(e.kind, FailureKind::Permanent);
    assert!(e.message.starts_with("unknown driver `ssh`"), "{e}");
    assert!(!format!("{registry:?}").contains("t0ps3cret"));
    assert!(!format!("{:?}", agent()).contains("t0ps3cret"));

    let bad = BTreeMap::from([(
        "agent".to_string(),
        DriverConfig::HttpAgent(HttpAgentDriver {
            headers: BTreeMap::from([("X-Token".to_string(), Secret::new("bad\nvalue s3cr3t"))]),
            ..agent_config(Duration::from_secs(5))
        }),
    )]);
    let e = Drivers::from_config(&bad).err().unwrap();
    assert!(!e.message.contains("s3cr3t"), "{e}");
}

#[tokio::test]
async fn the_fleet_detects_overlapping_deploys() {
    let fleet = Fleet::start(["acme"], 1).await.unwrap();
    fleet.set_knobs(
        "acme",
        AgentKnobs {
            deploy_duration: Duration::from_secs(30),
            ..AgentKnobs::default()
        },
    );
    let a = agent();
    a.deploy(&request(&fleet, "acme", 1)).await.unwrap();
    // A different version while the first is still in progress: overlap.
    let mut second = request(&fleet, "acme", 1);
    second.version = CommitSha::new("2222222222222222222222222222222222222222");
    a.deploy(&second).await.unwrap();
    assert_eq!(fleet.overlapping_deploys().len(), 1);
    assert_eq!(fleet.peak_concurrent_deploys(), 2);
    // Until the deploy completes, the agent still runs nothing.
    assert_eq!(fleet.version_of("acme", "api"), None);
}

#[tokio::test]
async fn a_thousand_environments_on_one_listener() {
    let envs: Vec<String> = (0..1000).map(|i| format!("env-{i:04}")).collect();
    let fleet = Fleet::start(envs.clone(), 7).await.unwrap();
    let a = std::sync::Arc::new(agent());
    let mut tasks = Vec::new();
    for env in &envs {
        let a = a.clone();
        let req = request(&fleet, env, 1);
        tasks.push(tokio::spawn(async move { a.deploy(&req).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(fleet.deploys().len(), 1000);
    assert_eq!(fleet.version_of("env-0999", "api").as_deref(), Some(V1));
    assert!(fleet.overlapping_deploys().is_empty());
}

#[tokio::test]
async fn seeded_transient_failures_repeat_exactly() {
    async fn outcomes(seed: u64) -> Vec<bool> {
        let fleet = Fleet::start(["flaky"], seed).await.unwrap();
        fleet.update_knobs("flaky", |k| k.transient_failure_rate = 0.5);
        let a = agent();
        let mut out = Vec::new();
        for attempt in 1..=20 {
            let mut req = request(&fleet, "flaky", attempt);
            req.version = CommitSha::new(format!("{attempt:040}"));
            out.push(a.deploy(&req).await.is_ok());
        }
        out
    }
    let first = outcomes(42).await;
    assert_eq!(first, outcomes(42).await);
    assert!(first.iter().any(|ok| *ok) && first.iter().any(|ok| !*ok));
}
