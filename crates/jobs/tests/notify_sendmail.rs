//! The `sendmail` target through a real mail transfer agent: Debian's msmtp as
//! `/usr/sbin/sendmail` (scripts/setup.sh installs msmtp-mta), relaying to a real SMTP server
//! started by the test. Its own test binary: msmtp finds its configuration through `$HOME`,
//! which this process sets once before anything else runs.

use std::os::unix::fs::PermissionsExt;

use vmdump_config::notifications::parse_targets;
use vmdump_jobs::notify::{deliver, Policy};

mod support;

use support::{received, summary, SmtpServer};

#[test]
fn sendmail_hands_the_summary_to_the_local_mta() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("mail.json");
    let server = SmtpServer::start(&out, None);
    let rc = tmp.path().join(".msmtprc");
    std::fs::write(
        &rc,
        format!(
            "account default\nhost 127.0.0.1\nport {}\ntls off\nauth plain\nuser backup\npassword secret\nfrom root@node1.example\n",
            server.port
        ),
    )
    .expect("msmtprc");
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::env::set_var("HOME", tmp.path());

    let targets = parse_targets(
        "sendmail: local\n\tmailto admin@example.com\n\tfrom-address vmdump@node1.example\n",
        "notifications.cfg",
    )
    .expect("valid");
    let d = deliver(&targets, &summary(false), Policy::Always);
    assert!(d[0].result.is_ok(), "{:?}", d[0].result);
    let mail = received(&out);
    assert_eq!(mail["to"], serde_json::json!(["admin@example.com"]));
    assert_eq!(mail["from"], "vmdump@node1.example");
    let data = mail["data"].as_str().expect("text");
    assert!(
        data.contains("Subject: vzdump backup status (node1): backup failed"),
        "{data}"
    );
    assert!(
        data.contains("101: ERROR: Backup of VM 101 failed"),
        "{data}"
    );

    // The MTA refuses (no server behind its port any more): reported, never a panic.
    drop(server);
    let d = deliver(&targets, &summary(false), Policy::Always);
    assert!(d[0].result.is_err());
}
