//! Decisions around a command: whether a comment is read at all, who may
//! run what, and the check-run buttons that stand for commands.

use convoy::commands::{
    AuthInput, Button, ButtonError, COMMANDS, Command, CommentFacts, CommentPlace, Decision,
    Ignored, Permission, Refusal, RetryTarget, RollbackTarget, TeamRef, Verb, authorize,
    button_for, command_for_action, comment_place, teams_to_check,
};
use convoy::domain::WaveName;
use proptest::prelude::*;

fn input<'a>(verb: Verb, user: &'a str, permission: Permission) -> AuthInput<'a> {
    AuthInput {
        verb,
        user,
        permission,
        approvers: &[],
        pr_author: Some("author"),
        forbid_self_approval: false,
    }
}

fn team(org: &str, slug: &str) -> TeamRef {
    TeamRef {
        org: org.into(),
        slug: slug.into(),
    }
}

#[test]
fn permissions_are_read_from_githubs_values() {
    assert_eq!(Permission::from_github("admin"), Permission::Admin);
    assert_eq!(Permission::from_github("write"), Permission::Write);
    assert_eq!(Permission::from_github("maintain"), Permission::Write);
    assert_eq!(Permission::from_github("read"), Permission::Read);
    assert_eq!(Permission::from_github("triage"), Permission::Read);
    assert_eq!(Permission::from_github("none"), Permission::None);
    assert_eq!(Permission::from_github("superuser"), Permission::None);
    assert!(Permission::Admin.can_write() && Permission::Write.can_write());
    assert!(!Permission::Read.can_write() && !Permission::None.can_write());
}

#[test]
fn read_commands_are_for_anyone() {
    for verb in [Verb::Help, Verb::Status, Verb::Plan] {
        assert_eq!(
            authorize(&input(verb, "x", Permission::None), &[]),
            Decision::Allowed
        );
    }
}

#[test]
fn a_read_user_may_not_retry_and_is_told_what_is_needed() {
    let decision = authorize(&input(Verb::Retry, "reader", Permission::Read), &[]);
    assert_eq!(
        decision,
        Decision::Refused(Refusal::NeedsWrite {
            verb: Verb::Retry,
            user: "reader".into(),
            have: Permission::Read
        })
    );
    if let Decision::Refused(refusal) = decision {
        assert_eq!(
            refusal.to_string(),
            "`retry` needs write permission on the repository; reader has read"
        );
    }
}

#[test]
fn write_and_admin_may_run_every_write_command() {
    for spec in COMMANDS.iter() {
        for permission in [Permission::Write, Permission::Admin] {
            assert_eq!(
                authorize(&input(spec.verb, "dev", permission), &[]),
                Decision::Allowed,
                "{} with {permission:?}",
                spec.name
            );
        }
        let refused = authorize(&input(spec.verb, "dev", Permission::None), &[]);
        assert_eq!(
            refused == Decision::Allowed,
            spec.access == convoy::commands::Access::Anyone,
            "{}",
            spec.name
        );
    }
}

#[test]
fn approvers_by_login_and_team() {
    let approvers = vec![
        "@acme/sre".to_owned(),
        "alice".to_owned(),
        "@acme/".to_owned(),
    ];
    let ask = |user| AuthInput {
        approvers: &approvers,
        ..input(Verb::Approve, user, Permission::Write)
    };

    // A listed login: no team lookup needed.
    assert!(teams_to_check(&ask("ALICE")).is_empty());
    assert_eq!(authorize(&ask("ALICE"), &[]), Decision::Allowed);

    // Someone else: ask about the team, then decide on the answer.
    assert_eq!(teams_to_check(&ask("bob")), vec![team("acme", "sre")]);
    assert_eq!(
        authorize(&ask("bob"), &[team("ACME", "SRE")]),
        Decision::Allowed
    );
    assert_eq!(
        authorize(&ask("bob"), &[]),
        Decision::Refused(Refusal::NotAnApprover {
            verb: Verb::Approve,
            user: "bob".into(),
            approvers: approvers.clone(),
        })
    );
    // Membership of another team does not count.
    assert!(matches!(
        authorize(&ask("bob"), &[team("acme", "web")]),
        Decision::Refused(Refusal::NotAnApprover { .. })
    ));
}

#[test]
fn approvers_still_need_write() {
    let approvers = vec!["alice".to_owned(), "@acme/sre".to_owned()];
    let ask = AuthInput {
        approvers: &approvers,
        ..input(Verb::Approve, "alice", Permission::Read)
    };
    assert!(
        teams_to_check(&ask).is_empty(),
        "no lookup when the answer cannot help"
    );
    assert_eq!(
        authorize(&ask, &[team("acme", "sre")]),
        Decision::Refused(Refusal::NeedsWrite {
            verb: Verb::Approve,
            user: "alice".into(),
            have: Permission::Read
        })
    );
}

#[test]
fn without_approvers_anyone_with_write_approves() {
    assert_eq!(
        authorize(&input(Verb::Approve, "dev", Permission::Write), &[]),
        Decision::Allowed
    );
    assert!(teams_to_check(&input(Verb::Approve, "dev", Permission::Write)).is_empty());
    assert!(matches!(
        authorize(&input(Verb::Approve, "dev", Permission::Read), &[]),
        Decision::Refused(Refusal::NeedsWrite { .. })
    ));
}

#[test]
fn self_approval_is_refused_when_forbidden() {
    let approvers = vec!["author".to_owned()];
    let forbidden = AuthInput {
        approvers: &approvers,
        forbid_self_approval: true,
        ..input(Verb::Approve, "Author", Permission::Admin)
    };
    assert!(teams_to_check(&forbidden).is_empty());
    assert_eq!(
        authorize(&forbidden, &[]),
        Decision::Refused(Refusal::SelfApproval {
            verb: Verb::Approve,
            user: "Author".into()
        })
    );
    // Allowed when the policy does not forbid it, and for other people.
    let allowed = AuthInput {
        forbid_self_approval: false,
        ..forbidden
    };
    assert_eq!(authorize(&allowed, &[]), Decision::Allowed);
    let approvers_other = vec!["other".to_owned()];
    let other = AuthInput {
        user: "other",
        approvers: &approvers_other,
        ..forbidden
    };
    assert_eq!(authorize(&other, &[]), Decision::Allowed);
    // Off a pull request there is no author to compare with.
    let drift = AuthInput {
        pr_author: None,
        ..forbidden
    };
    assert_eq!(authorize(&drift, &[]), Decision::Allowed);
    // Self-approval only concerns approve: the author may still retry.
    let retry = AuthInput {
        verb: Verb::Retry,
        ..forbidden
    };
    assert_eq!(authorize(&retry, &[]), Decision::Allowed);
}

fn facts<'a>(
    action: &'a str,
    on_pr: bool,
    labels: &'a [&'a str],
    login: &'a str,
) -> CommentFacts<'a> {
    CommentFacts {
        event: "issue_comment",
        action,
        on_pull_request: on_pr,
        issue_labels: labels,
        author_login: login,
        author_type: "User",
    }
}

#[test]
fn which_comments_are_read() {
    assert_eq!(
        comment_place(&facts("created", true, &[], "alice")),
        Ok(CommentPlace::PullRequest)
    );
    assert_eq!(
        comment_place(&facts("created", false, &["bug", "Convoy-Drift"], "alice")),
        Ok(CommentPlace::DriftIssue)
    );
    assert_eq!(
        comment_place(&facts("created", false, &["bug"], "alice")),
        Err(Ignored::OtherIssue)
    );
    assert_eq!(
        comment_place(&facts("edited", true, &[], "alice")),
        Err(Ignored::NotCreated)
    );
    assert_eq!(
        comment_place(&facts("deleted", true, &[], "alice")),
        Err(Ignored::NotCreated)
    );
    assert_eq!(
        comment_place(&facts("created", true, &[], "convoy[bot]")),
        Err(Ignored::ByBot)
    );
    assert_eq!(
        comment_place(&CommentFacts {
            author_type: "Bot",
            ..facts("created", true, &[], "renovate")
        }),
        Err(Ignored::ByBot)
    );
    assert_eq!(
        comment_place(&CommentFacts {
            event: "pull_request_review_comment",
            ..facts("created", true, &[], "a")
        }),
        Err(Ignored::NotAComment)
    );
}

fn waves(names: &[&str]) -> Vec<WaveName> {
    names.iter().map(|n| WaveName::new(*n)).collect()
}

#[test]
fn buttons_for_the_recovery_commands() {
    let plan_waves = waves(&["canary", "a-very-long-wave-name-indeed"]);
    let retry = button_for(
        &Command::Retry {
            target: RetryTarget::Failed,
        },
        &plan_waves,
    )
    .unwrap();
    assert_eq!(
        retry,
        Button {
            identifier: "retry-failed".into(),
            label: "Retry failed".into(),
            description: "Retry the failed steps and resume".into()
        }
    );
    let rollback = button_for(
        &Command::Rollback {
            target: RollbackTarget::All,
        },
        &plan_waves,
    );
    assert_eq!(rollback.unwrap().identifier, "rollback");
    assert_eq!(
        button_for(&Command::Abort, &plan_waves).unwrap().identifier,
        "abort"
    );
    assert_eq!(
        button_for(&Command::Resume, &plan_waves)
            .unwrap()
            .identifier,
        "resume"
    );

    let canary = button_for(
        &Command::Approve {
            wave: Some(WaveName::new("canary")),
        },
        &plan_waves,
    )
    .unwrap();
    assert_eq!(canary.identifier, "approve:canary");
    assert_eq!(canary.label, "Approve canary");
    let long = Command::Approve {
        wave: Some(WaveName::new("a-very-long-wave-name-indeed")),
    };
    let long_button = button_for(&long, &plan_waves).unwrap();
    assert_eq!(long_button.identifier, "approve#1");
    assert_eq!(long_button.label, "Approve");
    assert_eq!(command_for_action("approve#1", &plan_waves), Ok(long));

    // No buttons for commands that need names typed, or for waves that
    // neither fit nor exist.
    assert_eq!(button_for(&Command::Pause, &plan_waves), None);
    assert_eq!(
        button_for(
            &Command::Retry {
                target: RetryTarget::Environments(vec![])
            },
            &plan_waves
        ),
        None
    );
    let stranger = Command::Approve {
        wave: Some(WaveName::new("not-in-this-plan-at-all")),
    };
    assert_eq!(button_for(&stranger, &plan_waves), None);
}

#[test]
fn unknown_identifiers_are_errors() {
    let plan_waves = waves(&["canary"]);
    assert_eq!(
        command_for_action("deploy", &plan_waves),
        Err(ButtonError::Unknown("deploy".into()))
    );
    assert_eq!(
        command_for_action("approve:", &plan_waves),
        Err(ButtonError::Unknown("approve:".into()))
    );
    assert_eq!(
        command_for_action("approve#x", &plan_waves),
        Err(ButtonError::Unknown("approve#x".into()))
    );
    assert_eq!(
        command_for_action("approve#3", &plan_waves),
        Err(ButtonError::NoSuchWave {
            identifier: "approve#3".into(),
            index: 3,
            waves: 1
        })
    );
    assert_eq!(
        command_for_action("approve", &plan_waves),
        Ok(Command::Approve { wave: None })
    );
}

use convoy::commands::buttons::{MAX_DESCRIPTION, MAX_IDENTIFIER, MAX_LABEL};

fn button_command(wave_list: Vec<WaveName>) -> impl Strategy<Value = Command> {
    let pick = if wave_list.is_empty() {
        Just(None).boxed()
    } else {
        prop::option::of(prop::sample::select(wave_list)).boxed()
    };
    prop_oneof![
        Just(Command::Retry {
            target: RetryTarget::Failed
        }),
        Just(Command::Rollback {
            target: RollbackTarget::All
        }),
        Just(Command::Abort),
        Just(Command::Resume),
        pick.prop_map(|wave| Command::Approve { wave }),
    ]
}

/// The limits the buttons are checked against are GitHub's own.
#[test]
fn button_limits_match_githubs_api_description() {
    use convoy::commands::buttons::{MAX_DESCRIPTION, MAX_IDENTIFIER, MAX_LABEL};
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/github/rest-api.openapi.json"
    );
    let text = std::fs::read_to_string(path).expect("shared/github/rest-api.openapi.json");
    let api: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let action = &api["paths"]["/repos/{owner}/{repo}/check-runs"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"]["properties"]["actions"]["items"]["properties"];
    assert_eq!(action["label"]["maxLength"], MAX_LABEL);
    assert_eq!(action["description"]["maxLength"], MAX_DESCRIPTION);
    assert_eq!(action["identifier"]["maxLength"], MAX_IDENTIFIER);
}

proptest! {
    #[test]
    fn every_button_fits_and_maps_back(
        (wave_list, command) in prop::collection::vec("\\PC{1,40}", 0..12)
            .prop_map(|v| v.into_iter().map(WaveName::new).collect::<Vec<_>>())
            .prop_flat_map(|w| (Just(w.clone()), button_command(w)))
    ) {
        let button = button_for(&command, &wave_list).expect("every wave of the plan gets a button");
        prop_assert!(button.identifier.len() <= MAX_IDENTIFIER, "{}", button.identifier);
        prop_assert!(button.label.chars().count() <= MAX_LABEL, "{}", button.label);
        prop_assert!(button.description.chars().count() <= MAX_DESCRIPTION, "{}", button.description);
        prop_assert_eq!(command_for_action(&button.identifier, &wave_list), Ok(command));
    }

    #[test]
    fn arbitrary_identifiers_never_panic(id in "\\PC{0,30}", n in 0usize..5) {
        let wave_list: Vec<WaveName> = (0..n).map(|i| WaveName::new(format!("w{i}"))).collect();
        let _ = command_for_action(&id, &wave_list);
    }
}

/// GitHub's own `issue_comment` examples (shared/github, see its README).
fn issue_comment_examples() -> Vec<serde_json::Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/github/webhook-examples.json"
    );
    let text = std::fs::read_to_string(path).expect("shared/github/webhook-examples.json");
    let all: Vec<serde_json::Value> = serde_json::from_str(&text).expect("valid JSON");
    let event = all
        .into_iter()
        .find(|e| e["name"] == "issue_comment")
        .expect("issue_comment examples");
    event["examples"].as_array().expect("examples").clone()
}

#[test]
fn real_payloads_are_read_or_ignored() {
    use convoy::commands::comment_place_from_payload;
    let examples = issue_comment_examples();
    let created = examples
        .iter()
        .find(|e| e["action"] == "created")
        .expect("a created example")
        .clone();
    // As recorded: a comment on an ordinary issue labelled `bug`.
    assert_eq!(
        comment_place_from_payload("issue_comment", &created),
        Err(Ignored::OtherIssue)
    );

    let mut on_pr = created.clone();
    on_pr["issue"]["pull_request"] =
        serde_json::json!({"url": "https://api.github.com/repos/o/r/pulls/1"});
    assert_eq!(
        comment_place_from_payload("issue_comment", &on_pr),
        Ok(CommentPlace::PullRequest)
    );

    let mut drift = created.clone();
    drift["issue"]["labels"][0]["name"] = "convoy-drift".into();
    assert_eq!(
        comment_place_from_payload("issue_comment", &drift),
        Ok(CommentPlace::DriftIssue)
    );

    let mut by_bot = on_pr.clone();
    by_bot["comment"]["user"]["login"] = "convoy[bot]".into();
    by_bot["comment"]["user"]["type"] = "Bot".into();
    assert_eq!(
        comment_place_from_payload("issue_comment", &by_bot),
        Err(Ignored::ByBot)
    );

    // Trusting author_association would let this one through; we never read it.
    let mut owner_bot = by_bot.clone();
    owner_bot["comment"]["author_association"] = "OWNER".into();
    assert_eq!(
        comment_place_from_payload("issue_comment", &owner_bot),
        Err(Ignored::ByBot)
    );

    for example in examples.iter().filter(|e| e["action"] != "created") {
        let mut example = example.clone();
        example["issue"]["pull_request"] = serde_json::json!({});
        assert_eq!(
            comment_place_from_payload("issue_comment", &example),
            Err(Ignored::NotCreated)
        );
    }

    assert_eq!(
        comment_place_from_payload("issues", &on_pr),
        Err(Ignored::NotAComment)
    );
    assert_eq!(
        comment_place_from_payload("issue_comment", &serde_json::json!({"action": "created"})),
        Err(Ignored::Malformed)
    );
    let mut null_pr = created;
    null_pr["issue"]["pull_request"] = serde_json::Value::Null;
    assert_eq!(
        comment_place_from_payload("issue_comment", &null_pr),
        Err(Ignored::OtherIssue)
    );
}

#[test]
fn reactions_are_valid_against_githubs_api_description() {
    use convoy::commands::Reaction;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/github/rest-api.openapi.json"
    );
    let text = std::fs::read_to_string(path).expect("shared/github/rest-api.openapi.json");
    let api: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let allowed = &api["paths"]["/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions"]["post"]
        ["requestBody"]["content"]["application/json"]["schema"]["properties"]["content"]["enum"];
    let allowed: Vec<&str> = allowed
        .as_array()
        .expect("the reaction enum")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for reaction in [Reaction::Eyes, Reaction::Rocket, Reaction::Confused] {
        assert!(allowed.contains(&reaction.content()), "{reaction:?}");
    }
    assert_eq!(
        [Reaction::Eyes, Reaction::Rocket, Reaction::Confused].map(Reaction::content),
        ["eyes", "rocket", "confused"]
    );
}
