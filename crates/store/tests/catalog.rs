//! Listing, notes, protection, removal and prune apply on real files in a temp directory.

use std::path::Path;

use vmdump_config::KeepOptions;
use vmdump_store::retention::Mark;
use vmdump_store::{prune, Error, Filter, GuestType, Storage};

fn touch(dir: &Path, name: &str, bytes: usize) {
    std::fs::write(dir.join(name), vec![0u8; bytes]).expect("write");
}

fn storage_with_backups() -> (tempfile::TempDir, Storage) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    for (day, size) in [(1, 10), (2, 20), (3, 30), (4, 40)] {
        let base = format!("vzdump-qemu-100-2025_01_0{day}-02_00_00");
        touch(d, &format!("{base}.vma.zst"), size);
        touch(d, &format!("{base}.log"), 1);
    }
    std::fs::write(
        d.join("vzdump-qemu-100-2025_01_01-02_00_00.vma.zst.notes"),
        "first\n",
    )
    .expect("notes");
    touch(d, "vzdump-lxc-101-2025_01_01-02_00_00.tar.gz", 5);
    touch(d, "vzdump-qemu-100-before-upgrade.vma", 7);
    // Not archives.
    touch(d, "vzdump-qemu-100-2025_01_05-02_00_00.vma.dat", 1);
    touch(d, "README", 1);
    let s = Storage::at("backups", d).with_max_protected(Some(1));
    (tmp, s)
}

#[test]
fn lists_archives_with_their_markers() {
    let (_tmp, s) = storage_with_backups();
    let all = s.list(&Filter::default()).expect("list");
    assert_eq!(all.len(), 6, "{all:#?}");
    let vm = s
        .list(&Filter {
            vmid: Some(100),
            kind: Some(GuestType::Qemu),
        })
        .expect("list");
    assert_eq!(vm.len(), 5);
    let first = &vm[0];
    assert_eq!(
        first.volid,
        "backups:backup/vzdump-qemu-100-2025_01_01-02_00_00.vma.zst"
    );
    assert_eq!(first.size, 10);
    assert_eq!(first.compression, Some("zst"));
    assert_eq!(first.notes.as_deref(), Some("first"));
    assert!(!first.protected);
    let json = serde_json::to_value(first).expect("json");
    let keys: Vec<&str> = json
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    for k in "volid vmid type time size compression notes protected".split(' ') {
        assert!(keys.contains(&k), "{k} missing in {json}");
    }
    assert_eq!(json["type"], "qemu");
}

#[test]
fn notes_protection_and_removal() {
    let (tmp, s) = storage_with_backups();
    let volid = "backups:backup/vzdump-qemu-100-2025_01_02-02_00_00.vma.zst";
    let b = s.backup(volid).expect("exists");
    s.set_notes(&b, "before upgrade").expect("notes");
    assert_eq!(
        s.backup(volid).expect("exists").notes.as_deref(),
        Some("before upgrade")
    );
    assert!(s.set_notes(&b, "two\nlines").is_err());
    s.set_protected(&b, true).expect("protect");
    let b = s.backup(volid).expect("exists");
    assert!(b.protected);
    // max-protected-backups 1: a second one is refused.
    let other = s
        .backup("vzdump-qemu-100-2025_01_03-02_00_00.vma.zst")
        .expect("exists");
    assert!(matches!(
        s.set_protected(&other, true),
        Err(Error::Limit(_))
    ));
    // A protected backup cannot be removed.
    assert!(matches!(s.remove(&b), Err(Error::Protected(_))));
    assert!(tmp.path().join(&b.file_name).exists());
    s.set_protected(&b, false).expect("unprotect");
    s.remove(&s.backup(volid).expect("exists")).expect("remove");
    for gone in [
        "vzdump-qemu-100-2025_01_02-02_00_00.vma.zst",
        "vzdump-qemu-100-2025_01_02-02_00_00.log",
        "vzdump-qemu-100-2025_01_02-02_00_00.vma.zst.notes",
    ] {
        assert!(!tmp.path().join(gone).exists(), "{gone}");
    }
    assert!(matches!(s.backup(volid), Err(Error::NotFound(_))));
    assert!(matches!(
        s.backup("other:backup/x.vma"),
        Err(Error::InvalidVolid(_))
    ));
    assert!(matches!(
        s.backup("backups:backup/../x.vma"),
        Err(Error::InvalidVolid(_))
    ));
}

#[test]
fn apply_removes_what_the_plan_says_and_twice_changes_nothing() {
    let (tmp, s) = storage_with_backups();
    let protected = s
        .backup("vzdump-qemu-100-2025_01_01-02_00_00.vma.zst")
        .expect("exists");
    s.set_protected(&protected, true).expect("protect");
    let keep = KeepOptions::parse("keep-last=2").expect("valid");
    let backups = s.list(&Filter::default()).expect("list");
    let plan = prune::plan(&backups, &keep);
    let marks: Vec<(&str, Mark)> = plan
        .iter()
        .map(|e| (e.backup.file_name.as_str(), e.decision.mark))
        .collect();
    assert!(marks.contains(&(
        "vzdump-qemu-100-2025_01_01-02_00_00.vma.zst",
        Mark::Protected
    )));
    assert!(marks.contains(&("vzdump-qemu-100-2025_01_02-02_00_00.vma.zst", Mark::Remove)));
    assert!(marks.contains(&("vzdump-qemu-100-before-upgrade.vma", Mark::Renamed)));
    assert!(marks.contains(&("vzdump-lxc-101-2025_01_01-02_00_00.tar.gz", Mark::Keep)));
    let removed = prune::apply(&s, &plan).expect("apply");
    assert_eq!(removed.len(), 1);
    assert!(!tmp
        .path()
        .join("vzdump-qemu-100-2025_01_02-02_00_00.log")
        .exists());
    let after = s.list(&Filter::default()).expect("list");
    assert_eq!(after.len(), 5);
    // The same plan again: nothing to do, no error, same files.
    assert!(prune::apply(&s, &plan).expect("apply again").is_empty());
    assert_eq!(s.list(&Filter::default()).expect("list"), after);
}

#[test]
fn limits_before_a_backup() {
    let (_tmp, s) = storage_with_backups();
    let keep = KeepOptions::parse("keep-last=2,keep-daily=2").expect("valid");
    // remove 0: 4 unprotected standard + 1 renamed >= 4 → refused.
    let err = prune::check_before_backup(&s, GuestType::Qemu, 100, &keep, false, false)
        .expect_err("over the cap");
    assert!(err.to_string().contains("max backup limit of 4"), "{err}");
    prune::check_before_backup(&s, GuestType::Qemu, 100, &keep, true, false).expect("remove 1");
    prune::check_before_backup(&s, GuestType::Qemu, 999, &keep, false, false).expect("no backups");
    // Precedence: job, then storage, then vzdump.conf, then keep-all.
    let job = KeepOptions::parse("keep-last=1").expect("valid");
    let st = KeepOptions::parse("keep-daily=1").expect("valid");
    let conf = KeepOptions::parse("keep-weekly=1").expect("valid");
    assert_eq!(
        prune::effective_keep(Some(&job), Some(&st), Some(&conf)),
        job
    );
    assert_eq!(prune::effective_keep(None, Some(&st), Some(&conf)), st);
    assert_eq!(prune::effective_keep(None, None, Some(&conf)), conf);
    assert!(prune::effective_keep(None, None, None).is_keep_all());
    assert!(!prune::effective_remove(
        Some(true),
        &KeepOptions::keep_all()
    ));
    assert!(prune::effective_remove(None, &job));
}

#[test]
fn prune_guest_touches_only_that_guests_backups() {
    let (tmp, s) = storage_with_backups();
    let keep = KeepOptions::parse("keep-last=1").expect("valid");
    // The container 101 has one backup: kept. The VM 100 keeps its newest of four dated ones
    // (the renamed one is never pruned).
    assert!(prune::prune_guest(&s, GuestType::Lxc, 101, &keep)
        .expect("prune ct")
        .is_empty());
    let removed = prune::prune_guest(&s, GuestType::Qemu, 100, &keep).expect("prune vm");
    let mut names: Vec<&str> = removed.iter().map(|b| b.file_name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [1, 2, 3].map(|d| format!("vzdump-qemu-100-2025_01_0{d}-02_00_00.vma.zst"))
    );
    let left: Vec<String> = s
        .list(&Filter::default())
        .expect("list")
        .into_iter()
        .map(|b| b.file_name)
        .collect();
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(tmp
        .path()
        .join("vzdump-lxc-101-2025_01_01-02_00_00.tar.gz")
        .exists());
}
