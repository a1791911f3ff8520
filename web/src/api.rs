//! The routes. Every JSON answer is a documented type: `FleetStatus`, `SwitchReport` and
//! `WatchEvent` from `pifleet_proto::report`, `HistorySeries` from `pifleet_history`; errors
//! are `{"error": "sentence"}` with a 4xx/5xx status.
//!
//! | route | what |
//! |---|---|
//! | `GET /` (`/app.js`, `/app.css`) | the page |
//! | `GET /api/session` | `{user, csrf, login_required}`; 401 until logged in |
//! | `POST /api/login`, `POST /api/logout` | controller login (cookie session) |
//! | `GET /api/fleet` | `FleetStatus` |
//! | `POST /api/command` | `CommandRequest` → `SwitchReport` |
//! | `GET /api/history/{device}/{sensor}?since=&until=&buckets=` | `HistorySeries` |
//! | `GET /api/history/{device}/{YYYY-MM-DD}.csv` | the day file |
//! | `GET /api/events` | SSE: `hello`, `fleet` (a `FleetStatus`), `link`, then `WatchEvent`s |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use pifleet_history::{parse_when, Day, HistoryError, HistoryReader, TimeRange};
use pifleet_proto::report::{FleetStatus, SwitchReport};
use pifleet_proto::time::now_ms;
use pifleet_proto::Name;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use crate::auth::{self, LoginCheck, Sessions};
use crate::command::{self, CommandRequest};
use crate::live::{Link, Live};
use crate::{Error, Options};

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// The most buckets a chart asks for (about a 4K screen's width).
pub const MAX_CHART_BUCKETS: usize = 4000;

#[derive(Clone)]
pub struct App(Arc<Inner>);

struct Inner {
    link: Link,
    options: Options,
    reader: HistoryReader,
    sessions: Sessions,
    /// Logins are required (a non-loopback address with a [`crate::Logins`]).
    login_required: bool,
    /// Anonymous mode's CSRF token (one per process).
    anon_csrf: String,
    /// On loopback, the port the Host header must name (DNS rebinding).
    loopback_port: Option<u16>,
}

impl App {
    pub fn new(link: Link, options: Options, addr: SocketAddr) -> App {
        let loopback = addr.ip().is_loopback();
        App(Arc::new(Inner {
            link,
            reader: HistoryReader::new(options.history_dir.clone()),
            login_required: !loopback && options.logins.is_some(),
            options,
            sessions: Sessions::default(),
            anon_csrf: auth::token(),
            loopback_port: loopback.then(|| addr.port()),
        }))
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match &self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Broker(_) => StatusCode::BAD_GATEWAY,
            Error::Listen { .. } | Error::Exposed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = serde_json::json!({ "error": self.to_string() });
        (status, Json(body)).into_response()
    }
}

pub fn router(app: App) -> Router {
    let guarded = Router::new()
        .route("/api/fleet", get(fleet))
        .route("/api/command", post(command))
        .route("/api/history/{device}/{name}", get(history))
        .route("/api/events", get(events))
        .route("/api/logout", post(logout))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard));
    Router::new()
        .route(
            "/",
            get(|| async { page(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/app.css",
            get(|| async { page(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route("/api/session", get(session))
        .route("/api/login", post(login))
        .merge(guarded)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            host_check,
        ))
        .with_state(app)
}

fn page(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            // Everything the page needs is ours; nothing inline, nothing from elsewhere.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Loopback mode: the Host header must be ours, or a rebinding site could read the API.
async fn host_check(State(app): State<App>, req: Request, next: Next) -> Response {
    if let Some(port) = app.0.loopback_port {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !auth::loopback_host(host, port) {
            return Error::Forbidden(format!("unexpected Host header {host:?}")).into_response();
        }
    }
    next.run(req).await
}

/// The session (when logins are required) and the CSRF token on every POST.
async fn guard(State(app): State<App>, req: Request, next: Next) -> Response {
    let csrf = match current(&app, req.headers()) {
        Ok((_, csrf)) => csrf,
        Err(e) => return e.into_response(),
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let sent = req
            .headers()
            .get(auth::CSRF_HEADER)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !auth::same(sent, &csrf) {
            return Error::Forbidden(format!(
                "missing or wrong {} header (reload the page)",
                auth::CSRF_HEADER
            ))
            .into_response();
        }
    }
    next.run(req).await
}

/// (user, CSRF token) of this request, or why not.
fn current(app: &App, headers: &HeaderMap) -> Result<(Option<String>, String), Error> {
    if !app.0.login_required {
        return Ok((None, app.0.anon_csrf.clone()));
    }
    let token = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .find_map(|h| auth::cookie(h, auth::COOKIE))
        .ok_or(Error::Unauthorized)?;
    let (user, csrf) = app.0.sessions.get(token).ok_or(Error::Unauthorized)?;
    Ok((Some(user), csrf))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SessionInfo {
    pub login_required: bool,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub csrf: Option<String>,
}

async fn session(State(app): State<App>, headers: HeaderMap) -> Response {
    match current(&app, &headers) {
        Ok((user, csrf)) => Json(SessionInfo {
            login_required: app.0.login_required,
            user,
            csrf: Some(csrf),
        })
        .into_response(),
        Err(_) => (
            StatusCode::UNAUTHORIZED,
            Json(SessionInfo {
                login_required: true,
                user: None,
                csrf: None,
            }),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
}

async fn login(State(app): State<App>, Json(req): Json<LoginRequest>) -> Response {
    let Some(logins) = app
        .0
        .options
        .logins
        .clone()
        .filter(|_| app.0.login_required)
    else {
        return Error::BadRequest("this dashboard needs no login".into()).into_response();
    };
    if req.user.len() > 256 || req.password.len() > 1024 {
        return Error::Unauthorized.into_response();
    }
    let user = req.user.clone();
    let check = tokio::task::spawn_blocking(move || logins.check(&req.user, &req.password))
        .await
        .unwrap_or(LoginCheck::Refused);
    match check {
        LoginCheck::Controller => {}
        LoginCheck::NotController => {
            tracing::warn!("dashboard: refused login of {user:?}: not a controller identity");
            return Error::Forbidden(format!(
                "{user} is not a controller identity: devices cannot use the dashboard"
            ))
            .into_response();
        }
        LoginCheck::Refused => {
            tracing::warn!("dashboard: refused login of {user:?}: bad user name or password");
            return (
                StatusCode::UNAUTHORIZED,
                Json(serde_json::json!({"error": "bad user name or password"})),
            )
                .into_response();
        }
    }
    let (token, csrf) = app.0.sessions.create(&user);
    let secure = if app.0.options.secure_cookie {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200{secure}",
        auth::COOKIE
    );
    let mut resp = Json(SessionInfo {
        login_required: true,
        user: Some(user),
        csrf: Some(csrf),
    })
    .into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("ASCII"),
    );
    resp
}

async fn logout(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Some(t) = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .find_map(|h| auth::cookie(h, auth::COOKIE))
    {
        app.0.sessions.remove(t);
    }
    let cookie = format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        auth::COOKIE
    );
    ([(header::SET_COOKIE, cookie)], StatusCode::NO_CONTENT).into_response()
}

async fn fleet(State(app): State<App>) -> Json<FleetStatus> {
    Json(app.0.link.status())
}

async fn command(
    State(app): State<App>,
    body: Result<Json<CommandRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<SwitchReport>, Error> {
    let Json(req) = body.map_err(|e| Error::BadRequest(e.body_text()))?;
    Ok(Json(command::run(&app.0.link, req).await?))
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    since: Option<String>,
    until: Option<String>,
    buckets: Option<usize>,
}

fn history_error(e: HistoryError) -> Error {
    match e {
        HistoryError::NoDir(_) | HistoryError::NotDir(_) => Error::NotFound(e.to_string()),
        HistoryError::EmptyRange { .. } | HistoryError::Buckets(_) | HistoryError::Time(_) => {
            Error::BadRequest(e.to_string())
        }
        e => Error::NotFound(e.to_string()),
    }
}

async fn history(
    State(app): State<App>,
    Path((device, name)): Path<(String, String)>,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, Error> {
    let device = Name::new(&device).map_err(|e| Error::BadRequest(e.to_string()))?;
    if let Some(day) = name.strip_suffix(".csv") {
        if let Ok(day) = day.parse::<Day>() {
            return day_file(&app, &device, day).await;
        }
    }
    let sensor = Name::new(&name).map_err(|e| Error::BadRequest(e.to_string()))?;
    if !app.0.reader.has_device(&device) {
        return Err(Error::NotFound(format!("no history for device {device}")));
    }
    let now = now_ms();
    let since = parse_when(q.since.as_deref().unwrap_or("24h"), now)
        .map_err(|e| Error::BadRequest(format!("since: {e}")))?;
    let until = parse_when(q.until.as_deref().unwrap_or("now"), now)
        .map_err(|e| Error::BadRequest(format!("until: {e}")))?;
    let buckets = q.buckets.unwrap_or(400).clamp(1, MAX_CHART_BUCKETS);
    let range = TimeRange::new(since, until).map_err(history_error)?;
    let reader = app.0.reader.clone();
    let series = tokio::task::spawn_blocking(move || {
        reader.series(&device, sensor.as_str(), &range, buckets)
    })
    .await
    .map_err(|e| Error::Broker(format!("history query failed: {e}")))?
    .map_err(history_error)?;
    Ok(Json(series).into_response())
}

async fn day_file(app: &App, device: &Name, day: Day) -> Result<Response, Error> {
    let path = pifleet_history::layout::day_file(app.0.reader.dir(), device, day);
    let body = tokio::fs::read(&path)
        .await
        .map_err(|_| Error::NotFound(format!("no history for {device} on {day}")))?;
    let disposition = format!("attachment; filename=\"{device}-{day}.csv\"");
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

fn fleet_event(status: &FleetStatus) -> Event {
    Event::default()
        .event("fleet")
        .json_data(status)
        .expect("serializes")
}

fn link_event(up: bool) -> Event {
    Event::default().event("link").data(if up {
        "{\"connected\":true}"
    } else {
        "{\"connected\":false}"
    })
}

async fn events(State(app): State<App>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (snapshot, connected, rx) = app.0.link.subscribe();
    let hello = Event::default()
        .event("hello")
        .data(format!("{{\"now_ms\":{}}}", now_ms()));
    let first = stream::iter([
        Ok(hello),
        Ok(link_event(connected)),
        Ok(fleet_event(&snapshot)),
    ]);
    let rest = stream::unfold((rx, app), |(mut rx, app)| async move {
        let event = match rx.recv().await {
            Ok(Live::Watch(ev)) => Event::default().json_data(&ev).expect("serializes"),
            Ok(Live::Link(up)) => link_event(up),
            // Too slow to keep up: start again from a fresh snapshot.
            Err(RecvError::Lagged(_)) => fleet_event(&app.0.link.status()),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), (rx, app)))
    });
    Sse::new(first.chain(rest)).keep_alive(KeepAlive::default())
}
