//! The console's pages, as maud templates compiled into the binary. maud escapes every
//! value it interpolates, so an instance named `<script>` is shown, never run. The
//! pages read without JavaScript; `console.js` only refreshes the parts marked
//! `data-live` and asks before a cancel.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use crate::model::{
    Instance, InstanceOverview, InstanceSync, Lease, Limit, QueueStats, Record, RecordStatus, Role,
    Session, StoredAccount,
};

/// What every page's frame needs.
pub struct Frame<'a> {
    /// The page's title.
    pub title: &'a str,
    /// Which tab is lit: "sessions", "instances", "leases".
    pub tab: &'a str,
    /// The visitor's CSRF token, for the forms on the page.
    pub csrf: &'a str,
    /// A sign-in is configured (show "Sign out").
    pub signed_in: bool,
    /// Something on the page is still moving: refresh it.
    pub live: bool,
    /// The visitor is an admin (show the audit trail's tab).
    pub admin: bool,
}

pub fn page(f: &Frame, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (f.title) " · syncpool" }
                link rel="stylesheet" href="/console.css";
                // Without JavaScript, a moving page reloads itself instead.
                @if f.live { noscript { meta http-equiv="refresh" content="5"; } }
                script src="/console.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "syncpool" }
                    @if f.tab != "login" { nav {
                        (tab(f, "sessions", "/", "Sessions"))
                        (tab(f, "instances", "/instances", "Instances"))
                        (tab(f, "leases", "/leases", "Leases & queue"))
                        (tab(f, "drift", "/drift", "Drift"))
                        @if f.admin { (tab(f, "webhooks", "/webhooks", "Webhooks")) }
                        @if f.admin { (tab(f, "audit", "/audit", "Audit")) }
                    } }
                    @if f.signed_in {
                        form.signout method="post" action="/logout" {
                            (csrf_field(f.csrf))
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn tab(f: &Frame, name: &str, href: &str, label: &str) -> Markup {
    html! { a href=(href) aria-current=[(f.tab == name).then_some("page")] { (label) } }
}

pub fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// A status with its colour and, always, its name: colour is never the only signal.
pub fn badge(status: &str) -> Markup {
    html! { span class={"badge st-" (status)} { (status.replace('_', " ")) } }
}

pub fn time(t: &DateTime<Utc>) -> Markup {
    html! { time datetime=(crate::model::ts::format(t)) { (t.format("%Y-%m-%d %H:%M:%S")) } }
}

fn opt_time(t: Option<&DateTime<Utc>>) -> Markup {
    match t {
        Some(t) => time(t),
        None => html! { span.muted { "-" } },
    }
}

pub fn secs(s: f64) -> String {
    crate::text::seconds(s)
}

fn ms(v: Option<i64>) -> String {
    match v {
        None => "-".into(),
        Some(ms) if ms < 1000 => format!("{ms} ms"),
        Some(ms) => secs(ms as f64 / 1000.0),
    }
}

fn num(v: Option<i64>) -> String {
    v.map(|n| n.to_string()).unwrap_or_else(|| "-".into())
}

fn progress(s: &Session) -> Markup {
    let done = s.successful_instances + s.failed_instances + s.cancelled_instances;
    let pct = 100.0 * done as f64 / s.total_instances.max(1) as f64;
    html! {
        span.progress {
            progress max=(s.total_instances.max(1)) value=(done) {}
            span.count { (done) " / " (s.total_instances) " (" (format!("{pct:.0}")) "%)" }
        }
    }
}

fn rate(s: &Session) -> String {
    s.success_rate
        .map(|r| format!("{:.1}%", r * 100.0))
        .unwrap_or_else(|| "-".into())
}

fn short(id: &uuid::Uuid) -> String {
    id.to_string()[..8].to_string()
}

/// The sessions list's filters and page.
pub struct SessionsView<'a> {
    pub items: &'a [Session],
    pub total: i64,
    pub status: Option<&'a str>,
    pub sync_type: Option<&'a str>,
    pub offset: i64,
    pub limit: i64,
}

pub fn sessions(v: &SessionsView) -> Markup {
    let link = |offset: i64| {
        let mut q = vec![format!("offset={offset}")];
        if let Some(s) = v.status {
            q.push(format!("status={s}"));
        }
        if let Some(t) = v.sync_type {
            q.push(format!("sync_type={t}"));
        }
        format!("/?{}", q.join("&"))
    };
    html! {
        h1 { "Sessions" }
        form.filters method="get" action="/" {
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for s in crate::model::SessionStatus::names() {
                        option value=(s) selected[v.status == Some(s)] { (s.replace('_', " ")) }
                    }
                }
            }
            label { "Type "
                select name="sync_type" {
                    option value="" { "any" }
                    @for t in crate::model::SyncType::names() {
                        option value=(t) selected[v.sync_type == Some(t)] { (t.replace('_', " ")) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        div #sessions data-live[v.items.iter().any(|s| !s.is_finished())] {
            @if v.items.is_empty() {
                p.empty { "No session matches. Start one with " code { "syncpool sync-all" } " or from an instance's page." }
            } @else {
                table {
                    thead { tr {
                        th { "Session" } th { "Type" } th { "Status" } th { "Progress" }
                        th.num { "OK" } th.num { "Failed" } th.num { "Cancelled" }
                        th.num { "Success" } th { "Created" } th.num { "Duration" }
                    } }
                    tbody {
                        @for s in v.items {
                            tr data-session=(s.session_id) {
                                td { a.mono href={"/sessions/" (s.session_id)} { (short(&s.session_id)) } }
                                td { (s.sync_type.as_str().replace('_', " ")) }
                                td { (badge(s.status.as_str())) }
                                td { (progress(s)) }
                                td.num { (s.successful_instances) }
                                td.num { (s.failed_instances) }
                                td.num { (s.cancelled_instances) }
                                td.num { (rate(s)) }
                                td { (time(&s.created_at)) }
                                td.num { (s.duration_seconds.map(secs).unwrap_or_else(|| "-".into())) }
                            }
                        }
                    }
                }
            }
        }
        nav.pager {
            span { (crate::text::plural(v.total, "session")) }
            @if v.offset > 0 { a href=(link((v.offset - v.limit).max(0))) { "← Newer" } }
            @if v.offset + v.limit < v.total { a href=(link(v.offset + v.limit)) { "Older →" } }
        }
    }
}

/// One session's page.
pub struct SessionView<'a> {
    pub session: &'a Session,
    pub records: &'a [Record],
    pub status: Option<RecordStatus>,
    pub next_after: Option<i64>,
    pub after: i64,
    pub csrf: &'a str,
    /// The visitor's role: the forms shown are the ones it may send.
    pub role: Role,
}

pub fn session(v: &SessionView) -> Markup {
    let s = v.session;
    let base = format!("/sessions/{}", s.session_id);
    let filter = |st: Option<RecordStatus>| match st {
        Some(st) => format!("{base}?status={st}"),
        None => base.clone(),
    };
    let tabs: [(Option<RecordStatus>, &str, Option<i64>); 6] = [
        (None, "all", Some(s.total_instances)),
        (Some(RecordStatus::Pending), "pending", None),
        (Some(RecordStatus::Running), "running", None),
        (
            Some(RecordStatus::Completed),
            "completed",
            Some(s.successful_instances),
        ),
        (
            Some(RecordStatus::Failed),
            "failed",
            Some(s.failed_instances),
        ),
        (
            Some(RecordStatus::Cancelled),
            "cancelled",
            Some(s.cancelled_instances),
        ),
    ];
    html! {
        h1 { "Session " span.mono { (s.session_id) } }
        section #summary.summary data-live[!s.is_finished()] {
            div.cards {
                div.card { div.label { "Status" } div.value { (badge(s.status.as_str())) @if s.cancel_requested && !s.is_finished() { " " span.muted { "(cancelling)" } } } }
                div.card { div.label { "Progress" } div.value { (progress(s)) } }
                div.card { div.label { "OK / failed / cancelled" } div.value { (s.successful_instances) " / " (s.failed_instances) " / " (s.cancelled_instances) } }
                div.card { div.label { "Success rate" } div.value { (rate(s)) } }
                div.card { div.label { "Duration" } div.value { (s.duration_seconds.map(secs).unwrap_or_else(|| "-".into())) } }
                div.card { div.label { "Type" } div.value { (s.sync_type.as_str().replace('_', " ")) } }
                div.card { div.label { "Created" } div.value { (time(&s.created_at)) } }
                @if let Some(old) = s.retry_of {
                    div.card { div.label { "Retry of" } div.value { a.mono href={"/sessions/" (old)} { (old.to_string()[..8]) } } }
                }
            }
            @if v.role >= Role::Operator && s.is_finished() && s.failed_instances + s.cancelled_instances > 0 {
                form.inline method="post" action={(base) "/retry"} {
                    (csrf_field(v.csrf))
                    button type="submit" { "Retry failed and cancelled" }
                }
            }
            @if v.role >= Role::Operator && !s.is_finished() && !s.cancel_requested {
                form.inline method="post" action={(base) "/cancel"} data-confirm="Cancel this session? Pending instances end at once, running ones at their next heartbeat." {
                    (csrf_field(v.csrf))
                    button.danger type="submit" { "Cancel session" }
                }
            }
        }
        nav.tabs {
            @for (st, label, count) in &tabs {
                a href=(filter(*st)) aria-current=[(v.status == *st).then_some("page")] {
                    (label) @if let Some(n) = count { " (" (n) ")" }
                }
            }
        }
        div #records data-live[!s.is_finished()] {
            @if v.records.is_empty() {
                p.empty { "No records here." }
            } @else {
                table {
                    thead { tr {
                        th { "Instance" } th { "Status" } th.num { "Attempts" } th.num { "Lock wait" }
                        th.num { "Duration" } th.num { "Accounts" } th.num { "Added" } th.num { "Removed" }
                        th.num { "Changed" } th { "Worker" } th { "Error" }
                    } }
                    tbody {
                        @for r in v.records {
                            tr {
                                td { a href={"/instances/" (r.instance_id)} { (r.instance_name) } }
                                td { (badge(r.status.as_str())) }
                                td.num { (r.attempts) }
                                td.num { (ms(r.lock_wait_ms)) }
                                td.num { (record_duration(r)) }
                                td.num { (num(r.accounts_total)) }
                                td.num { (num(r.accounts_added)) }
                                td.num { (num(r.accounts_removed)) }
                                td.num { (num(r.accounts_changed)) }
                                td.mono.small { (r.worker_id.as_deref().unwrap_or("-")) }
                                td.error { (r.error.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        }
        nav.pager {
            @if v.after > 0 { a href=(filter(v.status)) { "← First page" } }
            @if let Some(next) = v.next_after {
                a href={(filter(v.status)) (if v.status.is_some() { "&" } else { "?" }) "after=" (next)} rel="next" { "Next page →" }
            }
        }
    }
}

fn record_duration(r: &Record) -> String {
    match (r.started_at, r.completed_at) {
        (Some(s), Some(e)) => secs((e - s).num_milliseconds() as f64 / 1000.0),
        (Some(s), None) if r.status == RecordStatus::Running => {
            secs((Utc::now() - s).num_milliseconds() as f64 / 1000.0)
        }
        _ => "-".into(),
    }
}

pub fn instances(items: &[InstanceOverview], after: i64, next: Option<i64>, role: Role) -> Markup {
    html! {
        div.heading {
            h1 { "Instances" }
            @if role >= Role::Admin { a.button href="/instances/new" { "Add instance" } }
        }
        @if items.is_empty() {
            @if role >= Role::Admin {
                p.empty { "No instance here. " a href="/instances/new" { "Add one" } ", or import many with " code { "syncpool instances import" } "." }
            } @else {
                p.empty { "No instance here." }
            }
        } @else {
            table {
                thead { tr {
                    th { "Name" } th { "Kind" } th { "Host" } th { "Active" } th { "Last sync" }
                    th { "When" } th.num { "Accounts" }
                } }
                tbody {
                    @for o in items {
                        @let i = &o.instance;
                        tr {
                            td { a href={"/instances/" (i.id)} { (i.name) } }
                            td { (i.kind) }
                            td.mono { (i.host.as_deref().unwrap_or("-")) @if let Some(p) = i.port { ":" (p) } }
                            td { @if i.active { "yes" } @else { span.badge.st-inactive { "inactive" } } }
                            td { @match o.last_status { Some(st) => (badge(st.as_str())), None => span.muted { "never" } } }
                            td { (opt_time(o.last_sync_at.as_ref())) }
                            td.num { (o.account_count) }
                        }
                    }
                }
            }
        }
        nav.pager {
            @if after > 0 { a href="/instances" { "← First page" } }
            @if let Some(n) = next { a href={"/instances?after=" (n)} rel="next" { "Next page →" } }
        }
    }
}

pub struct InstanceView<'a> {
    pub instance: &'a Instance,
    pub accounts: &'a [StoredAccount],
    pub accounts_total: usize,
    pub include_deleted: bool,
    pub syncs: &'a [InstanceSync],
    pub csrf: &'a str,
    /// The visitor's role: the forms shown are the ones it may send.
    pub role: Role,
}

pub fn instance(v: &InstanceView) -> Markup {
    let i = v.instance;
    let base = format!("/instances/{}", i.id);
    html! {
        div.heading {
            h1 { (i.name) " " @if !i.active { span.badge.st-inactive { "inactive" } } }
            div.actions {
                @if v.role >= Role::Operator {
                    form.inline method="post" action={(base) "/sync"} {
                        (csrf_field(v.csrf))
                        button type="submit" { "Sync now" }
                    }
                }
                @if v.role >= Role::Admin {
                    a.button.secondary href={(base) "/edit"} { "Edit" }
                    form.inline method="post" action={(base) "/active"} data-confirm=[i.active.then_some("Deactivate this instance? It will be left out of sync-all and scheduled sessions.")] {
                        (csrf_field(v.csrf))
                        input type="hidden" name="active" value=(if i.active { "false" } else { "true" });
                        button.secondary type="submit" { @if i.active { "Deactivate" } @else { "Activate" } }
                    }
                }
            }
        }
        dl.facts {
            dt { "Kind" } dd { (i.kind) }
            dt { "Host" } dd.mono { (i.host.as_deref().unwrap_or("-")) @if let Some(p) = i.port { ":" (p) } }
            dt { "User" } dd { (i.username.as_deref().unwrap_or("-")) }
            dt { "Database" } dd { (i.database.as_deref().unwrap_or("-")) }
            dt { "Group" } dd { (i.group.as_deref().unwrap_or("-")) }
            // Where the password comes from, never the password: the server cannot read it.
            dt { "Password from" } dd.mono {
                @if let Some(e) = &i.password_env { "environment " (e) }
                @else if let Some(f) = &i.password_file { "secrets file " (f) }
                @else { "-" }
            }
            dt { "History since" } dd { (opt_time(i.history_since.as_ref())) }
        }
        h2 { "Accounts" }
        p {
            @if v.include_deleted { a href=(base) { "Hide deleted accounts" } }
            @else { a href={(base) "?include_deleted=true"} { "Show deleted accounts too" } }
        }
        @if v.accounts_total > v.accounts.len() {
            p.muted { "The first " (v.accounts.len()) " of " (v.accounts_total) " accounts; "
                code { "syncpool accounts " (i.name) " --json" } " lists them all." }
        }
        @if v.accounts.is_empty() {
            p.empty { "No accounts recorded yet." }
        } @else {
            table {
                thead { tr { th { "Account" } th { "Attributes" } th { "Privileges" } th { "First seen" } th { "Last seen" } th { "Deleted" } } }
                tbody {
                    @for a in v.accounts {
                        tr.deleted[a.deleted_at.is_some()] {
                            td.mono { (a.username) @if !a.host.is_empty() { "@" (a.host) } }
                            td.mono.small { (compact(&a.attributes)) }
                            td.mono.small { (compact(&a.privileges)) }
                            td { (time(&a.first_seen_at)) }
                            td { (time(&a.last_seen_at)) }
                            td { @if let Some(d) = &a.deleted_at { span.badge.st-failed { "deleted" } " " (time(d)) } }
                        }
                    }
                }
            }
        }
        h2 { "Recent syncs" }
        @if v.syncs.is_empty() {
            p.empty { "Never synced." }
        } @else {
            table {
                thead { tr { th { "Session" } th { "Type" } th { "Status" } th.num { "Attempts" } th.num { "Lock wait" } th.num { "Duration" } th { "Started" } th { "Error" } } }
                tbody {
                    @for s in v.syncs {
                        tr {
                            td { a.mono href={"/sessions/" (s.session_id)} { (short(&s.session_id)) } }
                            td { (s.sync_type.as_str().replace('_', " ")) }
                            td { (badge(s.record.status.as_str())) }
                            td.num { (s.record.attempts) }
                            td.num { (ms(s.record.lock_wait_ms)) }
                            td.num { (record_duration(&s.record)) }
                            td { (opt_time(s.record.started_at.as_ref())) }
                            td.error { (s.record.error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    }
}

fn compact(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Array(a) if a.is_empty() => "-".into(),
        serde_json::Value::Object(o) if o.is_empty() => "-".into(),
        v => v.to_string(),
    }
}

/// The add and edit form's values, as typed (kept on an error).
#[derive(Default)]
pub struct InstanceForm {
    pub name: String,
    pub kind: String,
    pub host: String,
    pub port: String,
    pub username: String,
    pub database: String,
    pub password_env: String,
    pub password_file: String,
    pub options: String,
    pub active: bool,
    pub group: String,
    /// On an edit: where the password comes from now. The fields above start empty, so
    /// that keeping it for another endpoint takes typing it again (docs/SECURITY.md).
    pub password_current: Option<String>,
}

pub fn instance_form(
    f: &InstanceForm,
    id: Option<i64>,
    error: Option<(&str, &str)>,
    csrf: &str,
) -> Markup {
    let action = match id {
        Some(id) => format!("/instances/{id}"),
        None => "/instances".into(),
    };
    let field = |name: &str, label: &str, value: &str, hint: &str| {
        let wrong = error.is_some_and(|(f, _)| f == name);
        html! {
            label.field.wrong[wrong] {
                span { (label) }
                input type="text" name=(name) value=(value) aria-invalid=[wrong.then_some("true")];
                @if !hint.is_empty() { small.muted { (hint) } }
            }
        }
    };
    html! {
        h1 { @if id.is_some() { "Edit " (f.name) } @else { "Add an instance" } }
        @if let Some((field, message)) = error {
            p.alert role="alert" { strong { (field) } ": " (message) }
        }
        form.form method="post" action=(action) {
            (csrf_field(csrf))
            (field("name", "Name", &f.name, "unique; no control characters"))
            label.field.wrong[error.is_some_and(|(f, _)| f == "kind")] {
                span { "Kind" }
                select name="kind" {
                    @for k in syncpool_workers::KINDS {
                        option value=(k) selected[f.kind == *k] { (k) }
                    }
                }
            }
            (field("host", "Host", &f.host, "the database kinds need one"))
            (field("port", "Port", &f.port, "empty: the kind's default"))
            (field("username", "User", &f.username, ""))
            (field("database", "Database", &f.database, ""))
            (field("group", "Group", &f.group, "for concurrency limits (group:NAME); empty: none"))
            @if let Some(current) = &f.password_current {
                p.muted {
                    "The password now comes from " strong { (current) } ". Leave both fields empty to keep it; "
                    "a change of kind, host, port, user, database or a weaker TLS setting needs it typed again."
                }
            }
            (field("password_env", "Password environment variable", &f.password_env, "a SYNCPOOL_SECRET_* variable of the workers"))
            (field("password_file", "Password file", &f.password_file, "a file name in the workers' secrets folder"))
            label.field.wrong[error.is_some_and(|(f, _)| f == "options")] {
                span { "Options (JSON)" }
                textarea name="options" rows="3" { (f.options) }
            }
            label.check {
                input type="checkbox" name="active" value="true" checked[f.active];
                " Active (included in sync-all and scheduled sessions)"
            }
            div.actions {
                button type="submit" { @if id.is_some() { "Save" } @else { "Add instance" } }
                a.button.secondary href=(id.map(|i| format!("/instances/{i}")).unwrap_or_else(|| "/instances".into())) { "Cancel" }
            }
        }
    }
}

pub fn leases(leases: &[Lease], q: &QueueStats, limits: &[Limit]) -> Markup {
    html! {
        h1 { "Leases & queue" }
        div #leases data-live {
            @if !limits.is_empty() {
                h2 { "Concurrency limits" }
                table #limits {
                    thead { tr { th { "Limit" } th.num { "In use" } th.num { "Maximum" } th.num { "Waiting" } } }
                    tbody {
                        @for l in limits {
                            tr data-limit=(l.key) {
                                td.mono { (l.key) }
                                td.num { (l.in_use) }
                                td.num { (l.max_concurrent) }
                                td.num { (l.waiting) }
                            }
                        }
                    }
                }
            }
            h2 { "Instance leases" }
            @if leases.is_empty() {
                p.empty { "No instance is leased: no sync is running." }
            } @else {
                table {
                    thead { tr {
                        th { "Instance" } th { "Holder" } th.num { "Token" } th.num { "Age" }
                        th.num { "Expires in" } th { "Session" } th { "Waiting" }
                    } }
                    tbody {
                        @for l in leases {
                            tr data-instance=(l.instance_name) {
                                td { a href={"/instances/" (l.instance_id)} { (l.instance_name) } }
                                td.mono.small { (l.holder) }
                                td.num { (l.token) }
                                td.num { (secs(l.age_seconds)) }
                                td.num {
                                    @if l.expired { span.badge.st-failed { "lapsed " (secs(-l.expires_in_seconds)) " ago" } }
                                    @else { (secs(l.expires_in_seconds)) }
                                }
                                td { a.mono href={"/sessions/" (l.session_id)} { (short(&l.session_id)) } }
                                td {
                                    @if l.waiting_total == 0 { span.muted { "none" } }
                                    @else {
                                        (l.waiting_total) " waiting"
                                        ul.waiters {
                                            @for w in &l.waiting {
                                                li { a.mono href={"/sessions/" (w.session_id)} { (short(&w.session_id)) } " for " (secs(w.waited_seconds)) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Queue" }
            div.cards {
                @for state in crate::model::JOB_STATES {
                    div.card { div.label { (state) } div.value { (count(q, q.depth.get(state).copied().unwrap_or(0))) } }
                }
                div.card { div.label { "Pending: due / delayed" } div.value { (count(q, q.ready)) " / " (count(q, q.delayed)) } }
                div.card {
                    div.label { "Oldest pending" }
                    div.value {
                        @match &q.oldest_pending {
                            Some(o) => { "due " (secs(o.waited_seconds)) " ago" br; small.mono { (o.job_id) } },
                            None => span.muted { "none" },
                        }
                    }
                }
            }
        }
    }
}

/// A queue count as read: beyond the page's cap, "10000+".
fn count(q: &QueueStats, n: i64) -> String {
    match q.counted_up_to {
        Some(cap) if n > cap => format!("{cap}+"),
        _ => n.to_string(),
    }
}

pub fn login(error: Option<&str>, next: &str) -> Markup {
    html! {
        div.login {
            h1 { "Sign in to syncpool" }
            p.muted { "Use one of the API tokens this server was started with (SYNCPOOL_API_TOKEN)." }
            @if let Some(e) = error { p.alert role="alert" { (e) } }
            form.form method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                label.field {
                    span { "API token" }
                    input type="password" name="token" autocomplete="current-password" autofocus required;
                }
                div.actions { button type="submit" { "Sign in" } }
            }
        }
    }
}

pub fn error(status: u16, message: &str) -> Markup {
    html! {
        h1 { "Error " (status) }
        p.alert role="alert" { (message) }
        p { a href="/" { "Back to the sessions" } }
    }
}
