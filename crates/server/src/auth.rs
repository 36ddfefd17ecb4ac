//! Who is calling: bearer tokens, browser sessions with their CSRF token, the failed-login
//! rate limit, and the guard every `/api/` request passes.
//!
//! - `Authorization: Bearer <secret>`: a token of `tokens.cfg` (no CSRF check: browsers never
//!   send this header on their own).
//! - Browser: `POST /api/v1/login {"token": "<secret>"}` sets the `vmdump_session` cookie
//!   (`HttpOnly`, `SameSite=Strict`, `Secure` over HTTPS) for [`SESSION_IDLE`] of inactivity
//!   and returns a CSRF token; every changing request of a session must carry it in
//!   `X-CSRF-Token`. A session ends with its token (removed tokens end their sessions).
//! - Read-only tokens get 403 on every method but GET/HEAD.
//! - [`MAX_FAILURES`] bad credentials from one address within [`FAILURE_WINDOW`] get 429
//!   until the window has passed.
//! - Every changing request (allowed or refused) is written to the audit log.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngCore;

use crate::api::ApiError;
use crate::App;

/// A session ends after this long without a request.
pub const SESSION_IDLE: Duration = Duration::from_secs(15 * 60);
/// Failed logins allowed per address and window.
pub const MAX_FAILURES: usize = 5;
/// The window of the failed-login limit.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// The session cookie's name.
pub const COOKIE: &str = "vmdump_session";
/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The caller of a request, as handlers see it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `<token name>@token`.
    pub user: String,
    /// Only reading is allowed.
    pub read_only: bool,
    /// The session's CSRF token, for cookie-authenticated requests.
    pub csrf: Option<String>,
}

#[derive(Debug, Clone)]
struct Session {
    token: String,
    read_only: bool,
    csrf: String,
    last: Instant,
}

/// Sessions and the failed-login counters (in memory: a restart logs everyone out).
#[derive(Debug, Default)]
pub struct Auth {
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

impl Auth {
    /// Whether `ip` is locked out; the seconds until it may try again.
    pub fn locked(&self, ip: IpAddr) -> Option<u64> {
        let mut f = self.failures.lock().ok()?;
        let q = f.get_mut(&ip)?;
        while q.front().is_some_and(|t| t.elapsed() > FAILURE_WINDOW) {
            q.pop_front();
        }
        if q.len() >= MAX_FAILURES {
            let oldest = *q.front()?;
            Some(FAILURE_WINDOW.saturating_sub(oldest.elapsed()).as_secs() + 1)
        } else {
            None
        }
    }

    /// Counts a failed login from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        if let Ok(mut f) = self.failures.lock() {
            let q = f.entry(ip).or_default();
            q.push_back(Instant::now());
            while q.len() > MAX_FAILURES {
                q.pop_front();
            }
        }
    }

    /// A new session for `token`; returns (session id, CSRF token).
    pub fn open(&self, token: &str, read_only: bool) -> (String, String) {
        let (id, csrf) = (random_hex(), random_hex());
        if let Ok(mut s) = self.sessions.lock() {
            s.retain(|_, v| v.last.elapsed() < SESSION_IDLE);
            s.insert(
                id.clone(),
                Session {
                    token: token.to_string(),
                    read_only,
                    csrf: csrf.clone(),
                    last: Instant::now(),
                },
            );
        }
        (id, csrf)
    }

    /// Ends a session.
    pub fn close(&self, id: &str) {
        if let Ok(mut s) = self.sessions.lock() {
            s.remove(id);
        }
    }

    /// The live session `id` (its idle time starts again): token name, read-only, CSRF.
    fn session(&self, id: &str) -> Option<(String, bool, String)> {
        let mut s = self.sessions.lock().ok()?;
        let sess = s.get_mut(id)?;
        if sess.last.elapsed() >= SESSION_IDLE {
            s.remove(id);
            return None;
        }
        sess.last = Instant::now();
        Some((sess.token.clone(), sess.read_only, sess.csrf.clone()))
    }
}

/// The session id in the request's cookies.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The `Set-Cookie` value of a session (`None`: the one that deletes it).
pub fn set_cookie(id: Option<&str>, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = match id {
        Some(id) => format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            SESSION_IDLE.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&text).expect("cookie text is ASCII")
}

/// The peer address a connection recorded in the request.
pub fn peer(req_ext: &axum::http::Extensions) -> IpAddr {
    req_ext
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

fn too_many(secs: u64) -> Response {
    let mut r = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too many failed logins; try again later",
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// Who sent `headers`, or the refusal to answer with.
fn authenticate(app: &App, headers: &HeaderMap, ip: IpAddr) -> Result<Caller, Box<Response>> {
    let unauthorized = || {
        let mut r =
            ApiError::new(StatusCode::UNAUTHORIZED, "authentication required").into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"vmdump\""),
        );
        Box::new(r)
    };
    let internal = |e: crate::Error| Box::new(ApiError::from_error(&e).into_response());
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        if let Some(secs) = app.auth.locked(ip) {
            return Err(Box::new(too_many(secs)));
        }
        let secret = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        return match app.tokens.verify(secret).map_err(internal)? {
            Some(t) => Ok(Caller {
                user: t.user(),
                read_only: t.read_only,
                csrf: None,
            }),
            None => {
                app.auth.failed(ip);
                Err(unauthorized())
            }
        };
    }
    if let Some(id) = session_cookie(headers) {
        if let Some((token, read_only, csrf)) = app.auth.session(&id) {
            // A removed token ends its sessions.
            let alive = app
                .tokens
                .list()
                .map_err(internal)?
                .iter()
                .any(|t| t.name == token);
            if alive {
                return Ok(Caller {
                    user: format!("{token}@token"),
                    read_only,
                    csrf: Some(csrf),
                });
            }
            app.auth.close(&id);
        }
    }
    Err(unauthorized())
}

/// Whether a request changes something.
pub fn changes(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The guard in front of every `/api/` route (the UI's static files are public; they hold no
/// data). `POST /api/v1/login` authenticates itself.
pub async fn guard(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if !path.starts_with("/api/") || path == "/api/v1/login" {
        return next.run(req).await;
    }
    let ip = peer(req.extensions());
    let method = req.method().clone();
    let caller = match authenticate(&app, req.headers(), ip) {
        Ok(c) => c,
        Err(resp) => {
            if changes(&method) {
                app.audit
                    .record("-", ip, method.as_str(), &path, resp.status(), None);
            }
            return *resp;
        }
    };
    if changes(&method) {
        let refused = if caller.read_only {
            Some("read-only token")
        } else if caller.csrf.as_deref().is_some_and(|want| {
            req.headers()
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .is_none_or(|got| got != want)
        }) {
            Some("missing or wrong CSRF token")
        } else {
            None
        };
        if let Some(why) = refused {
            app.audit.record(
                &caller.user,
                ip,
                method.as_str(),
                &path,
                StatusCode::FORBIDDEN,
                Some(why),
            );
            return ApiError::new(StatusCode::FORBIDDEN, format!("forbidden: {why}"))
                .into_response();
        }
    }
    let user = caller.user.clone();
    req.extensions_mut().insert(caller);
    let resp = next.run(req).await;
    if changes(&method) {
        app.audit
            .record(&user, ip, method.as_str(), &path, resp.status(), None);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_lock_an_address_out_and_sessions_carry_csrf() {
        let auth = Auth::default();
        let ip = IpAddr::from([127, 0, 0, 9]);
        for _ in 0..MAX_FAILURES - 1 {
            auth.failed(ip);
        }
        assert!(auth.locked(ip).is_none());
        auth.failed(ip);
        assert!(auth.locked(ip).is_some_and(|s| s <= 61));
        assert!(auth.locked(IpAddr::from([127, 0, 0, 8])).is_none());
        let (id, csrf) = auth.open("admin", false);
        assert_eq!(auth.session(&id), Some(("admin".into(), false, csrf)));
        auth.close(&id);
        assert_eq!(auth.session(&id), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; vmdump_session=xyz"),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("xyz"));
    }
}
