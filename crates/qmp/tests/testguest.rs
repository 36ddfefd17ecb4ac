//! The test guest's writer pattern and `testguest/check.sh`: a crash-consistent image passes
//! only after journal recovery, and a damaged slot file is detected.

mod common;

use std::process::Command;
use std::time::Duration;

fn check(args: &[&str]) -> (bool, String) {
    let out = Command::new("bash")
        .arg(common::check_script())
        .args(args)
        .output()
        .expect("run check.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn crash_consistent_disk_checks_after_recovery_and_damage_is_detected() {
    let mut qemu = common::booted_guest("vmdump.interval=0.02");
    qemu.wait_ready();
    common::wait_until(Duration::from_secs(60), "70 ticks", || {
        qemu.last_tick() >= 70
    });
    // Power loss: SIGKILL while the writer runs.
    qemu.child.kill().expect("kill qemu");
    qemu.child.wait().expect("reap qemu");
    let disk = qemu.disk.display().to_string();

    let (ok, text) = check(&[&disk]);
    assert!(!ok && text.contains("needs recovery"), "{text}");
    let (ok, text) = check(&["--recover", &disk, "60"]);
    assert!(ok, "{text}");
    let tick: u64 = text
        .trim()
        .strip_prefix("ok tick=")
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .expect("tick in output");
    assert!(
        tick + 2 >= qemu.last_tick(),
        "recovered tick {tick}, console {}",
        qemu.last_tick()
    );

    // Replace one slot file with wrong content: the check names the slot.
    let fixed = qemu.dir.path().join("fixed.raw");
    let status = Command::new("cp")
        .arg(&disk)
        .arg(&fixed)
        .status()
        .expect("cp");
    assert!(status.success());
    let status = Command::new("e2fsck")
        .arg("-fy")
        .arg(&fixed)
        .output()
        .expect("e2fsck");
    assert!(status.status.code().is_some_and(|c| c <= 1), "{status:?}");
    let bogus = qemu.dir.path().join("bogus");
    std::fs::write(&bogus, "vmdump-testguest 5\nnot the pattern\n").expect("write");
    for cmd in [
        "rm /data/slot-05".to_string(),
        format!("write {} /data/slot-05", bogus.display()),
    ] {
        let out = Command::new("debugfs")
            .args(["-w", "-R", &cmd])
            .arg(&fixed)
            .output()
            .expect("debugfs");
        assert!(out.status.success(), "{out:?}");
    }
    let (ok, text) = check(&[&fixed.display().to_string()]);
    assert!(!ok && text.contains("slot-05"), "{text}");
}
