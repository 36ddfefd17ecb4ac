//! Security of `vmdump serve` against the real server over verified HTTPS: tokens (hashed,
//! root-only file, secret printed once as the last line), 401 without or with a wrong token,
//! 403 for a read-only token on every changing endpoint, 400 for path escapes and bad input,
//! 413 for oversized bodies, browser sessions refused without the CSRF token, removed tokens
//! and ended sessions, the audit log, the failed-login limit, plain HTTP only on loopback.

mod serve_common;

use std::os::unix::fs::PermissionsExt;

use serde_json::{json, Value};
use serve_common::{enc, Env, Server};

const ARCHIVE: &str = "vzdump-qemu-100-2026_01_01-00_00_00.vma.zst";

/// Every changing endpoint with a body that would be valid.
fn changing_endpoints() -> Vec<(&'static str, String, Value)> {
    let b = format!("/storages/local/backups/{ARCHIVE}");
    vec![
        (
            "POST",
            "/guests/100/backup".into(),
            json!({"storage": "local"}),
        ),
        (
            "POST",
            "/backup".into(),
            json!({"vmid": [100], "storage": "local"}),
        ),
        ("PUT", b.clone(), json!({"notes": "x"})),
        ("DELETE", b.clone(), json!(null)),
        ("POST", format!("{b}/restore"), json!({"vmid": 300})),
        (
            "POST",
            "/storages/local/prune".into(),
            json!({"keep-last": 1}),
        ),
        (
            "POST",
            "/jobs".into(),
            json!({"id": "j1", "schedule": "daily", "vmid": "100"}),
        ),
        ("PUT", "/jobs/j1".into(), json!({"enabled": false})),
        ("DELETE", "/jobs/j1".into(), json!(null)),
        ("POST", "/jobs/j1/run".into(), json!(null)),
        (
            "DELETE",
            format!(
                "/tasks/{}",
                enc("UPID:host:00000001:00000001:00000001:vzdump:100:x@token:")
            ),
            json!(null),
        ),
    ]
}

fn body_of(v: &Value) -> Option<&Value> {
    (!v.is_null()).then_some(v)
}

#[test]
fn tokens_sessions_csrf_validation_limits_and_audit() {
    let env = Env::new();
    std::fs::create_dir_all(env.dump()).unwrap();
    std::fs::write(env.dump().join(ARCHIVE), b"not really an archive").unwrap();

    // Tokens: the secret is the last line; only its hash is stored, root-only.
    let out = env.ok(&["token", "add", "admin"]);
    let admin = out.lines().last().unwrap().trim().to_string();
    assert!(admin.starts_with("vmdump_") && admin.len() > 40, "{out}");
    let viewer = env.token("viewer", true);
    let cfg = env.root().join("tokens.cfg");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(!text.contains(&admin) && !text.contains(&viewer), "{text}");
    assert_eq!(
        std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let listed = env.ok(&["token", "list"]);
    assert!(
        listed.contains("viewer") && listed.contains("read-only"),
        "{listed}"
    );

    let srv = Server::start(&env);

    // No token, a wrong token, a malformed header: 401.
    assert_eq!(srv.call("GET", "/guests", None, None).0, 401);
    assert_eq!(srv.call("GET", "/guests", Some("vmdump_nope"), None).0, 401);
    let (s, _) = srv.raw(
        "GET",
        "/storages",
        vec![("Authorization", format!("Basic {admin}"))],
        None,
    );
    assert_eq!(s, 401);
    for (method, path, body) in changing_endpoints() {
        assert_eq!(
            srv.call(method, &path, None, body_of(&body)).0,
            401,
            "{method} {path} without a token"
        );
    }

    // The UI's files are public and carry a strict content security policy; the API
    // description needs a token.
    let (s, html, _) = srv.raw_full("GET", "/", vec![], None);
    assert_eq!(s, 200);
    assert!(html.contains("<title>vmdump</title>"));
    assert_eq!(srv.call("GET", "/openapi.json", None, None).0, 401);
    let (s, doc) = srv.call("GET", "/openapi.json", Some(&viewer), None);
    assert_eq!(s, 200);
    for p in [
        "/guests",
        "/storages/{id}/backups",
        "/guests/{vmid}/backup",
        "/tasks/{upid}",
    ] {
        assert!(
            doc["paths"].get(p).is_some(),
            "{p} missing in the OpenAPI document"
        );
    }

    // Read-only: lists and reads, 403 on every change (and the change did not happen).
    let (s, list) = srv.call("GET", "/storages/local/backups", Some(&viewer), None);
    assert_eq!(s, 200);
    assert_eq!(list[0]["volid"], format!("local:backup/{ARCHIVE}"));
    assert_eq!(list[0]["vmid"], 100);
    assert!(list[0]["size"].as_u64().unwrap() > 0);
    assert_eq!(srv.call("GET", "/guests", Some(&viewer), None).0, 200);
    assert_eq!(srv.call("GET", "/tasks", Some(&viewer), None).0, 200);
    for (method, path, body) in changing_endpoints() {
        let (s, v) = srv.call(method, &path, Some(&viewer), body_of(&body));
        assert_eq!(s, 403, "{method} {path} with a read-only token: {v}");
    }
    assert!(env.dump().join(ARCHIVE).exists());
    assert!(!env.root().join("jobs.cfg").exists());

    // Validation: VMID range, storage ids and archive names without path escapes, task ids,
    // option values through the library types.
    let bad: Vec<(&str, String, Value)> = vec![
        ("POST", "/guests/99/backup".into(), json!({})),
        ("POST", "/guests/1000000000/backup".into(), json!({})),
        ("POST", "/guests/abc/backup".into(), json!({})),
        (
            "GET",
            format!("/storages/{}/backups", enc("../../etc")),
            json!(null),
        ),
        (
            "GET",
            format!("/storages/local/backups/{}", enc("../../../etc/passwd")),
            json!(null),
        ),
        (
            "GET",
            format!(
                "/storages/local/backups/{}",
                enc(&format!("{ARCHIVE}/../../x"))
            ),
            json!(null),
        ),
        (
            "DELETE",
            format!("/storages/local/backups/{}", enc("../qemu-server/100.conf")),
            json!(null),
        ),
        (
            "PUT",
            format!("/storages/local/backups/{}", enc("..")),
            json!({"notes": "x"}),
        ),
        (
            "GET",
            format!("/tasks/{}", enc("../../etc/passwd")),
            json!(null),
        ),
        (
            "GET",
            format!("/tasks/{}/log", enc("UPID:a:1:1:1:x:../y:z:")),
            json!(null),
        ),
        (
            "POST",
            format!("/storages/local/backups/{ARCHIVE}/restore"),
            json!({"vmid": 5}),
        ),
        (
            "POST",
            format!("/storages/local/backups/{ARCHIVE}/restore"),
            json!({"vmid": 300, "storage": "../x"}),
        ),
        (
            "POST",
            "/guests/100/backup".into(),
            json!({"compress": "rar"}),
        ),
        (
            "POST",
            "/guests/100/backup".into(),
            json!({"no-such-option": 1}),
        ),
        (
            "POST",
            "/guests/100/backup".into(),
            json!({"storage": "../../tmp"}),
        ),
        (
            "POST",
            "/jobs".into(),
            json!({"id": "../x", "schedule": "daily", "all": 1}),
        ),
        (
            "POST",
            "/jobs".into(),
            json!({"id": "j2", "schedule": "not a time", "all": 1}),
        ),
        (
            "GET",
            "/storages/local/prune?keep-last=x".into(),
            json!(null),
        ),
        ("POST", "/guests/100/backup".into(), json!([1, 2])),
    ];
    for (method, path, body) in &bad {
        let (s, v) = srv.call(method, path, Some(&admin), body_of(body));
        assert_eq!(s, 400, "{method} {path} {body}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    let (s, _) = srv.raw(
        "POST",
        "/guests/100/backup",
        vec![("Authorization", format!("Bearer {admin}"))],
        Some(b"{not json".to_vec()),
    );
    assert_eq!(s, 400);
    assert!(env.dump().join(ARCHIVE).exists(), "nothing was removed");
    assert_eq!(srv.call("GET", "/guests/100", Some(&admin), None).0, 404);

    // Oversized bodies: 413, before anything happens.
    let big = json!({ "notes": "x".repeat(200 * 1024) })
        .to_string()
        .into_bytes();
    for (method, path, auth) in [
        ("PUT", format!("/storages/local/backups/{ARCHIVE}"), true),
        ("POST", "/guests/100/backup".to_string(), true),
        ("POST", "/jobs".to_string(), true),
        ("POST", "/login".to_string(), false),
    ] {
        let mut h = Vec::new();
        if auth {
            h.push(("Authorization", format!("Bearer {admin}")));
        }
        let (s, v) = srv.raw(method, &path, h, Some(big.clone()));
        assert_eq!(s, 413, "{method} {path}: {v}");
    }
    assert!(!std::fs::read_dir(env.dump()).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".notes")));

    // A read-write token changes: notes, protection (a protected backup is not removed).
    let b = format!("/storages/local/backups/{ARCHIVE}");
    let (s, v) = srv.call(
        "PUT",
        &b,
        Some(&admin),
        Some(&json!({"notes": "before upgrade", "protected": true})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["notes"], "before upgrade");
    assert_eq!(v["protected"], true);
    assert_eq!(srv.call("DELETE", &b, Some(&admin), None).0, 409);
    assert!(env.dump().join(ARCHIVE).exists());

    // Browser session: login sets an HttpOnly, SameSite=Strict, Secure cookie and returns a
    // CSRF token that every change must carry.
    let (s, text, cookie) = srv.raw_full(
        "POST",
        "/login",
        vec![],
        Some(json!({"token": admin}).to_string().into_bytes()),
    );
    assert_eq!(s, 200, "{text}");
    let login: Value = serde_json::from_str(&text).unwrap();
    let csrf = login["csrf"].as_str().unwrap().to_string();
    let cookie = cookie.unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_string();
    let with = |extra: Vec<(&'static str, String)>| {
        let mut h = vec![("Cookie", session.clone())];
        h.extend(extra);
        h
    };
    let (s, me) = srv.raw("GET", "/me", with(vec![]), None);
    assert_eq!((s, me["user"].as_str()), (200, Some("admin@token")));
    let job =
        json!({"id": "nightly", "schedule": "mon..fri 21:30", "vmid": "100", "storage": "local"})
            .to_string()
            .into_bytes();
    // A cross-site POST: the browser sends the cookie, but the page cannot know the token.
    let (s, _) = srv.raw(
        "POST",
        "/jobs",
        with(vec![("Origin", "https://evil.example".into())]),
        Some(job.clone()),
    );
    assert_eq!(s, 403);
    let (s, _) = srv.raw(
        "POST",
        "/jobs",
        with(vec![("X-CSRF-Token", "0".repeat(64))]),
        Some(job.clone()),
    );
    assert_eq!(s, 403);
    assert!(!env.root().join("jobs.cfg").exists());
    let (s, v) = srv.raw(
        "POST",
        "/jobs",
        with(vec![("X-CSRF-Token", csrf.clone())]),
        Some(job),
    );
    assert_eq!(s, 201, "{v}");
    let jobs_cfg = std::fs::read_to_string(env.root().join("jobs.cfg")).unwrap();
    assert!(jobs_cfg.contains("vzdump: nightly"), "{jobs_cfg}");
    let (s, v) = srv.raw("GET", "/jobs/nightly", with(vec![]), None);
    assert_eq!(s, 200);
    assert_eq!(v["next_runs"].as_array().unwrap().len(), 5, "{v}");
    // Logout ends the session.
    assert_eq!(
        srv.raw(
            "POST",
            "/logout",
            with(vec![("X-CSRF-Token", csrf.clone())]),
            None
        )
        .0,
        200
    );
    assert_eq!(srv.raw("GET", "/me", with(vec![]), None).0, 401);

    // A removed token stops working at once, sessions included.
    let (_, _, vcookie) = srv.raw_full(
        "POST",
        "/login",
        vec![],
        Some(json!({"token": viewer}).to_string().into_bytes()),
    );
    let vsession = vcookie.unwrap().split(';').next().unwrap().to_string();
    assert_eq!(
        srv.raw("GET", "/me", vec![("Cookie", vsession.clone())], None)
            .0,
        200
    );
    env.ok(&["token", "remove", "viewer"]);
    assert_eq!(srv.call("GET", "/guests", Some(&viewer), None).0, 401);
    assert_eq!(
        srv.raw("GET", "/me", vec![("Cookie", vsession)], None).0,
        401
    );

    // The audit log has every change, allowed or refused, with who and what.
    let audit = std::fs::read_to_string(env.server_dir().join("audit.log")).unwrap();
    let entries: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let has = |user: &str, method: &str, path: &str, status: u64| {
        entries.iter().any(|e| {
            e["user"] == user && e["method"] == method && e["path"] == path && e["status"] == status
        })
    };
    assert!(has("admin@token", "POST", "/api/v1/jobs", 201), "{audit}");
    assert!(has("admin@token", "POST", "/api/v1/jobs", 403), "{audit}");
    assert!(
        has("viewer@token", "DELETE", &format!("/api/v1{b}"), 403),
        "{audit}"
    );
    assert!(
        has("admin@token", "PUT", &format!("/api/v1{b}"), 200),
        "{audit}"
    );
    assert!(
        has("-", "POST", "/api/v1/guests/100/backup", 401),
        "{audit}"
    );
    assert!(entries
        .iter()
        .any(|e| e["action"] == "token remove" && e["detail"] == "viewer"));

    // Failed logins: after 5 within a minute (the wrong bearer tokens above count too), even
    // the right token is refused (429).
    let mut locked = false;
    for _ in 0..5 {
        let (s, _) = srv.call("POST", "/login", None, Some(&json!({"token": "guess"})));
        if s == 429 {
            locked = true;
            break;
        }
        assert_eq!(s, 401);
    }
    let (s, _) = srv.call("POST", "/login", None, Some(&json!({"token": "guess"})));
    assert!(locked || s == 429, "no lockout after 5 failed logins");
    let (s, _) = srv.call("POST", "/login", None, Some(&json!({"token": admin})));
    assert_eq!(s, 429);
    assert_eq!(srv.call("GET", "/guests", Some(&admin), None).0, 429);

    // Plain HTTP only on loopback.
    let out = env.output(&["serve", "--http", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only served on a loopback address"),
        "{out:?}"
    );
}
