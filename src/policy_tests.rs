//! Parsing, checking and evaluating policies without a database.

use serde_json::{Value, json};

use super::*;
use crate::model::{Account, InstanceKind};

fn instance(name: &str, kind: InstanceKind, group: Option<&str>) -> Instance {
    let now = chrono::Utc::now();
    Instance {
        id: 1,
        name: name.into(),
        kind,
        host: None,
        port: None,
        username: None,
        database: None,
        password_env: None,
        password_file: None,
        options: json!({}),
        active: true,
        group: group.map(Into::into),
        created_at: now,
        updated_at: now,
        history_since: None,
    }
}

fn account(user: &str, host: &str, attributes: Value, privileges: Value) -> Account {
    Account {
        username: user.into(),
        host: host.into(),
        attributes,
        privileges,
    }
}

fn field_of(e: PolicyError) -> (String, String) {
    match e {
        PolicyError::Invalid { field, message } => (field, message),
        other => panic!("not a validation error: {other}"),
    }
}

const EXAMPLE: &str = r#"
rules:
  - name: approved-superusers
    kinds: [postgres]
    deny: [superuser]
    except_accounts: [postgres]
  - name: no-open-hosts
    kinds: [mysql]
    deny_accounts: ["*@%"]
  - name: monitoring-user
    require_accounts: [monitor]
"#;

#[test]
fn the_issues_example_parses_and_json_reads_the_same() {
    let yaml = parse(EXAMPLE).unwrap();
    assert_eq!(yaml.rules.len(), 3);
    let json = serde_json::to_string(&yaml).unwrap();
    assert_eq!(parse(&json).unwrap(), yaml);
}

#[test]
fn an_unknown_attribute_names_the_rule_and_the_field() {
    let text = "rules:\n  - name: a\n    deny: [superuser]\n  - name: b\n    deny: [superuser, superusr]\n";
    let (field, message) = field_of(parse(text).unwrap_err());
    assert_eq!(field, "rules[1].deny[1]");
    assert!(
        message.starts_with("rule 'b': rules[1].deny[1]: unknown attribute 'superusr'"),
        "{message}"
    );
    assert!(message.contains("expected one of: superuser"), "{message}");
}

#[test]
fn unknown_fields_kinds_and_shapes_are_refused_with_their_path() {
    let (field, message) = field_of(
        parse("rules:\n  - name: a\n    deny: [superuser]\n    denny: [x]\n").unwrap_err(),
    );
    assert_eq!(field, "rules[0].denny", "{message}");
    assert!(message.contains("denny"), "{message}");
    let (field, _) = field_of(
        parse("rules:\n  - name: a\n    kinds: [oracle]\n    deny: [superuser]\n").unwrap_err(),
    );
    assert_eq!(field, "rules[0].kinds[0]");
    let (field, _) = field_of(parse("rules: 3\n").unwrap_err());
    assert_eq!(field, "rules");
    let (field, _) = field_of(parse("- a\n").unwrap_err());
    assert_eq!(field, "policy");
}

#[test]
fn rules_are_checked_between_fields() {
    let cases = [
        ("rules:\n  - name: a\n", "rules[0].deny"),
        (
            "rules:\n  - name: 'has space'\n    deny: [superuser]\n",
            "rules[0].name",
        ),
        (
            "rules:\n  - name: a\n    require_accounts: ['mon*']\n",
            "rules[0].require_accounts[0]",
        ),
        (
            "rules:\n  - name: a\n    deny_accounts: ['']\n",
            "rules[0].deny_accounts[0]",
        ),
    ];
    for (text, want) in cases {
        let (field, message) = field_of(parse(text).unwrap_err());
        assert_eq!(field, want, "{text}: {message}");
        assert!(message.starts_with("rule '"), "{message}");
    }
    let twice = "rules:\n  - name: a\n    deny: [superuser]\n  - name: a\n    deny: [super]\n";
    match parse(twice).unwrap_err() {
        PolicyError::DuplicateRule(m) => assert!(m.starts_with("rule 'a': rules[1].name"), "{m}"),
        other => panic!("not a conflict: {other}"),
    }
    let huge = "#".repeat(MAX_BYTES + 1);
    assert_eq!(field_of(parse(&huge).unwrap_err()).0, "policy");
    assert!(parse("rules: []\n").unwrap().rules.is_empty());
}

#[test]
fn deny_flags_attributes_except_the_exempt_accounts() {
    let policy = parse(EXAMPLE).unwrap();
    let pg = instance("pg1", InstanceKind::Postgres, None);
    let accounts = [
        account("postgres", "", json!({"superuser": true}), json!([])),
        account(
            "app",
            "",
            json!({"superuser": true, "create_db": true}),
            json!([]),
        ),
        account("monitor", "", json!({"superuser": false}), json!([])),
    ];
    let views: Vec<AccountView> = accounts.iter().map(Into::into).collect();
    let found = evaluate(&policy, &pg, &views);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (found[0].account.as_str(), found[0].what.as_str()),
        ("app", "superuser")
    );
    assert_eq!(found[0].reason, "holds superuser");
    // The same accounts on a MySQL instance: the postgres-only rule does not apply.
    let my = instance("my1", InstanceKind::Mysql, None);
    assert!(evaluate(&policy, &my, &views).is_empty());
}

#[test]
fn mysql_patterns_with_a_host_match_user_at_host_and_names_without_match_the_user() {
    let policy = parse(EXAMPLE).unwrap();
    let my = instance("my1", InstanceKind::Mysql, None);
    let accounts = [
        account("app", "%", json!({}), json!([])),
        account("app", "10.0.0.%", json!({}), json!([])),
        account("monitor", "localhost", json!({}), json!([])),
    ];
    let views: Vec<AccountView> = accounts.iter().map(Into::into).collect();
    let found = evaluate(&policy, &my, &views);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (found[0].account.as_str(), found[0].what.as_str()),
        ("app@%", "denied_account")
    );
    // Without the monitor account, the required one is missing.
    let found = evaluate(&policy, &my, &views[..2]);
    let missing: Vec<_> = found
        .iter()
        .filter(|f| f.what == "missing_account")
        .collect();
    assert_eq!(missing.len(), 1);
    assert_eq!(missing[0].account, "monitor");
}

#[test]
fn mysql_privileges_are_read_from_the_parsed_grants() {
    let policy =
        parse("rules:\n  - name: r\n    deny: [all_privileges, super, grant_option]\n").unwrap();
    let my = instance("my1", InstanceKind::Mysql, None);
    let root = account(
        "root",
        "localhost",
        json!({}),
        json!([{"level": "global", "privileges": ["ALL PRIVILEGES"], "grant_option": true}]),
    );
    let ops = account(
        "ops",
        "%",
        json!({}),
        json!([{"level": "global", "privileges": ["SUPER", "PROCESS"], "grant_option": false},
               {"level": "database", "database": "shop", "privileges": ["ALL PRIVILEGES"], "grant_option": false}]),
    );
    let app = account(
        "app",
        "%",
        json!({}),
        json!([{"level": "table", "database": "shop", "table": "t", "privileges": ["SELECT"], "grant_option": true}]),
    );
    let accounts = [root, ops, app];
    let views: Vec<AccountView> = accounts.iter().map(Into::into).collect();
    let got: Vec<(String, String)> = evaluate(&policy, &my, &views)
        .into_iter()
        .map(|f| (f.account, f.what))
        .collect();
    let want = [
        ("app@%", "grant_option"),
        ("ops@%", "super"),
        ("root@localhost", "all_privileges"),
        ("root@localhost", "grant_option"),
        ("root@localhost", "super"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, w)| (a.to_string(), w.to_string()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn selectors_narrow_by_name_glob_group_and_kind() {
    let policy = parse(
        "rules:\n  - name: r\n    instances: ['prod-*']\n    groups: [etl]\n    kinds: [simulated]\n    deny: [superuser]\n",
    )
    .unwrap();
    let rule = &policy.rules[0];
    assert!(selects(
        rule,
        &instance("prod-1", InstanceKind::Simulated, Some("etl"))
    ));
    assert!(!selects(
        rule,
        &instance("dev-1", InstanceKind::Simulated, Some("etl"))
    ));
    assert!(!selects(
        rule,
        &instance("prod-1", InstanceKind::Simulated, Some("web"))
    ));
    assert!(!selects(
        rule,
        &instance("prod-1", InstanceKind::Simulated, None)
    ));
    assert!(!selects(
        rule,
        &instance("prod-1", InstanceKind::Postgres, Some("etl"))
    ));
}

#[test]
fn json_is_read_strictly_as_json() {
    let (field, _) =
        field_of(parse(r#"{"rules": [{"name": "a", "require_accounts": [null]}]}"#).unwrap_err());
    assert_eq!(field, "rules[0].require_accounts[0]");
    let pair = r#"{"rules": [{"name": "a", "deny_accounts": ["\ud83d\ude0d"]}]}"#;
    assert_eq!(parse(pair).unwrap().rules[0].deny_accounts[0], "😍");
    let (field, m) = field_of(parse(r#"{"rules": []} x"#).unwrap_err());
    assert_eq!(field, "policy", "{m}");
    assert!(
        parse("{rules: []}").unwrap().rules.is_empty(),
        "a YAML flow mapping"
    );
}
