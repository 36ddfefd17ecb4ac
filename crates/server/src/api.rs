//! The routes of `/api/v1` and their handlers. Handlers validate their input (VMIDs,
//! storage ids, archive names, task ids, option values through the library types), call the
//! libraries, and answer JSON; long operations start a task ([`crate::tasks`]) and answer
//! `{"task": "<UPID>"}`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Map, Value};
use vmdump_config::{BackupJobConfig, KeepOptions, VmId, VzdumpOptions};
use vmdump_store::{Filter, GuestType, Storage};
use vmdump_task::{TaskInfo, TaskStatus, Upid};

use crate::auth::{self, Caller};
use crate::{tasks, App};

/// Request bodies larger than this are refused with 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// An oversized body up to this size is read (and dropped) before the 413 goes out, so the
/// client, still sending, gets the answer instead of a reset connection.
const DRAIN_LIMIT: u64 = 1 << 20;

/// An API error: an HTTP status and a message, answered as `{"error": "<message>"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with this status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400.
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 500 with the error's chain.
    pub fn from_error(e: &dyn std::error::Error) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, vmdump_task::one_line(e))
    }

    /// A storage error: 404 for a missing backup or storage, 400 for bad input, 409 for a
    /// refusal (protected, limits), else 500.
    fn store(e: vmdump_store::Error) -> Self {
        use vmdump_store::ErrorKind as K;
        let status = match (&e, e.kind()) {
            (vmdump_store::Error::Config(c), _) => config_status(c),
            (_, K::NotFound) => StatusCode::NOT_FOUND,
            (_, K::Invalid) => StatusCode::BAD_REQUEST,
            (_, K::Refused) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, vmdump_task::one_line(&e))
    }

    fn config(e: vmdump_config::Error) -> Self {
        Self::new(config_status(&e), vmdump_task::one_line(&e))
    }
}

fn config_status(e: &vmdump_config::Error) -> StatusCode {
    match e.kind() {
        vmdump_config::ErrorKind::NotFound => StatusCode::NOT_FOUND,
        vmdump_config::ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

/// A JSON body whose rejections (bad JSON 400, too large 413, wrong type 415) are answered
/// as API errors.
pub struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(r) => Err(ApiError::new(r.status(), r.body_text())),
        }
    }
}

/// An optional JSON body: empty means `{}` (limits and errors as [`Body`]).
pub struct OptionalBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for OptionalBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| ApiError::new(r.status(), r.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalBody(json!({})));
        }
        serde_json::from_slice(&bytes)
            .map(OptionalBody)
            .map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
    }
}

// ---- input validation -------------------------------------------------------------------

fn vmid(s: &str) -> ApiResult<VmId> {
    s.parse::<VmId>()
        .map_err(|e| ApiError::bad(format!("invalid VMID '{s}': {e}")))
}

fn storage_id(s: &str) -> ApiResult<&str> {
    if vmdump_config::valid_storage_id(s) {
        Ok(s)
    } else {
        Err(ApiError::bad(format!("invalid storage id '{s}'")))
    }
}

/// An archive's file name: one path component with a vzdump name, nothing else.
fn archive_name(s: &str) -> ApiResult<&str> {
    if s.contains('/') || s.contains('\\') || s.starts_with('.') {
        return Err(ApiError::bad(format!("invalid backup name '{s}'")));
    }
    vmdump_store::layout::parse_archive_name(s)
        .map(|_| s)
        .ok_or_else(|| ApiError::bad(format!("invalid backup name '{s}'")))
}

fn job_id(s: &str) -> ApiResult<&str> {
    if vmdump_config::valid_storage_id(s) {
        Ok(s)
    } else {
        Err(ApiError::bad(format!("invalid job id '{s}'")))
    }
}

fn upid(s: &str) -> ApiResult<Upid> {
    Upid::parse(s).ok_or_else(|| ApiError::bad(format!("invalid task id '{s}'")))
}

/// A JSON option value as the text vzdump.conf and jobs.cfg would hold.
fn option_text(key: &str, v: &Value) -> ApiResult<Option<String>> {
    Ok(Some(match v {
        Value::Null => return Ok(None),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "1" } else { "0" }.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) => {
            let mut parts = Vec::new();
            for i in items {
                if let Some(t) = option_text(key, i)? {
                    parts.push(t);
                }
            }
            parts.join(",")
        }
        Value::Object(_) => {
            return Err(ApiError::bad(format!(
                "option '{key}': an object is not a valid value"
            )))
        }
    }))
}

fn object(body: Value) -> ApiResult<Map<String, Value>> {
    match body {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::bad("the body must be a JSON object")),
    }
}

// ---- the router -------------------------------------------------------------------------

/// Every route: the API under `/api/v1` behind the guard, the UI's files, security headers.
pub fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/me", get(me))
        .route("/openapi.json", get(openapi))
        .route("/guests", get(guests))
        .route("/guests/{vmid}/backup", post(backup_guest))
        .route("/backup", post(backup_many))
        .route("/storages", get(storages))
        .route("/storages/{id}/backups", get(backups))
        .route(
            "/storages/{id}/backups/{name}",
            get(backup_get).put(backup_set).delete(backup_remove),
        )
        .route("/storages/{id}/backups/{name}/restore", post(restore))
        .route("/storages/{id}/prune", get(prune_plan).post(prune_apply))
        .route("/jobs", get(jobs).post(job_add))
        .route("/jobs/{id}", get(job_get).put(job_set).delete(job_remove))
        .route("/jobs/{id}/run", post(job_run))
        .route("/schedule/next", get(schedule_next))
        .route("/tasks", get(task_list))
        .route("/tasks/{upid}", get(task_get).delete(task_stop))
        .route("/tasks/{upid}/log", get(task_log))
        .route("/tasks/{upid}/events", get(task_events))
        .fallback(|| async { ApiError::not_found("no such API endpoint") });
    Router::new()
        .nest("/api/v1", api)
        .merge(crate::ui::routes())
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            auth::guard,
        ))
        .layer(axum::middleware::from_fn(oversized))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(app)
}

/// 413 for a declared body over [`BODY_LIMIT`], before anything else looks at the request
/// (bodies without a length are cut by the extractors' limit).
async fn oversized(req: Request, next: axum::middleware::Next) -> Response {
    let len = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match len {
        Some(len) if len > BODY_LIMIT as u64 => {
            if len <= DRAIN_LIMIT {
                let drain = axum::body::to_bytes(req.into_body(), DRAIN_LIMIT as usize);
                let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
            }
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {BODY_LIMIT} bytes"),
            )
            .into_response()
        }
        _ => next.run(req).await,
    }
}

async fn security_headers(mut r: Response) -> Response {
    // A refused request's body may be unread: the connection cannot be reused, and the
    // client must know it before it sends the next request on it.
    if matches!(r.status().as_u16(), 401 | 403 | 413 | 429) {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let h = r.headers_mut();
    for (k, v) in [
        (
            "content-security-policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

// ---- session ----------------------------------------------------------------------------

#[derive(serde::Deserialize)]
struct Login {
    token: String,
}

async fn login(State(app): State<Arc<App>>, req: Request) -> Response {
    let ip = auth::peer(req.extensions());
    if let Some(secs) = app.auth.locked(ip) {
        app.audit.record(
            "-",
            ip,
            "POST",
            "/api/v1/login",
            StatusCode::TOO_MANY_REQUESTS,
            Some("locked out"),
        );
        let mut r = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins; try again later",
        )
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let body = match Body::<Login>::from_request(req, &()).await {
        Ok(Body(b)) => b,
        Err(e) => return e.into_response(),
    };
    let token = match app.tokens.verify(body.token.trim()) {
        Ok(t) => t,
        Err(e) => return ApiError::from_error(&e).into_response(),
    };
    let Some(token) = token else {
        app.auth.failed(ip);
        app.audit.record(
            "-",
            ip,
            "POST",
            "/api/v1/login",
            StatusCode::UNAUTHORIZED,
            Some("bad token"),
        );
        return ApiError::new(StatusCode::UNAUTHORIZED, "invalid token").into_response();
    };
    let (id, csrf) = app.auth.open(&token.name, token.read_only);
    app.audit.record(
        &token.user(),
        ip,
        "POST",
        "/api/v1/login",
        StatusCode::OK,
        Some("session opened"),
    );
    let mut r = Json(json!({
        "user": token.user(),
        "read_only": token.read_only,
        "csrf": csrf,
        "expires_in": auth::SESSION_IDLE.as_secs(),
    }))
    .into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, auth::set_cookie(Some(&id), app.secure));
    r
}

async fn logout(State(app): State<Arc<App>>, headers: axum::http::HeaderMap) -> Response {
    if let Some(id) = auth::session_cookie(&headers) {
        app.auth.close(&id);
    }
    let mut r = Json(json!({})).into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, auth::set_cookie(None, app.secure));
    r
}

async fn me(Extension(caller): Extension<Caller>) -> Json<Value> {
    Json(json!({ "user": caller.user, "read_only": caller.read_only }))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::OPENAPI).into_response()
}

// ---- guests -----------------------------------------------------------------------------

/// The newest backup of every guest on every backup storage.
fn last_backups(root: &vmdump_config::ConfigRoot) -> HashMap<u32, vmdump_store::Backup> {
    let mut last: HashMap<u32, vmdump_store::Backup> = HashMap::new();
    let Ok(cfg) = root.storage() else {
        return last;
    };
    for entry in cfg.with_content("backup") {
        if entry.disabled() {
            continue;
        }
        let Ok(storage) = Storage::open(root, entry.id()) else {
            continue;
        };
        for b in storage.list(&Filter::default()).unwrap_or_default() {
            match last.get(&b.vmid) {
                Some(old) if old.time >= b.time => {}
                _ => {
                    last.insert(b.vmid, b);
                }
            }
        }
    }
    last
}

async fn guests(State(app): State<Arc<App>>) -> ApiResult {
    let root = app.settings.root.clone();
    let run = app.settings.run_dir.clone();
    let vms = vmdump_guest::Runtime::new(root.clone())
        .with_run_base(&run)
        .list()
        .await
        .map_err(|e| ApiError::from_error(&e))?;
    let (cts, last) = tokio::task::spawn_blocking(move || {
        let cts = vmdump_lxc::Runtime::new(root.clone(), run).list();
        (cts, last_backups(&root))
    })
    .await
    .map_err(|e| ApiError::from_error(&e))?;
    let cts = cts.map_err(|e| ApiError::from_error(&e))?;
    let last_json = |vmid: u32| {
        last.get(&vmid)
            .map(|b| json!({ "volid": b.volid, "time": b.time, "size": b.size }))
    };
    let mut out = Vec::new();
    for vm in &vms {
        out.push(json!({
            "vmid": vm.vmid,
            "type": "qemu",
            "name": vm.name,
            "status": vm.state.as_str(),
            "qmpstatus": vm.state.qmp_status(),
            "maxmem": vm.memory_mib.map(|m| m * 1024 * 1024),
            "last_backup": last_json(vm.vmid),
        }));
    }
    for ct in &cts {
        out.push(json!({
            "vmid": ct.vmid,
            "type": "lxc",
            "name": ct.hostname,
            "status": ct.state.as_str(),
            "last_backup": last_json(ct.vmid),
        }));
    }
    out.sort_by_key(|g| g["vmid"].as_u64());
    Ok(Json(Value::Array(out)))
}

/// The selection keys of a backup request; everything else is a vzdump option.
const SELECTION: [&str; 3] = ["vmid", "all", "exclude"];

/// Builds the unsaved job of a "back up now": the selection and every option, each checked
/// by the library types (one home per option: `VzdumpOptions::apply`).
fn backup_job(
    app: &App,
    vmids: Vec<u32>,
    all: bool,
    exclude: Vec<u32>,
    body: &Map<String, Value>,
) -> ApiResult<BackupJobConfig> {
    let mut options = VzdumpOptions::default();
    let mut pairs = Vec::new();
    for (k, v) in body {
        if SELECTION.contains(&k.as_str()) {
            continue;
        }
        let Some(text) = option_text(k, v)? else {
            continue;
        };
        options
            .apply(k, &text)
            .map_err(|e| ApiError::bad(vmdump_task::one_line(&e)))?;
        pairs.push((k.clone(), text));
    }
    let root = &app.settings.root;
    for id in &vmids {
        if !root.qemu_config_path(*id).exists() && !root.lxc_config_path(*id).exists() {
            return Err(ApiError::not_found(format!("guest {id} does not exist")));
        }
    }
    // Resolve the options now (storage, vzdump.conf): a bad request fails here, not later in
    // the task.
    vmdump_engine::BackupJob::new(root.clone(), &options, app.settings.run_dir.clone())
        .map_err(|e| ApiError::bad(vmdump_task::one_line(&e)))?;
    Ok(BackupJobConfig {
        id: "backup-now".into(),
        schedule: "manual".into(),
        enabled: true,
        repeat_missed: false,
        comment: None,
        vmids,
        all,
        exclude,
        options,
        option_pairs: pairs,
    })
}

fn start_backup(app: &Arc<App>, caller: &Caller, job: BackupJobConfig) -> ApiResult {
    let id = match job.vmids.as_slice() {
        [one] => one.to_string(),
        _ => String::new(),
    };
    let command = if job.all {
        "vmdump backup --all (web API)".to_string()
    } else {
        format!(
            "vmdump backup {} (web API)",
            job.vmids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        )
    };
    let upid = tasks::backup(app, &id, &caller.user, job, command)?;
    Ok(Json(json!({ "task": upid })))
}

async fn backup_guest(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    OptionalBody(body): OptionalBody,
) -> ApiResult {
    let id = vmid(&id)?;
    let body = object(body)?;
    let job = backup_job(&app, vec![id.get()], false, Vec::new(), &body)?;
    start_backup(&app, &caller, job)
}

fn id_list(key: &str, v: Option<&Value>) -> ApiResult<Vec<u32>> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let text = option_text(key, v)?.unwrap_or_default();
    text.split([',', ' ', ';'])
        .filter(|s| !s.is_empty())
        .map(|s| vmid(s).map(VmId::get))
        .collect()
}

async fn backup_many(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Body(body): Body<Value>,
) -> ApiResult {
    let body = object(body)?;
    let vmids = id_list("vmid", body.get("vmid"))?;
    let exclude = id_list("exclude", body.get("exclude"))?;
    let all = body
        .get("all")
        .is_some_and(|v| v == &json!(true) || v == &json!(1))
        || !exclude.is_empty();
    if all != vmids.is_empty() {
        return Err(ApiError::bad(
            "give either 'vmid' (a list of guests) or 'all'/'exclude'",
        ));
    }
    let job = backup_job(&app, vmids, all, exclude, &body)?;
    start_backup(&app, &caller, job)
}

// ---- storages and backups ---------------------------------------------------------------

async fn storages(State(app): State<Arc<App>>) -> ApiResult {
    let root = app.settings.root.clone();
    tokio::task::spawn_blocking(move || {
        let cfg = root.storage().map_err(ApiError::config)?;
        let mut out = Vec::new();
        for e in cfg.entries() {
            let base = cfg.base_path(e.id()).ok();
            let usage = base.as_ref().and_then(|p| {
                let dump = p.join("dump");
                let at = if dump.exists() { dump } else { p.clone() };
                rustix::fs::statvfs(&at).ok()
            });
            let (total, avail, used) = usage.map_or((None, None, None), |s| {
                let total = s.f_blocks * s.f_frsize;
                let free = s.f_bfree * s.f_frsize;
                let avail = s.f_bavail * s.f_frsize;
                (Some(total), Some(avail), Some(total.saturating_sub(free)))
            });
            out.push(json!({
                "id": e.id(),
                "type": e.kind().as_str(),
                "path": base.map(|p| p.display().to_string()),
                "content": e.content(),
                "backup": e.has_content("backup"),
                "disabled": e.disabled(),
                "total": total,
                "used": used,
                "avail": avail,
            }));
        }
        Ok(Json(Value::Array(out)))
    })
    .await
    .map_err(|e| ApiError::from_error(&e))?
}

fn open_storage(app: &App, id: &str) -> ApiResult<Storage> {
    Storage::open(&app.settings.root, storage_id(id)?).map_err(ApiError::store)
}

#[derive(serde::Deserialize)]
struct ListQuery {
    vmid: Option<String>,
}

async fn backups(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let storage = open_storage(&app, &id)?;
    let vmid = q.vmid.as_deref().map(vmid).transpose()?.map(VmId::get);
    tokio::task::spawn_blocking(move || {
        let list = storage
            .list(&Filter { vmid, kind: None })
            .map_err(ApiError::store)?;
        let body = serde_json::to_vec(&list).map_err(|e| ApiError::from_error(&e))?;
        Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
    })
    .await
    .map_err(|e| ApiError::from_error(&e))?
}

fn open_backup(app: &App, id: &str, name: &str) -> ApiResult<(Storage, vmdump_store::Backup)> {
    let name = archive_name(name)?;
    let storage = open_storage(app, id)?;
    let backup = storage.backup(name).map_err(ApiError::store)?;
    Ok((storage, backup))
}

async fn backup_get(
    State(app): State<Arc<App>>,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult {
    let (_, b) = open_backup(&app, &id, &name)?;
    Ok(Json(
        serde_json::to_value(&b).map_err(|e| ApiError::from_error(&e))?,
    ))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupChange {
    notes: Option<String>,
    protected: Option<bool>,
}

async fn backup_set(
    State(app): State<Arc<App>>,
    Path((id, name)): Path<(String, String)>,
    Body(change): Body<BackupChange>,
) -> ApiResult {
    let (storage, b) = open_backup(&app, &id, &name)?;
    if let Some(n) = &change.notes {
        storage.set_notes(&b, n).map_err(ApiError::store)?;
    }
    if let Some(p) = change.protected {
        storage.set_protected(&b, p).map_err(ApiError::store)?;
    }
    let b = storage.backup(&b.file_name).map_err(ApiError::store)?;
    Ok(Json(
        serde_json::to_value(&b).map_err(|e| ApiError::from_error(&e))?,
    ))
}

async fn backup_remove(
    State(app): State<Arc<App>>,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult {
    let (storage, b) = open_backup(&app, &id, &name)?;
    storage.remove(&b).map_err(ApiError::store)?;
    Ok(Json(json!({ "removed": b.volid })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreRequest {
    vmid: Value,
    storage: Option<String>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    unique: bool,
    #[serde(default)]
    start: bool,
    unprivileged: Option<bool>,
    bwlimit: Option<u64>,
}

async fn restore(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path((id, name)): Path<(String, String)>,
    Body(req): Body<RestoreRequest>,
) -> ApiResult {
    let (storage, backup) = open_backup(&app, &id, &name)?;
    let target = match &req.vmid {
        Value::Number(n) => vmid(&n.to_string())?,
        Value::String(s) => vmid(s)?,
        _ => return Err(ApiError::bad("'vmid' must be a VMID")),
    };
    if let Some(s) = &req.storage {
        storage_id(s)?;
    }
    let spec = tasks::RestoreSpec {
        archive: storage.path(&backup),
        kind: backup.kind,
        vmid: target,
        storage: req.storage,
        force: req.force,
        unique: req.unique,
        start: req.start,
        unprivileged: req.unprivileged,
        bwlimit: req.bwlimit.filter(|&b| b > 0),
    };
    let upid = tasks::restore(&app, &caller.user, spec)?;
    Ok(Json(json!({ "task": upid })))
}

// ---- retention --------------------------------------------------------------------------

/// The keep rules and selection of a prune request (query or body): `keep-last` etc.,
/// `vmid`, `type`.
fn prune_request(params: &Map<String, Value>) -> ApiResult<(KeepOptions, Filter)> {
    let mut rules = Vec::new();
    let mut filter = Filter::default();
    for (k, v) in params {
        let Some(text) = option_text(k, v)? else {
            continue;
        };
        match k.as_str() {
            "vmid" => filter.vmid = Some(vmid(&text)?.get()),
            "type" => {
                filter.kind = Some(
                    GuestType::parse(&text)
                        .ok_or_else(|| ApiError::bad(format!("invalid guest type '{text}'")))?,
                );
            }
            _ if k.starts_with("keep-") => rules.push(format!("{k}={text}")),
            _ => return Err(ApiError::bad(format!("unknown parameter '{k}'"))),
        }
    }
    if rules.is_empty() {
        return Err(ApiError::bad(
            "no keep options given (keep-last etc., or keep-all=1)",
        ));
    }
    let keep = KeepOptions::parse(&rules.join(","))
        .map_err(|e| ApiError::bad(vmdump_task::one_line(&e)))?;
    Ok((keep, filter))
}

async fn prune_plan(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let storage = open_storage(&app, &id)?;
    let params: Map<String, Value> = q.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    let (keep, filter) = prune_request(&params)?;
    let plan = tokio::task::spawn_blocking(move || {
        let backups = storage.list(&filter).map_err(ApiError::store)?;
        Ok::<_, ApiError>(vmdump_store::prune::plan(&backups, &keep))
    })
    .await
    .map_err(|e| ApiError::from_error(&e))??;
    Ok(Json(
        serde_json::to_value(&plan).map_err(|e| ApiError::from_error(&e))?,
    ))
}

async fn prune_apply(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(body): Body<Value>,
) -> ApiResult {
    let storage = open_storage(&app, &id)?;
    let (keep, filter) = prune_request(&object(body)?)?;
    let upid = tasks::prune(&app, &caller.user, storage, keep, filter)?;
    Ok(Json(json!({ "task": upid })))
}

// ---- jobs -------------------------------------------------------------------------------

fn job_json(j: &BackupJobConfig, next: Option<&vmdump_jobs::scheduler::NextRun>) -> Value {
    let options: Map<String, Value> = j
        .option_pairs
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "id": j.id,
        "schedule": j.schedule,
        "enabled": j.enabled,
        "repeat-missed": j.repeat_missed,
        "comment": j.comment,
        "all": j.all,
        "vmid": j.vmids,
        "exclude": j.exclude,
        "options": options,
        "last_run": next.and_then(|n| n.last_run),
        "last_result": next.and_then(|n| n.last_result.clone()),
        "next_run": next.and_then(|n| n.next_run),
    })
}

fn states(app: &App) -> vmdump_jobs::state::StateStore {
    vmdump_jobs::state::StateStore::new(&app.settings.state_dir)
}

async fn jobs(State(app): State<Arc<App>>) -> ApiResult {
    let root = &app.settings.root;
    let list = root.jobs().map_err(ApiError::config)?.jobs();
    let next = vmdump_jobs::scheduler::next_runs(root, &states(&app), chrono::Local::now())
        .map_err(|e| ApiError::from_error(&e))?;
    let out: Vec<Value> = list
        .iter()
        .map(|j| job_json(j, next.iter().find(|n| n.id == j.id)))
        .collect();
    Ok(Json(Value::Array(out)))
}

async fn job_get(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    let id = job_id(&id)?;
    let root = &app.settings.root;
    let job = root
        .jobs()
        .map_err(ApiError::config)?
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("job '{id}' does not exist")))?;
    let next = vmdump_jobs::scheduler::next_runs(root, &states(&app), chrono::Local::now())
        .map_err(|e| ApiError::from_error(&e))?;
    let mut v = job_json(&job, next.iter().find(|n| n.id == job.id));
    v["next_runs"] = json!(next_times(&job.schedule, 5)?);
    Ok(Json(v))
}

/// The next `count` times of a calendar event from now (seconds since the epoch).
fn next_times(schedule: &str, count: usize) -> ApiResult<Vec<i64>> {
    let event = vmdump_schedule::CalendarEvent::parse(schedule)
        .map_err(|e| ApiError::bad(format!("schedule '{schedule}': {e}")))?;
    let mut at = chrono::Local::now();
    let mut out = Vec::new();
    while out.len() < count {
        let Some(next) = event.next_after(&at) else {
            break;
        };
        out.push(next.timestamp());
        at = next;
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
struct ScheduleQuery {
    schedule: String,
    count: Option<usize>,
}

async fn schedule_next(Query(q): Query<ScheduleQuery>) -> ApiResult {
    Ok(Json(json!(next_times(
        &q.schedule,
        q.count.unwrap_or(5).min(50)
    )?)))
}

/// `key value` pairs of a job body (values as jobs.cfg holds them); `id` and `delete` are
/// not properties.
fn job_pairs(body: &Map<String, Value>) -> ApiResult<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (k, v) in body {
        if k == "id" || k == "delete" {
            continue;
        }
        if let Some(t) = option_text(k, v)? {
            if k == "schedule" {
                next_times(&t, 1)?;
            }
            out.push((k.clone(), t));
        }
    }
    Ok(out)
}

async fn job_add(
    State(app): State<Arc<App>>,
    Body(body): Body<Value>,
) -> Result<Response, ApiError> {
    let body = object(body)?;
    let id = body
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad("'id' is required"))?
        .to_string();
    job_id(&id)?;
    let pairs = job_pairs(&body)?;
    let root = &app.settings.root;
    let mut cfg = root.jobs().map_err(ApiError::config)?;
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    cfg.add(&id, &refs)
        .map_err(|e| ApiError::bad(vmdump_task::one_line(&e)))?;
    cfg.save(&root.jobs_cfg_path()).map_err(ApiError::config)?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response())
}

async fn job_set(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Body(body): Body<Value>,
) -> ApiResult {
    let id = job_id(&id)?.to_string();
    let body = object(body)?;
    let pairs = job_pairs(&body)?;
    let delete: Vec<String> = match body.get("delete") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => option_text("delete", v)?
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    };
    if pairs.is_empty() && delete.is_empty() {
        return Err(ApiError::bad("nothing to change"));
    }
    let root = &app.settings.root;
    let mut cfg = root.jobs().map_err(ApiError::config)?;
    let mut changes: Vec<(&str, Option<&str>)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), Some(v.as_str())))
        .collect();
    changes.extend(delete.iter().map(|k| (k.as_str(), None)));
    cfg.set(&id, &changes).map_err(|e| {
        let status = if cfg.get(&id).is_none() {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, vmdump_task::one_line(&e))
    })?;
    cfg.save(&root.jobs_cfg_path()).map_err(ApiError::config)?;
    Ok(Json(json!({ "id": id })))
}

async fn job_remove(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    let id = job_id(&id)?;
    let root = &app.settings.root;
    let mut cfg = root.jobs().map_err(ApiError::config)?;
    if !cfg.remove(id) {
        return Err(ApiError::not_found(format!("job '{id}' does not exist")));
    }
    cfg.save(&root.jobs_cfg_path()).map_err(ApiError::config)?;
    states(&app)
        .remove(id)
        .map_err(|e| ApiError::from_error(&e))?;
    Ok(Json(json!({ "removed": id })))
}

async fn job_run(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    let id = job_id(&id)?;
    let job = app
        .settings
        .root
        .jobs()
        .map_err(ApiError::config)?
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("job '{id}' does not exist")))?;
    let command = format!("vmdump jobs run {id} (web API)");
    let upid = tasks::backup(&app, id, &caller.user, job, command)?;
    Ok(Json(json!({ "task": upid })))
}

// ---- tasks ------------------------------------------------------------------------------

fn task_json(t: &TaskInfo) -> Value {
    let (transferred, total) = t.progress.unwrap_or((0, 0));
    json!({
        "upid": t.upid.to_string(),
        "node": t.upid.node,
        "pid": t.upid.proc.pid,
        "type": t.upid.kind,
        "id": t.upid.id,
        "user": t.upid.user,
        "starttime": t.upid.start,
        "endtime": t.end,
        "status": t.status.as_str(),
        "exitstatus": match &t.status {
            TaskStatus::Running => Value::Null,
            TaskStatus::Ok => json!("OK"),
            TaskStatus::Error(m) => json!(m),
        },
        "progress": t.progress.map(|_| json!({ "transferred": transferred, "total": total })),
    })
}

fn task_info(app: &App, u: &Upid) -> ApiResult<TaskInfo> {
    app.settings.tasks.info(u).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ApiError::not_found(format!("task '{u}' does not exist"))
        } else {
            ApiError::from_error(&e)
        }
    })
}

#[derive(serde::Deserialize)]
struct TaskQuery {
    limit: Option<usize>,
}

async fn task_list(State(app): State<Arc<App>>, Query(q): Query<TaskQuery>) -> ApiResult {
    let tasks = app
        .settings
        .tasks
        .list(q.limit.unwrap_or(50).min(1000))
        .map_err(|e| ApiError::from_error(&e))?;
    Ok(Json(Value::Array(tasks.iter().map(task_json).collect())))
}

async fn task_get(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    let u = upid(&id)?;
    Ok(Json(task_json(&task_info(&app, &u)?)))
}

async fn task_stop(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    let u = upid(&id)?;
    let info = task_info(&app, &u)?;
    if info.status != TaskStatus::Running {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the task is not running",
        ));
    }
    if !tasks::cancel(&app, &u.to_string()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the task runs in another process (stop it there)",
        ));
    }
    Ok(Json(json!({ "stopping": u.to_string() })))
}

#[derive(serde::Deserialize)]
struct LogQuery {
    start: Option<u64>,
}

async fn task_log(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult {
    let u = upid(&id)?;
    let info = task_info(&app, &u)?;
    let (lines, next) = read_lines(&app.settings.tasks.log_path(&u), q.start.unwrap_or(0));
    Ok(Json(json!({
        "lines": lines,
        "next": next,
        "status": info.status.as_str(),
    })))
}

/// The whole lines of a log file from byte `start`, and the offset after the last one.
fn read_lines(path: &std::path::Path, start: u64) -> (Vec<String>, u64) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return (Vec::new(), start);
    };
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.take(4 << 20).read_to_end(&mut buf).is_err() {
        return (Vec::new(), start);
    }
    let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
        return (Vec::new(), start);
    };
    let text = String::from_utf8_lossy(&buf[..end]);
    (
        text.split('\n').map(str::to_string).collect(),
        start + end as u64 + 1,
    )
}

/// The live log of a task as server-sent events: `log` (one line each), `progress`
/// (`{"transferred","total"}`), and a final `end` (`{"status","exitstatus"}`).
async fn task_events(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let u = upid(&id)?;
    task_info(&app, &u)?;
    struct Tail {
        app: Arc<App>,
        upid: Upid,
        offset: u64,
        progress: Option<(u64, u64)>,
        done: bool,
        first: bool,
    }
    let st = Tail {
        app,
        upid: u,
        offset: 0,
        progress: None,
        done: false,
        first: true,
    };
    let s = stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        if !st.first {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        st.first = false;
        let info = st.app.settings.tasks.info(&st.upid).ok();
        let (lines, next) = read_lines(&st.app.settings.tasks.log_path(&st.upid), st.offset);
        st.offset = next;
        let mut events: Vec<Event> = lines
            .into_iter()
            .map(|l| Event::default().event("log").data(l))
            .collect();
        if let Some(info) = &info {
            if info.progress.is_some() && info.progress != st.progress {
                st.progress = info.progress;
                let (t, n) = info.progress.unwrap_or((0, 0));
                events.push(
                    Event::default()
                        .event("progress")
                        .data(json!({ "transferred": t, "total": n }).to_string()),
                );
            }
        }
        let ended = info
            .as_ref()
            .is_none_or(|i| i.status != TaskStatus::Running);
        if ended {
            // Lines written between the status and this read.
            let (rest, _) = read_lines(&st.app.settings.tasks.log_path(&st.upid), st.offset);
            events.extend(
                rest.into_iter()
                    .map(|l| Event::default().event("log").data(l)),
            );
            let v = info.as_ref().map_or(json!({"status": "error"}), task_json);
            events.push(Event::default().event("end").data(v.to_string()));
            st.done = true;
        }
        Some((
            stream::iter(events.into_iter().map(Ok::<Event, Infallible>)),
            st,
        ))
    })
    .flatten();
    Ok(Sse::new(s).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// Every path and method of the OpenAPI document is a route (the fallback's "no such API
    /// endpoint" and 405 never answer them), and every route is in the document.
    #[tokio::test]
    async fn the_openapi_document_matches_the_routes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("etc");
        std::fs::create_dir_all(root.join("qemu-server")).unwrap();
        std::fs::write(
            root.join("storage.cfg"),
            format!(
                "dir: local\n\tpath {}\n\tcontent backup\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let settings = crate::Settings {
            root: vmdump_config::ConfigRoot::new(&root),
            run_dir: dir.path().join("run"),
            state_dir: dir.path().join("state"),
            server_dir: dir.path().join("server"),
            tasks: vmdump_task::TaskDir::new(dir.path().join("tasks")),
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: None,
        };
        let tokens = crate::TokenStore::new(&root);
        let secret = tokens.add("t", false).unwrap();
        let app = Arc::new(App {
            tokens,
            auth: auth::Auth::default(),
            audit: crate::audit::Audit::new(&settings.server_dir),
            running: std::sync::Mutex::new(HashMap::new()),
            secure: false,
            settings,
        });
        let router = router(app);
        let doc: Value = serde_json::from_str(crate::OPENAPI).unwrap();
        let mut documented = 0;
        for (path, ops) in doc["paths"].as_object().unwrap() {
            let concrete = path
                .replace("{vmid}", "100")
                .replace("{id}", "local")
                .replace("{name}", "vzdump-qemu-100-2026_01_01-00_00_00.vma.zst")
                .replace(
                    "{upid}",
                    "UPID:h:00000001:00000001:00000001:vzdump:100:t@token:",
                );
            for method in ops.as_object().unwrap().keys() {
                documented += 1;
                let req = axum::http::Request::builder()
                    .method(method.to_uppercase().as_str())
                    .uri(format!("/api/v1{concrete}?schedule=daily"))
                    .header("authorization", format!("Bearer {secret}"))
                    .body(axum::body::Body::empty())
                    .unwrap();
                let resp = router.clone().oneshot(req).await.unwrap();
                let status = resp.status();
                let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                    .await
                    .unwrap();
                let text = String::from_utf8_lossy(&body);
                assert!(
                    status != StatusCode::METHOD_NOT_ALLOWED
                        && !text.contains("no such API endpoint"),
                    "{method} {path}: {status} {text}"
                );
            }
        }
        // router(): 27 method routes under /api/v1.
        assert_eq!(
            documented, 27,
            "a route is missing in openapi.json (or the count here)"
        );
    }
}
