//! Golden tests of every reply a command can get: `/convoy help` and one per
//! kind of error. Review changes with `cargo insta review`.

use convoy::commands::{
    AuthInput, Context, Decision, NotApplicable, NotApplicableReason, Permission, Rejection,
    ReplyInput, Verb, applicable, authorize, parse_comment, render_help, render_rejection,
    validate,
};
use convoy::domain::{EnvName, ServiceName, WaveName};

const P: &str = "/convoy";

/// Parses a one-line comment and renders the rejection it earns at parse
/// time or against the standard context.
fn reply_to(line: &str) -> String {
    let parsed = parse_comment(line, P);
    assert_eq!(parsed.len(), 1, "{line}");
    let parsed = &parsed[0];
    let rejection: Rejection = match &parsed.result {
        Err(error) => error.clone().into(),
        Ok(command) => validate(command, &context())
            .expect_err("the example should be rejected")
            .into(),
    };
    render_rejection(
        &rejection,
        ReplyInput {
            prefix: P,
            line: Some(&parsed.text),
        },
    )
}

fn context() -> Context {
    let mut environments: Vec<EnvName> = ["acme-eu", "acme-us", "globex-eu"]
        .into_iter()
        .map(EnvName::new)
        .collect();
    environments.extend((1..=25).map(|i| EnvName::new(format!("tenant-{i:02}"))));
    Context {
        environments,
        waves: ["canary", "early", "rest"]
            .into_iter()
            .map(WaveName::new)
            .collect(),
        services: ["api", "web"].into_iter().map(ServiceName::new).collect(),
    }
}

fn refused(auth: AuthInput<'_>) -> String {
    let Decision::Refused(refusal) = authorize(&auth, &[]) else {
        panic!("expected a refusal");
    };
    render_rejection(
        &refusal.into(),
        ReplyInput {
            prefix: P,
            line: None,
        },
    )
}

#[test]
fn help() {
    let help = render_help(P);
    // Generated from the table: every command appears with its syntax.
    for spec in convoy::commands::COMMANDS.iter() {
        let syntax = format!("{P} {}", spec.syntax()).replace('|', "\\|");
        assert!(help.contains(&syntax), "{syntax} missing from help");
    }
    insta::assert_snapshot!("help", help);
}

#[test]
fn help_follows_the_configured_prefix() {
    let help = render_help("@deploy");
    assert!(help.contains("`@deploy retry [ENV…\\|failed]`"));
    assert!(!help.contains("/convoy"));
}

#[test]
fn unknown_command() {
    insta::assert_snapshot!(
        "unknown_command_with_suggestion",
        reply_to("/convoy rety acme-eu")
    );
    insta::assert_snapshot!(
        "unknown_command_without_suggestion",
        reply_to("/convoy deploy")
    );
    insta::assert_snapshot!("missing_command", reply_to("/convoy"));
}

#[test]
fn unknown_names() {
    insta::assert_snapshot!(
        "unknown_environment_with_suggestion",
        reply_to("/convoy retry acmeeu")
    );
    insta::assert_snapshot!(
        "unknown_environments_mixed",
        reply_to("/convoy skip acmeeu globex-eu nowhere")
    );
    insta::assert_snapshot!("unknown_wave", reply_to("/convoy approve erly"));
    insta::assert_snapshot!("unknown_service", reply_to("/convoy adopt acme-eu wep"));
    let many: Vec<String> = (0..23).map(|i| format!("x{i}")).collect();
    insta::assert_snapshot!(
        "many_unknown_names",
        reply_to(&format!("/convoy rollback {}", many.join(" ")))
    );
}

#[test]
fn invalid_arguments() {
    insta::assert_snapshot!("missing_argument", reply_to("/convoy skip"));
    insta::assert_snapshot!("unexpected_arguments", reply_to("/convoy pause now please"));
    insta::assert_snapshot!(
        "keyword_with_names",
        reply_to("/convoy retry failed acme-eu")
    );
    insta::assert_snapshot!("invalid_duration", reply_to("/convoy freeze 10x"));
    insta::assert_snapshot!("zero_duration", reply_to("/convoy freeze 0s maintenance"));
    let many = "/convoy status\n".repeat(11);
    let parsed = parse_comment(&many, P);
    let last = parsed.last().expect("commands");
    let rejection: Rejection = last.result.clone().expect_err("too many").into();
    insta::assert_snapshot!(
        "too_many_commands",
        render_rejection(
            &rejection,
            ReplyInput {
                prefix: P,
                line: Some(&last.text)
            }
        )
    );
}

#[test]
fn permission_refused() {
    let base = AuthInput {
        verb: Verb::Retry,
        user: "reader",
        permission: Permission::Read,
        approvers: &[],
        pr_author: Some("author"),
        forbid_self_approval: true,
    };
    insta::assert_snapshot!("needs_write", refused(base));
    let approvers = vec!["@acme/sre".to_owned(), "alice".to_owned()];
    insta::assert_snapshot!(
        "not_an_approver",
        refused(AuthInput {
            verb: Verb::Approve,
            user: "bob",
            permission: Permission::Write,
            approvers: &approvers,
            ..base
        })
    );
    insta::assert_snapshot!(
        "self_approval",
        refused(AuthInput {
            verb: Verb::Approve,
            user: "author",
            permission: Permission::Admin,
            ..base
        })
    );
}

#[test]
fn not_applicable() {
    let render = |na: NotApplicable| {
        render_rejection(
            &na.into(),
            ReplyInput {
                prefix: P,
                line: Some("/convoy x"),
            },
        )
    };
    insta::assert_snapshot!(
        "not_applicable_open_pr",
        render(applicable(Verb::Retry, convoy::commands::Venue::OpenPullRequest).unwrap_err())
    );
    insta::assert_snapshot!(
        "not_applicable_state",
        render(NotApplicable {
            verb: Verb::Resume,
            reason: NotApplicableReason::State(
                "has nothing to resume: the rollout is not paused".into()
            ),
        })
    );
}

#[test]
fn replies_stay_short_whatever_was_typed() {
    let names: Vec<String> = (0..3000).map(|i| format!("bogus-{i}")).collect();
    let reply = reply_to(&format!("/convoy retry {}", names.join(" ")));
    assert!(reply.contains("and 2980 more unknown names"), "{reply}");
    assert!(reply.len() < 4000, "{} bytes", reply.len());
    let reply = reply_to(&format!("/convoy pause {}", names.join(" ")));
    assert!(reply.contains("and 2980 more words"), "{reply}");
    assert!(reply.len() < 4000, "{} bytes", reply.len());
}

#[test]
fn user_text_cannot_break_out_of_its_code_span() {
    let reply = reply_to("/convoy retry `@everyone` <b>x</b>");
    // Both names are unknown; they appear only inside code spans.
    assert!(reply.contains("`` `@everyone` ``"), "{reply}");
    assert!(reply.contains("`<b>x</b>`"), "{reply}");
    let unknown = reply_to("/convoy @everyone");
    assert!(unknown.contains("`@everyone`"), "{unknown}");
}

proptest::proptest! {
    /// Whatever was typed, every reply renders from its template (never the
    /// fallback) and keeps user text inside code spans.
    #[test]
    fn every_reply_renders(words in proptest::collection::vec("\\PC{1,12}", 0..5)) {
        let line = format!("{P} {}", words.join(" "));
        for parsed in parse_comment(&line, P) {
            let rejection: Option<Rejection> = match &parsed.result {
                Err(error) => Some(error.clone().into()),
                Ok(command) => validate(command, &context()).err().map(Into::into),
            };
            if let Some(rejection) = rejection {
                let reply = render_rejection(&rejection, ReplyInput { prefix: P, line: Some(&parsed.text) });
                proptest::prop_assert!(!reply.contains("could not render"), "{}", reply);
                proptest::prop_assert!(reply.ends_with('\n') && reply.len() > 10);
            }
        }
    }
}
