//! The operator console: server-rendered pages at `/` over the same [`Store`] calls as
//! the API (handlers hold no SQL). Reading works without JavaScript; every change is a
//! form POST that carries a CSRF token and redirects (POST, redirect, GET), so a reload
//! never repeats it. Sign-in and CSRF: `auth.rs`; templates: `view.rs`.
//!
//! [`Store`]: crate::store::Store

mod audit;
mod auth;
mod drift;
mod guard;
mod hooks;
mod limit;
mod view;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::Markup;

use super::extract::Params;
use super::{ApiError, AppState};
use crate::model::{NewInstance, RecordPage, SyncType};
use crate::store::{SessionFilter, StoreError};
use crate::validate;
pub use auth::Keys;
use view::Frame;

/// Sessions and instances per page.
const PAGE: i64 = 50;
/// Accounts listed on an instance's page; the rest are counted (the CLI lists them all).
const ACCOUNTS_SHOWN: usize = 500;
/// The leases page counts jobs per state up to this many ("1000+" beyond): done jobs
/// pile up until cleanup, and counting 100,000 of them took 15-40 ms a state on a
/// PostgreSQL table not yet vacuumed. The API and the CLI count exactly.
const QUEUE_COUNT_CAP: i64 = 1_000;
/// Recent syncs shown on an instance's page.
const RECENT_SYNCS: i64 = 20;

#[derive(Clone)]
struct Console {
    app: AppState,
    keys: Keys,
    limiter: Arc<limit::Limiter>,
}

/// The console's routes, with their own cookie sign-in (the API keeps bearer tokens).
pub fn routes(app: AppState) -> Router {
    let keys = Keys::new(super::access::Authn::new(app.store.clone(), &app.tokens));
    let console = Console {
        app,
        keys,
        limiter: Arc::default(),
    };
    Router::new()
        .route("/", get(sessions))
        .route("/sessions/{session_id}", get(session))
        .route("/sessions/{session_id}/cancel", post(session_cancel))
        .route("/sessions/{session_id}/retry", post(session_retry))
        .route("/instances", get(instances).post(instance_create))
        .route("/instances/new", get(instance_new))
        .route("/instances/{id}", get(instance).post(instance_update))
        .route("/instances/{id}/edit", get(instance_edit))
        .route("/instances/{id}/active", post(instance_active))
        .route("/instances/{id}/sync", post(instance_sync))
        .route("/leases", get(leases))
        .route("/audit", get(audit::page))
        .route("/drift", get(drift::page))
        .route("/webhooks", get(hooks::page))
        .route(
            "/webhooks/deliveries/{id}/redeliver",
            post(hooks::redeliver),
        )
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/console.css", get(css))
        .route("/console.js", get(js))
        .route_layer(axum::middleware::from_fn_with_state(
            console.clone(),
            guard::guard,
        ))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(console)
}

/// No framing (clickjacking), scripts and styles from this server only, no caching of
/// pages that carry CSRF tokens.
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("console.css"),
    )
}

async fn js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("console.js"),
    )
}

/// An error as a page; the status is the API's for the same error.
struct PageError(ApiError);

impl<E: Into<ApiError>> From<E> for PageError {
    fn from(e: E) -> Self {
        PageError(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let message = match &self.0 {
            // Logged by the API error's own rendering below; never shown.
            ApiError::Internal(_) => "internal error; the server's log has the details".into(),
            e => e.to_string(),
        };
        let status = self.0.into_response().status();
        let detail = crate::http::access::ErrorMessage(message.clone());
        let frame = Frame {
            title: "Error",
            tab: "",
            csrf: "",
            signed_in: false,
            live: false,
            admin: false,
        };
        let mut page = (
            status,
            view::page(&frame, view::error(status.as_u16(), &message)),
        )
            .into_response();
        // For the audit trail, which cannot read an HTML page's message.
        page.extensions_mut().insert(detail);
        page
    }
}

type PageResult = Result<Response, PageError>;

/// A form POST that may change something: from a signed-in visitor, from this site, with
/// that visitor's CSRF token (else 403, before the handler runs).
struct Post {
    who: Visitor,
    form: Vec<(String, String)>,
    headers: HeaderMap,
}

impl FromRequest<Console> for Post {
    type Rejection = Response;

    async fn from_request(req: Request, c: &Console) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let who = Visitor::from_request_parts(&mut parts, c).await?;
        let headers = parts.headers.clone();
        let Form(form) =
            Form::<Vec<(String, String)>>::from_request(Request::from_parts(parts, body), c)
                .await
                .map_err(IntoResponse::into_response)?;
        who.check_post(c, &headers, &form)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Post { who, form, headers })
    }
}

/// A signed-in visitor (or anyone, when no token is configured); otherwise a redirect
/// to the sign-in page that comes back here.
struct Visitor {
    who: auth::Visitor,
    csrf: String,
    signed_in: bool,
}

impl Visitor {
    /// What the signed-in token may do: the pages show only the forms it may send.
    fn role(&self) -> crate::model::Role {
        self.who.principal.role
    }
}

impl FromRequestParts<Console> for Visitor {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &Console) -> Result<Self, Response> {
        let page_error = |e: StoreError| PageError::from(e).into_response();
        // The guard has looked the visitor up already (`guard.rs`).
        let found = match parts.extensions.get::<auth::Visitor>() {
            Some(v) => Some(v.clone()),
            None => c
                .keys
                .visitor(&parts.headers, now())
                .await
                .map_err(page_error)?,
        };
        match found {
            Some(who) => Ok(Visitor {
                csrf: c.keys.derived().await.map_err(page_error)?.csrf(&who),
                signed_in: who.nonce().is_some(),
                who,
            }),
            None => {
                let next = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let target = format!("/login?next={}", urlencode(next));
                Err(Redirect::to(&target).into_response())
            }
        }
    }
}

impl Visitor {
    fn frame<'a>(&'a self, title: &'a str, tab: &'a str, live: bool) -> Frame<'a> {
        Frame {
            title,
            tab,
            csrf: &self.csrf,
            signed_in: self.signed_in,
            live,
            admin: self.role() == crate::model::Role::Admin,
        }
    }

    /// A POST must come from this site and carry this visitor's CSRF token.
    async fn check_post(
        &self,
        c: &Console,
        headers: &HeaderMap,
        form: &[(String, String)],
    ) -> Result<(), PageError> {
        let token = field(form, "csrf").unwrap_or("");
        let keys = c.keys.derived().await?;
        if c.app.site.cross_site(headers) || !keys.csrf_ok(&self.who, token) {
            return Err(PageError(ApiError::Forbidden(
                "this form is stale or came from another site: reload the page and try again"
                    .into(),
            )));
        }
        Ok(())
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|q| q.trim_start_matches('=').to_string())
        .unwrap_or_default()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn html(markup: Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

async fn sessions(State(c): State<Console>, who: Visitor, q: Params) -> PageResult {
    let q = q.without_empty();
    let filter = SessionFilter {
        status: q.str("status").map(validate::session_status).transpose()?,
        sync_type: q.str("sync_type").map(validate::sync_type).transpose()?,
        limit: PAGE,
        offset: validate::offset(q.int("offset", 0)?)?,
    };
    let (items, total) = c.app.store.session_list(&filter).await?;
    let live = items.iter().any(|s| !s.is_finished());
    let body = view::sessions(&view::SessionsView {
        items: &items,
        total,
        status: filter.status.map(|s| s.as_str()),
        sync_type: filter.sync_type.map(|t| t.as_str()),
        offset: filter.offset,
        limit: PAGE,
    });
    Ok(html(view::page(
        &who.frame("Sessions", "sessions", live),
        body,
    )))
}

async fn session(
    State(c): State<Console>,
    who: Visitor,
    Path(id): Path<String>,
    q: Params,
) -> PageResult {
    let id = super::extract::session_id(&id)?;
    let filter = super::api::record_filter(&q.without_empty(), PAGE)?;
    let (session, records) = c
        .app
        .store
        .session_records(id, &filter)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("unknown session '{id}'")))?;
    let page = RecordPage::new(records, filter.limit);
    let title = format!("Session {}", &id.to_string()[..8]);
    let body = view::session(&view::SessionView {
        session: &session,
        records: &page.items,
        status: filter.status,
        next_after: page.next_after,
        after: filter.after,
        csrf: &who.csrf,
        role: who.role(),
    });
    Ok(html(view::page(
        &who.frame(&title, "sessions", !session.is_finished()),
        body,
    )))
}

async fn session_cancel(
    State(c): State<Console>,
    Path(id): Path<String>,
    _checked: Post,
) -> PageResult {
    let id = super::extract::session_id(&id)?;
    let cancelled = c
        .app
        .store
        .session_cancel(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("unknown session '{id}'")))?;
    // As the API does: recorded after the commit.
    cancelled
        .finished
        .iter()
        .for_each(crate::metrics::session_finished);
    Ok(Redirect::to(&format!("/sessions/{id}")).into_response())
}

async fn session_retry(
    State(c): State<Console>,
    Path(id): Path<String>,
    _checked: Post,
) -> PageResult {
    let id = super::extract::session_id(&id)?;
    let created = c
        .app
        .store
        .session_retry(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("unknown session '{id}'")))?;
    Ok(Redirect::to(&format!("/sessions/{}", created.session_id)).into_response())
}

async fn instances(State(c): State<Console>, who: Visitor, q: Params) -> PageResult {
    let after = q
        .without_empty()
        .opt_int("after")?
        .map(validate::after)
        .transpose()?
        .unwrap_or(0);
    let items = c.app.store.instance_overview(PAGE, after).await?;
    let next = crate::model::next_after(&items, PAGE, |o| o.instance.id);
    Ok(html(view::page(
        &who.frame("Instances", "instances", false),
        view::instances(&items, after, next, who.role()),
    )))
}

async fn load_instance(c: &Console, id: &str) -> Result<crate::model::Instance, PageError> {
    let id = super::extract::instance_id(id)?;
    Ok(c.app
        .store
        .instance_get(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("unknown instance {id}")))?)
}

async fn instance(
    State(c): State<Console>,
    who: Visitor,
    Path(id): Path<String>,
    q: Params,
) -> PageResult {
    let inst = load_instance(&c, &id).await?;
    let include_deleted = q.without_empty().bool("include_deleted")?;
    let mut accounts = c.app.store.accounts_list(inst.id, include_deleted).await?;
    let accounts_total = accounts.len();
    accounts.truncate(ACCOUNTS_SHOWN);
    let syncs = c.app.store.instance_syncs(inst.id, RECENT_SYNCS).await?;
    let live = syncs.iter().any(|s| !s.record.status.is_terminal());
    let mark = drift::mark(&c, &inst.name).await?;
    let body = view::instance(&view::InstanceView {
        instance: &inst,
        accounts: &accounts,
        accounts_total,
        include_deleted,
        syncs: &syncs,
        csrf: &who.csrf,
        role: who.role(),
    });
    Ok(html(view::page(
        &who.frame(&inst.name, "instances", live),
        maud::html! { (mark) (body) },
    )))
}

async fn instance_new(who: Visitor) -> PageResult {
    let form = view::InstanceForm {
        kind: crate::model::InstanceKind::Postgres.as_str().into(),
        options: "{}".into(),
        active: true,
        ..Default::default()
    };
    Ok(html(view::page(
        &who.frame("Add an instance", "instances", false),
        view::instance_form(&form, None, None, &who.csrf),
    )))
}

async fn instance_edit(
    State(c): State<Console>,
    who: Visitor,
    Path(id): Path<String>,
) -> PageResult {
    let i = load_instance(&c, &id).await?;
    let form = view::InstanceForm {
        name: i.name.clone(),
        kind: i.kind.as_str().to_string(),
        host: i.host.clone().unwrap_or_default(),
        port: i.port.map(|p| p.to_string()).unwrap_or_default(),
        username: i.username.clone().unwrap_or_default(),
        database: i.database.clone().unwrap_or_default(),
        password_env: String::new(),
        password_file: String::new(),
        options: i.options.to_string(),
        active: i.active,
        group: i.group.clone().unwrap_or_default(),
        password_current: password_source(&i),
    };
    let title = format!("Edit {}", i.name);
    Ok(html(view::page(
        &who.frame(&title, "instances", false),
        view::instance_form(&form, Some(i.id), None, &who.csrf),
    )))
}

/// The form as typed, and the instance it asks for (or the field that is wrong).
fn read_form(
    form: &[(String, String)],
) -> (view::InstanceForm, Result<NewInstance, (String, String)>) {
    let text = |name: &str| field(form, name).unwrap_or("").trim().to_string();
    let typed = view::InstanceForm {
        name: field(form, "name").unwrap_or("").to_string(),
        kind: text("kind"),
        host: text("host"),
        port: text("port"),
        username: text("username"),
        database: text("database"),
        password_env: text("password_env"),
        password_file: text("password_file"),
        options: text("options"),
        active: field(form, "active") == Some("true"),
        group: text("group"),
        password_current: None,
    };
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let parsed = (|| {
        let port = match typed.port.as_str() {
            "" => None,
            p => Some(p.parse::<i64>().map_err(|_| {
                (
                    "port".to_string(),
                    "the port is a number from 1 to 65535".to_string(),
                )
            })?),
        };
        let options = match typed.options.as_str() {
            "" => serde_json::json!({}),
            o => serde_json::from_str(o)
                .map_err(|e| ("options".to_string(), format!("not JSON: {e}")))?,
        };
        let kind = typed.kind.parse().map_err(|m| ("kind".to_string(), m))?;
        let new = NewInstance {
            name: typed.name.clone(),
            kind,
            host: opt(&typed.host),
            port,
            username: opt(&typed.username),
            database: opt(&typed.database),
            password_env: opt(&typed.password_env),
            password_file: opt(&typed.password_file),
            options,
            active: typed.active,
            group: opt(&typed.group),
        };
        validate::new_instance(new).map_err(|e| match e {
            StoreError::Invalid { field, message } => (field.to_string(), message),
            other => ("name".to_string(), other.to_string()),
        })
    })();
    (typed, parsed)
}

/// Shows the form again with the wrong field named (400, as the API answers).
fn form_error(
    who: &Visitor,
    typed: &view::InstanceForm,
    id: Option<i64>,
    field: &str,
    message: &str,
) -> Response {
    let body = view::instance_form(typed, id, Some((field, message)), &who.csrf);
    (
        StatusCode::BAD_REQUEST,
        html(view::page(&who.frame("Instance", "instances", false), body)),
    )
        .into_response()
}

async fn instance_create(State(c): State<Console>, post: Post) -> PageResult {
    save_instance(&c, &post.who, &post.form, None).await
}

async fn instance_update(
    State(c): State<Console>,
    Path(id): Path<String>,
    post: Post,
) -> PageResult {
    let current = load_instance(&c, &id).await?;
    save_instance(&c, &post.who, &post.form, Some(&current)).await
}

/// Where an instance's password comes from, in words (never the password).
fn password_source(i: &crate::model::Instance) -> Option<String> {
    match (&i.password_env, &i.password_file) {
        (Some(e), _) => Some(format!("environment variable {e}")),
        (None, Some(f)) => Some(format!("secrets file {f}")),
        (None, None) => None,
    }
}

/// Adds (`current` None) or updates an instance from the form; a wrong field or a taken
/// name shows the form again, naming it, with what was typed. On an edit, empty password
/// fields keep the stored reference, but only for the same endpoint.
async fn save_instance(
    c: &Console,
    who: &Visitor,
    form: &[(String, String)],
    current: Option<&crate::model::Instance>,
) -> PageResult {
    let (mut typed, parsed) = read_form(form);
    let id = current.map(|i| i.id);
    typed.password_current = current.and_then(password_source);
    let mut new = match parsed {
        Ok(n) => n,
        Err((f, m)) => return Ok(form_error(who, &typed, id, &f, &m)),
    };
    let saved = match current {
        Some(current) => {
            let named_again = new.password_env.is_some() || new.password_file.is_some();
            if !named_again {
                new.password_env.clone_from(&current.password_env);
                new.password_file.clone_from(&current.password_file);
            }
            if let Err((f, m)) = validate::password_rebind(current, &new, named_again) {
                return Ok(form_error(who, &typed, id, f, &m));
            }
            let saved = c.app.store.instance_update(current.id, &new).await;
            if let Ok(after) = &saved {
                super::log_endpoint_change(current, after);
            }
            saved
        }
        None => c.app.store.instance_insert(&new).await,
    };
    match saved {
        Ok(i) => Ok(Redirect::to(&format!("/instances/{}", i.id)).into_response()),
        Err(StoreError::Conflict(m)) => Ok(form_error(who, &typed, id, "name", &m)),
        Err(e) => Err(e.into()),
    }
}

async fn instance_active(
    State(c): State<Console>,
    Path(id): Path<String>,
    post: Post,
) -> PageResult {
    let i = load_instance(&c, &id).await?;
    let active = match field(&post.form, "active") {
        Some("true") => true,
        Some("false") => false,
        _ => return Err(ApiError::field("active", "active must be true or false").into()),
    };
    let new = NewInstance {
        active,
        ..i.as_new()
    };
    c.app.store.instance_update(i.id, &new).await?;
    Ok(Redirect::to(&format!("/instances/{}", i.id)).into_response())
}

async fn instance_sync(
    State(c): State<Console>,
    Path(id): Path<String>,
    _checked: Post,
) -> PageResult {
    let i = load_instance(&c, &id).await?;
    let created = c
        .app
        .store
        .session_create(SyncType::ManualSingle, Some(&[i.id]))
        .await?;
    Ok(Redirect::to(&format!("/sessions/{}", created.session_id)).into_response())
}

async fn leases(State(c): State<Console>, who: Visitor) -> PageResult {
    let leases = c.app.store.locks_list().await?;
    let queue = c.app.store.queue_stats(Some(QUEUE_COUNT_CAP)).await?;
    let limits = c.app.store.limits_list().await?;
    Ok(html(view::page(
        &who.frame("Leases & queue", "leases", true),
        view::leases(&leases, &queue, &limits),
    )))
}

/// Where to go after signing in: a path on this site, never another site's address. A
/// browser strips tabs and newlines from a URL and reads `\` as `/`, so `/<TAB>/evil`
/// would be `//evil`: only printable ASCII without a backslash passes, starting with one
/// `/` (`//host` is another site).
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            n
        }
        _ => "/",
    }
}

/// A 303 to `path`, or to `/` should `path` not be fit for a `Location` header (axum
/// would answer 500 after the handler had done its work).
fn see_other(path: &str) -> Response {
    match HeaderValue::from_str(path) {
        Ok(_) => Redirect::to(path).into_response(),
        Err(_) => Redirect::to("/").into_response(),
    }
}

/// The client's address, as the connection shows it (a proxy's, behind one).
struct ClientIp(Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(a)| a.ip()),
        ))
    }
}

async fn login_page(State(c): State<Console>, q: Params) -> Response {
    let next = local_path(q.str("next"));
    match c.keys.required().await {
        Ok(false) => return see_other(next),
        Ok(true) => {}
        Err(e) => return PageError::from(e).into_response(),
    }
    login_form(StatusCode::OK, None, next)
}

/// The sign-in page, with what went wrong.
fn login_form(status: StatusCode, error: Option<&str>, next: &str) -> Response {
    let frame = Frame {
        title: "Sign in",
        tab: "login",
        csrf: "",
        signed_in: false,
        live: false,
        admin: false,
    };
    (status, html(view::page(&frame, view::login(error, next)))).into_response()
}

async fn login(
    State(c): State<Console>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> PageResult {
    let next = local_path(field(&form, "next")).to_string();
    let token = field(&form, "token").unwrap_or("");
    // Another site must not sign a browser in either (login CSRF). Said apart from a
    // wrong token: behind a proxy without --public-url, this is what a right one meets.
    if c.app.site.cross_site(&headers) {
        return Ok(login_form(
            StatusCode::FORBIDDEN,
            Some(
                "This sign-in came from another site (its Origin is not this server's). \
                 Behind a reverse proxy, start syncpool with --public-url set to the address you use.",
            ),
            &next,
        ));
    }
    let started = std::time::Instant::now();
    if let Some(wait) = ip.and_then(|ip| c.limiter.blocked(ip, started)) {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut page = login_form(
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "Too many wrong tokens from your address: try again in {secs} seconds."
            )),
            &next,
        );
        page.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        return Ok(page);
    }
    match c.keys.sign_in(token, now()).await? {
        Some(value) => {
            if let Some(ip) = ip {
                c.limiter.succeeded(ip);
            }
            let mut res = see_other(&next);
            let cookie = auth::set_cookie(&value, &headers, c.app.site.public_https());
            res.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_str(&cookie).map_err(anyhow::Error::from)?,
            );
            Ok(res)
        }
        None => {
            if let Some(ip) = ip {
                c.limiter.failed(ip, started);
            }
            Ok(login_form(
                StatusCode::UNAUTHORIZED,
                Some("That is not one of this server's API tokens."),
                &next,
            ))
        }
    }
}

/// Signs out here and on every replica: the cookie's nonce is recorded as revoked, so a
/// copy of the cookie kept elsewhere is refused too.
async fn logout(State(c): State<Console>, post: Post) -> PageResult {
    c.keys.revoke(&post.who.who).await?;
    let cookie = auth::set_cookie("", &post.headers, c.app.site.public_https());
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response())
}
