//! The slash-command parser and argument validation: Markdown rules, every
//! command's arguments, typed errors, and properties over arbitrary text.

use std::time::Duration;

use convoy::commands::{
    Command, Context, DurationProblem, MAX_COMMANDS_PER_COMMENT, NameKind, NotApplicableReason,
    ParseError, RetryTarget, RollbackTarget, UnknownName, ValidationError, Venue, Verb, applicable,
    parse_comment, parse_line, validate,
};
use convoy::domain::{EnvName, ServiceName, WaveName};
use proptest::prelude::*;

const P: &str = "/convoy";

/// The commands of a comment, failing the test on a parse error.
fn commands(body: &str) -> Vec<Command> {
    parse_comment(body, P)
        .into_iter()
        .map(|line| {
            line.result
                .unwrap_or_else(|e| panic!("line {}: {e}", line.line))
        })
        .collect()
}

fn one(line: &str) -> Result<Command, ParseError> {
    let parsed = parse_comment(line, P);
    assert_eq!(
        parsed.len(),
        1,
        "expected one command in {line:?}: {parsed:?}"
    );
    parsed.into_iter().next().map(|p| p.result).unwrap()
}

fn envs(names: &[&str]) -> Vec<EnvName> {
    names.iter().map(|n| EnvName::new(*n)).collect()
}

#[test]
fn every_command_parses() {
    let cases: Vec<(&str, Command)> = vec![
        ("/convoy help", Command::Help),
        ("/convoy status", Command::Status),
        ("/convoy plan", Command::Plan),
        (
            "/convoy retry",
            Command::Retry {
                target: RetryTarget::Failed,
            },
        ),
        (
            "/convoy retry failed",
            Command::Retry {
                target: RetryTarget::Failed,
            },
        ),
        (
            "/convoy retry acme-eu acme-us acme-eu",
            Command::Retry {
                target: RetryTarget::Environments(envs(&["acme-eu", "acme-us"])),
            },
        ),
        (
            "/convoy skip acme-eu",
            Command::Skip {
                environments: envs(&["acme-eu"]),
            },
        ),
        ("/convoy pause", Command::Pause),
        ("/convoy resume", Command::Resume),
        ("/convoy abort", Command::Abort),
        ("/convoy approve", Command::Approve { wave: None }),
        (
            "/convoy approve rest",
            Command::Approve {
                wave: Some(WaveName::new("rest")),
            },
        ),
        (
            "/convoy rollback",
            Command::Rollback {
                target: RollbackTarget::All,
            },
        ),
        (
            "/convoy rollback all",
            Command::Rollback {
                target: RollbackTarget::All,
            },
        ),
        (
            "/convoy rollback acme-eu",
            Command::Rollback {
                target: RollbackTarget::Environments(envs(&["acme-eu"])),
            },
        ),
        (
            "/convoy adopt acme-eu",
            Command::Adopt {
                environment: EnvName::new("acme-eu"),
                service: None,
            },
        ),
        (
            "/convoy adopt acme-eu api",
            Command::Adopt {
                environment: EnvName::new("acme-eu"),
                service: Some(ServiceName::new("api")),
            },
        ),
        (
            "/convoy resync acme-eu",
            Command::Resync {
                environment: EnvName::new("acme-eu"),
            },
        ),
        (
            "/convoy freeze",
            Command::Freeze {
                duration: None,
                reason: None,
            },
        ),
        (
            "/convoy freeze 2h",
            Command::Freeze {
                duration: Some(Duration::from_secs(7200)),
                reason: None,
            },
        ),
        (
            "/convoy freeze 1h30m  incident  #42 in eu",
            Command::Freeze {
                duration: Some(Duration::from_secs(5400)),
                reason: Some("incident  #42 in eu".into()),
            },
        ),
        (
            "/convoy freeze incident in eu",
            Command::Freeze {
                duration: None,
                reason: Some("incident in eu".into()),
            },
        ),
        ("/convoy unfreeze", Command::Unfreeze),
    ];
    for (line, expected) in cases {
        assert_eq!(one(line), Ok(expected), "{line}");
    }
}

/// The usage shown in help (from the table's `ArgShape`) says what the
/// parser accepts: required arguments are required, optional ones optional,
/// and nothing takes more than its shape allows.
#[test]
fn the_table_shapes_match_the_parser() {
    use convoy::commands::{ArgShape, COMMANDS};
    for spec in COMMANDS.iter() {
        let bare = parse_line(&format!("{P} {}", spec.name), P).unwrap();
        let two = parse_line(&format!("{P} {} acme-eu api", spec.name), P).unwrap();
        let three = parse_line(&format!("{P} {} acme-eu acme-us globex-eu", spec.name), P).unwrap();
        let required = matches!(
            spec.args,
            ArgShape::Envs | ArgShape::Env | ArgShape::EnvAndOptionalService
        );
        assert_eq!(bare.is_err(), required, "{} with no arguments", spec.name);
        let takes_two = matches!(
            spec.args,
            ArgShape::Envs
                | ArgShape::EnvsOrKeyword(_)
                | ArgShape::EnvAndOptionalService
                | ArgShape::DurationAndReason
        );
        assert_eq!(two.is_ok(), takes_two, "{} with two arguments", spec.name);
        let takes_many = matches!(
            spec.args,
            ArgShape::Envs | ArgShape::EnvsOrKeyword(_) | ArgShape::DurationAndReason
        );
        assert_eq!(
            three.is_ok(),
            takes_many,
            "{} with three arguments",
            spec.name
        );
        if let ArgShape::EnvsOrKeyword(keyword) = spec.args {
            let keyword_alone = parse_line(&format!("{P} {} {keyword}", spec.name), P).unwrap();
            assert_eq!(
                keyword_alone, bare,
                "{} {keyword} means the default",
                spec.name
            );
        }
    }
}

#[test]
fn command_words_ignore_case_but_arguments_do_not() {
    assert_eq!(
        one("/convoy RETRY Acme-EU"),
        Ok(Command::Retry {
            target: RetryTarget::Environments(envs(&["Acme-EU"]))
        })
    );
    assert_eq!(
        one("/convoy retry FAILED"),
        Ok(Command::Retry {
            target: RetryTarget::Failed
        })
    );
}

#[test]
fn the_prefix_must_stand_alone() {
    assert!(parse_comment("/convoyx retry", P).is_empty());
    assert!(parse_comment("/convoy-retry", P).is_empty());
    assert!(parse_comment("please /convoy retry", P).is_empty());
    assert!(parse_comment("`/convoy retry`", P).is_empty());
    assert!(parse_comment("- /convoy retry", P).is_empty());
    assert!(
        parse_comment("/Convoy retry", P).is_empty(),
        "the prefix is case-sensitive"
    );
    assert_eq!(
        one("/convoy\tretry"),
        Ok(Command::Retry {
            target: RetryTarget::Failed
        })
    );
    assert_eq!(one("/convoy"), Err(ParseError::MissingCommand));
    assert_eq!(one("/convoy   "), Err(ParseError::MissingCommand));
}

#[test]
fn other_prefixes_work_and_a_blank_prefix_finds_nothing() {
    let parsed = parse_comment("@convoy-bot abort\n/convoy abort", "@convoy-bot");
    assert_eq!(parsed.len(), 1);
    assert_eq!(parsed[0].result, Ok(Command::Abort));
    assert_eq!(parsed[0].line, 1);
    assert!(parse_comment("/convoy abort", "").is_empty());
    assert!(parse_comment("abort", "  ").is_empty());
    assert_eq!(
        parse_line("  !deploy pause", "!deploy"),
        Some(Ok(Command::Pause))
    );
    assert_eq!(parse_line("text", "!deploy"), None);
}

#[test]
fn up_to_three_spaces_of_indentation() {
    assert_eq!(commands("   /convoy pause"), vec![Command::Pause]);
    assert!(
        parse_comment("    /convoy pause", P).is_empty(),
        "indented code"
    );
    assert!(
        parse_comment("\t/convoy pause", P).is_empty(),
        "a tab is indented code"
    );
    assert!(parse_comment("  \t/convoy pause", P).is_empty());
}

#[test]
fn several_commands_run_in_order_with_their_line_numbers() {
    let body = "Thanks!\n\n/convoy skip acme-eu\nsome text\n/convoy retry\n\n/convoy status";
    let parsed = parse_comment(body, P);
    let lines: Vec<usize> = parsed.iter().map(|p| p.line).collect();
    assert_eq!(lines, vec![3, 5, 7]);
    assert_eq!(parsed[0].text, "/convoy skip acme-eu");
    assert_eq!(
        commands(body),
        vec![
            Command::Skip {
                environments: envs(&["acme-eu"])
            },
            Command::Retry {
                target: RetryTarget::Failed
            },
            Command::Status,
        ]
    );
}

#[test]
fn crlf_line_endings() {
    let body = "hello\r\n/convoy retry acme-eu\r\n```\r\n/convoy abort\r\n```\r\n/convoy pause\r\n";
    assert_eq!(
        commands(body),
        vec![
            Command::Retry {
                target: RetryTarget::Environments(envs(&["acme-eu"]))
            },
            Command::Pause,
        ]
    );
    let parsed = parse_comment("/convoy freeze 1h reason\r\n", P);
    assert_eq!(
        parsed[0].result,
        Ok(Command::Freeze {
            duration: Some(Duration::from_secs(3600)),
            reason: Some("reason".into())
        })
    );
}

#[test]
fn fenced_code_is_ignored() {
    let body = "\
```
/convoy abort
```
/convoy pause
~~~yaml
/convoy abort
~~~
````md
```
/convoy abort
````
/convoy resume
";
    assert_eq!(commands(body), vec![Command::Pause, Command::Resume]);
}

#[test]
fn fences_need_the_same_character_and_enough_of_it() {
    let body = "```\n~~~\n/convoy abort\n``\n/convoy abort\n```\n/convoy pause";
    assert_eq!(commands(body), vec![Command::Pause]);
    let info = "``` bash title=\"x\"\n/convoy abort\n```\n/convoy pause";
    assert_eq!(commands(info), vec![Command::Pause]);
}

#[test]
fn an_unclosed_fence_runs_to_the_end() {
    assert!(parse_comment("text\n```\n/convoy abort\n/convoy pause", P).is_empty());
}

#[test]
fn inline_backticks_do_not_open_a_fence() {
    // ```a`b``` on one line is inline code, not a fence opener.
    assert_eq!(commands("```a`b```\n/convoy pause"), vec![Command::Pause]);
}

#[test]
fn fences_in_list_items() {
    let inside = "- step:\n  ```\n  /convoy abort\n  ```\n/convoy pause";
    assert_eq!(commands(inside), vec![Command::Pause]);
    let opened_on_item = "- ```\n  /convoy abort\n  ```\n/convoy pause";
    assert_eq!(commands(opened_on_item), vec![Command::Pause]);
    // The list item ends at a line indented less than its fence, closing
    // the fence; the ``` there opens a new one at the top level.
    let dedent = "- ```\n  code\n```\n/convoy abort\n```\n/convoy pause";
    assert_eq!(commands(dedent), vec![Command::Pause]);
}

#[test]
fn an_indented_fence_line_inside_a_fence_does_not_close_it() {
    let body = "```\n       ```\n/convoy abort\n```\n/convoy pause";
    assert_eq!(commands(body), vec![Command::Pause]);
}

#[test]
fn block_quotes_and_their_lazy_lines_are_ignored() {
    assert!(parse_comment("> /convoy abort", P).is_empty());
    assert!(parse_comment(">/convoy abort", P).is_empty());
    assert!(parse_comment("> > /convoy abort", P).is_empty());
    assert!(parse_comment("   > /convoy abort", P).is_empty());
    // A line right after quoted text continues the quote on GitHub too.
    assert!(parse_comment("> you wrote:\n/convoy abort", P).is_empty());
    let after_blank = "> you wrote:\n> /convoy abort\n\n/convoy pause";
    assert_eq!(commands(after_blank), vec![Command::Pause]);
    let after_empty_quote_line = ">\n/convoy pause";
    assert_eq!(commands(after_empty_quote_line), vec![Command::Pause]);
    // A quote opening a list item is continued lazily the same way.
    assert!(parse_comment("- > please run\n/convoy abort", P).is_empty());
    assert!(parse_comment("1. > please run\n/convoy abort", P).is_empty());
    assert_eq!(
        commands("- > please run\n\n/convoy pause"),
        vec![Command::Pause]
    );
}

#[test]
fn html_comments_are_ignored() {
    assert!(parse_comment("<!-- /convoy abort -->", P).is_empty());
    assert!(parse_comment("<!--\n/convoy abort\n-->", P).is_empty());
    assert!(parse_comment("text <!--\n/convoy abort\n--> more", P).is_empty());
    assert_eq!(
        commands("<!-- hidden -->\n/convoy pause <!-- why -->"),
        vec![Command::Pause],
        "a trailing comment is not an argument"
    );
    assert_eq!(commands("<!---->\n/convoy pause"), vec![Command::Pause]);
    assert_eq!(commands("<!-->\n/convoy pause"), vec![Command::Pause]);
    assert!(parse_comment("<!-- a --> /convoy abort", P).is_empty());
}

#[test]
fn preformatted_html_is_ignored() {
    assert!(parse_comment("<pre>\n/convoy abort\n</pre>", P).is_empty());
    assert!(parse_comment("<PRE class=\"x\">\n/convoy abort\n", P).is_empty());
    assert_eq!(
        commands("<pre>\n/convoy abort\n</pre>\n/convoy pause"),
        vec![Command::Pause]
    );
    assert_eq!(
        commands("<pre>x</pre>\n/convoy pause"),
        vec![Command::Pause]
    );
    assert_eq!(commands("<prefix>\n/convoy pause"), vec![Command::Pause]);
}

#[test]
fn unicode_text_and_names() {
    let body = "Grüße 👋\n/convoy retry café-ü ünïcødé\n/convoy freeze 10m Wartung 🔧";
    assert_eq!(
        commands(body),
        vec![
            Command::Retry {
                target: RetryTarget::Environments(envs(&["café-ü", "ünïcødé"]))
            },
            Command::Freeze {
                duration: Some(Duration::from_secs(600)),
                reason: Some("Wartung 🔧".into())
            },
        ]
    );
    // A no-break space separates words like any whitespace.
    assert_eq!(one("/convoy\u{a0}pause"), Ok(Command::Pause));
    assert_eq!(
        one("/convoy 停止"),
        Err(ParseError::UnknownCommand {
            name: "停止".into(),
            suggestion: None
        })
    );
}

#[test]
fn unknown_commands_suggest_the_closest() {
    assert_eq!(
        one("/convoy rety"),
        Err(ParseError::UnknownCommand {
            name: "rety".into(),
            suggestion: Some("retry")
        })
    );
    assert_eq!(
        one("/convoy retyr"),
        Err(ParseError::UnknownCommand {
            name: "retyr".into(),
            suggestion: Some("retry")
        })
    );
    assert_eq!(
        one("/convoy aprove"),
        Err(ParseError::UnknownCommand {
            name: "aprove".into(),
            suggestion: Some("approve")
        })
    );
    assert_eq!(
        one("/convoy Rollbak all"),
        Err(ParseError::UnknownCommand {
            name: "Rollbak".into(),
            suggestion: Some("rollback")
        })
    );
    assert_eq!(
        one("/convoy deploy"),
        Err(ParseError::UnknownCommand {
            name: "deploy".into(),
            suggestion: None
        })
    );
}

#[test]
fn argument_errors_are_typed() {
    assert_eq!(
        one("/convoy skip"),
        Err(ParseError::MissingArgument {
            verb: Verb::Skip,
            argument: "at least one environment"
        })
    );
    assert_eq!(
        one("/convoy resync"),
        Err(ParseError::MissingArgument {
            verb: Verb::Resync,
            argument: "an environment"
        })
    );
    assert_eq!(
        one("/convoy adopt"),
        Err(ParseError::MissingArgument {
            verb: Verb::Adopt,
            argument: "an environment"
        })
    );
    assert_eq!(
        one("/convoy pause now please"),
        Err(ParseError::UnexpectedArguments {
            verb: Verb::Pause,
            extra: vec!["now".into(), "please".into()]
        })
    );
    assert_eq!(
        one("/convoy approve canary early"),
        Err(ParseError::UnexpectedArguments {
            verb: Verb::Approve,
            extra: vec!["early".into()]
        })
    );
    assert_eq!(
        one("/convoy adopt a b c"),
        Err(ParseError::UnexpectedArguments {
            verb: Verb::Adopt,
            extra: vec!["c".into()]
        })
    );
    assert_eq!(
        one("/convoy resync a b"),
        Err(ParseError::UnexpectedArguments {
            verb: Verb::Resync,
            extra: vec!["b".into()]
        })
    );
    assert_eq!(
        one("/convoy retry failed acme-eu"),
        Err(ParseError::KeywordWithNames {
            verb: Verb::Retry,
            keyword: "failed"
        })
    );
    assert_eq!(
        one("/convoy rollback acme-eu all"),
        Err(ParseError::KeywordWithNames {
            verb: Verb::Rollback,
            keyword: "all"
        })
    );
}

#[test]
fn bad_durations_are_typed() {
    let bad = |line: &str, problem| {
        assert_eq!(
            one(line),
            Err(ParseError::InvalidDuration {
                verb: Verb::Freeze,
                input: line.split_whitespace().nth(2).unwrap().into(),
                problem,
            }),
            "{line}"
        );
    };
    bad("/convoy freeze 10x", DurationProblem::Malformed);
    bad(
        "/convoy freeze 3 servers down",
        DurationProblem::MissingUnit,
    );
    bad("/convoy freeze 0s", DurationProblem::Zero);
    bad(
        "/convoy freeze 99999999999999999999h",
        DurationProblem::TooLarge,
    );
}

#[test]
fn too_many_commands_stop_the_comment() {
    let body = "/convoy status\n".repeat(MAX_COMMANDS_PER_COMMENT + 5);
    let parsed = parse_comment(&body, P);
    assert_eq!(parsed.len(), MAX_COMMANDS_PER_COMMENT + 1);
    assert!(
        parsed[..MAX_COMMANDS_PER_COMMENT]
            .iter()
            .all(|p| p.result == Ok(Command::Status))
    );
    assert_eq!(
        parsed[MAX_COMMANDS_PER_COMMENT].result,
        Err(ParseError::TooManyCommands {
            limit: MAX_COMMANDS_PER_COMMENT
        })
    );
}

fn context() -> Context {
    Context {
        environments: envs(&["acme-eu", "acme-us", "globex-eu"]),
        waves: ["canary", "early", "rest"]
            .into_iter()
            .map(WaveName::new)
            .collect(),
        services: ["api", "web"].into_iter().map(ServiceName::new).collect(),
    }
}

#[test]
fn known_names_validate() {
    let ctx = context();
    for line in [
        "/convoy retry",
        "/convoy retry failed",
        "/convoy retry acme-eu acme-us",
        "/convoy skip globex-eu",
        "/convoy approve early",
        "/convoy approve",
        "/convoy rollback all",
        "/convoy rollback acme-us",
        "/convoy adopt acme-eu api",
        "/convoy resync acme-eu",
        "/convoy freeze 1h",
        "/convoy help",
    ] {
        let command = one(line).unwrap();
        assert_eq!(validate(&command, &ctx), Ok(()), "{line}");
    }
}

#[test]
fn unknown_names_are_named_with_the_closest_match() {
    let ctx = context();
    let command = one("/convoy retry acmeeu acme-us zzz").unwrap();
    let Err(ValidationError::UnknownNames { unknown, valid }) = validate(&command, &ctx) else {
        panic!("expected unknown names");
    };
    assert_eq!(
        unknown,
        vec![
            UnknownName {
                kind: NameKind::Environment,
                name: "acmeeu".into(),
                suggestion: Some("acme-eu".into())
            },
            UnknownName {
                kind: NameKind::Environment,
                name: "zzz".into(),
                suggestion: None
            },
        ]
    );
    assert_eq!(valid.len(), 1);
    assert_eq!(valid[0].names, vec!["acme-eu", "acme-us", "globex-eu"]);

    let shouted = one("/convoy resync ACME-EU").unwrap();
    let Err(ValidationError::UnknownNames { unknown, .. }) = validate(&shouted, &ctx) else {
        panic!("names are case-sensitive");
    };
    assert_eq!(unknown[0].suggestion.as_deref(), Some("acme-eu"));

    let swapped = one("/convoy resync acme-ue").unwrap();
    let Err(ValidationError::UnknownNames { unknown, .. }) = validate(&swapped, &ctx) else {
        panic!("expected an unknown environment");
    };
    assert_eq!(
        unknown[0].suggestion.as_deref(),
        Some("acme-us"),
        "one substitution beats a swap"
    );

    let wave = one("/convoy approve erly").unwrap();
    let Err(ValidationError::UnknownNames { unknown, .. }) = validate(&wave, &ctx) else {
        panic!("expected an unknown wave");
    };
    assert_eq!(unknown[0].kind, NameKind::Wave);
    assert_eq!(unknown[0].suggestion.as_deref(), Some("early"));

    let adopt = one("/convoy adopt acme-eu wep").unwrap();
    let Err(ValidationError::UnknownNames { unknown, valid }) = validate(&adopt, &ctx) else {
        panic!("expected an unknown service");
    };
    assert_eq!(unknown[0].kind, NameKind::Service);
    assert_eq!(unknown[0].suggestion.as_deref(), Some("web"));
    assert_eq!(valid[0].kind, NameKind::Service);
}

#[test]
fn where_commands_apply() {
    use Venue::*;
    assert!(applicable(Verb::Plan, OpenPullRequest).is_ok());
    assert_eq!(
        applicable(Verb::Plan, MergedPullRequest)
            .unwrap_err()
            .reason,
        NotApplicableReason::AlreadyMerged
    );
    assert_eq!(
        applicable(Verb::Plan, DriftIssue).unwrap_err().reason,
        NotApplicableReason::OnlyOpenPullRequests
    );
    assert_eq!(
        applicable(Verb::Retry, OpenPullRequest).unwrap_err().reason,
        NotApplicableReason::NoRolloutYet
    );
    assert_eq!(
        applicable(Verb::Abort, DriftIssue).unwrap_err().reason,
        NotApplicableReason::DriftIssue
    );
    assert_eq!(
        applicable(Verb::Approve, ClosedPullRequest)
            .unwrap_err()
            .reason,
        NotApplicableReason::ClosedUnmerged
    );
    for verb in [
        Verb::Adopt,
        Verb::Resync,
        Verb::Status,
        Verb::Freeze,
        Verb::Unfreeze,
        Verb::Help,
    ] {
        assert!(applicable(verb, DriftIssue).is_ok(), "{verb:?}");
    }
    for verb in [
        Verb::Retry,
        Verb::Skip,
        Verb::Pause,
        Verb::Resume,
        Verb::Abort,
        Verb::Approve,
        Verb::Rollback,
    ] {
        assert!(applicable(verb, MergedPullRequest).is_ok(), "{verb:?}");
    }
    assert!(applicable(Verb::Freeze, OpenPullRequest).is_ok());
}

/// Names as the parser can produce them: non-empty, no whitespace, not a
/// keyword.
fn name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,12}".prop_filter("not a keyword", |s| s != "failed" && s != "all")
}

fn distinct_names() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(name(), 1..5).prop_map(|mut v| {
        let mut seen = Vec::new();
        v.retain(|n| {
            let fresh = !seen.contains(n);
            seen.push(n.clone());
            fresh
        });
        v
    })
}

fn to_envs(v: Vec<String>) -> Vec<EnvName> {
    v.into_iter().map(EnvName::new).collect()
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        Just(Command::Help),
        Just(Command::Status),
        Just(Command::Plan),
        Just(Command::Pause),
        Just(Command::Resume),
        Just(Command::Abort),
        Just(Command::Unfreeze),
        Just(Command::Retry {
            target: RetryTarget::Failed
        }),
        Just(Command::Rollback {
            target: RollbackTarget::All
        }),
        distinct_names().prop_map(|v| Command::Retry {
            target: RetryTarget::Environments(to_envs(v))
        }),
        distinct_names().prop_map(|v| Command::Rollback {
            target: RollbackTarget::Environments(to_envs(v))
        }),
        distinct_names().prop_map(|v| Command::Skip {
            environments: to_envs(v)
        }),
        prop::option::of(name()).prop_map(|w| Command::Approve {
            wave: w.map(WaveName::new)
        }),
        (name(), prop::option::of(name())).prop_map(|(e, s)| Command::Adopt {
            environment: EnvName::new(e),
            service: s.map(ServiceName::new),
        }),
        name().prop_map(|e| Command::Resync {
            environment: EnvName::new(e)
        }),
        (
            prop::option::of(1u64..10_000_000),
            prop::option::of("[a-zA-Z][a-zA-Z0-9 #!?-]{0,30}[a-z]"),
        )
            .prop_map(|(secs, reason)| Command::Freeze {
                duration: secs.map(Duration::from_secs),
                reason,
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(body in any::<String>(), prefix in any::<String>()) {
        let _ = parse_comment(&body, P);
        let _ = parse_comment(&body, &prefix);
    }

    #[test]
    fn markdown_shaped_text_never_panics(
        lines in prop::collection::vec(
            prop_oneof![
                Just("```".to_owned()), Just("~~~".to_owned()), Just("> ".to_owned()),
                Just("<!--".to_owned()), Just("-->".to_owned()), Just("- ```".to_owned()),
                Just("/convoy".to_owned()), Just("/convoy retry".to_owned()),
                Just("\t".to_owned()), Just("1. ".to_owned()), Just("\r".to_owned()),
                "[ -~]{0,20}", "\\PC{0,10}",
            ],
            0..40,
        ),
        prefix in prop_oneof![Just("/convoy".to_owned()), "\\PC{0,6}"],
    ) {
        let body = lines.join("\n");
        let parsed = parse_comment(&body, &prefix);
        prop_assert!(parsed.len() <= MAX_COMMANDS_PER_COMMENT + 1);
        for line in &parsed {
            prop_assert!(line.line >= 1 && line.line <= body.lines().count());
        }
    }

    #[test]
    fn the_canonical_line_parses_back(command in command()) {
        let line = command.to_line(P);
        prop_assert_eq!(parse_line(&line, P), Some(Ok(command.clone())));
        // …also inside a comment, after text and with CRLF endings.
        let body = format!("Thanks!\r\n\r\n{line}\r\n");
        let parsed = parse_comment(&body, P);
        prop_assert_eq!(parsed.len(), 1);
        prop_assert_eq!(&parsed[0].result, &Ok(command));
    }

    #[test]
    fn nothing_inside_a_fence_is_a_command(inner in prop::collection::vec("[ -~]{0,30}", 0..10)) {
        // Lines that could close the fence are left out.
        let inner: Vec<String> = inner
            .into_iter()
            .filter(|l| !l.trim().starts_with("```"))
            .collect();
        let body = format!("```\n/convoy abort\n{}\n```\n/convoy pause", inner.join("\n"));
        let parsed = parse_comment(&body, P);
        prop_assert_eq!(parsed.len(), 1);
        prop_assert_eq!(&parsed[0].result, &Ok(Command::Pause));
    }
}
