//! Image volumes on dir and btrfs storage at the file level: the one home for creating and
//! removing their files (restore's new disks, fleecing images, container volumes). Where a
//! volume's files are (the image, its btrfs subvolume) is `vmdump_config`'s
//! `StorageConfig::resolve` (`ResolvedVolume::subvolume`); this module takes those paths.
//!
//! - An image reads as zeros when created: raw is a sparse file of the size, other formats
//!   come from `qemu-img create` ([`crate::qemu_img`]; qcow2 with the given `preallocation`).
//!   The name is reserved with an exclusive create first, so an existing file is never
//!   replaced (the error's [`Error::io_kind`] is `AlreadyExists`).
//! - A volume's own directory on btrfs (`vm-<vmid>-disk-<N>/` holding `disk.raw`, or a
//!   container's `subvol-<vmid>-disk-<N>.subvol`) is a subvolume when its parent is on a btrfs
//!   file system, and a plain directory with the same layout elsewhere (tests, a `btrfs`
//!   storage whose path is on another file system).
//! - Removal takes a subvolume with `btrfs subvolume delete` and a plain directory with its
//!   contents; what is already gone is fine.

use std::io::ErrorKind as IoKind;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// `statfs` type of a btrfs file system.
const BTRFS_SUPER_MAGIC: i128 = 0x9123_683E;
/// The inode number of every btrfs subvolume's root directory.
const BTRFS_SUBVOLUME_INO: u64 = 256;

/// Creates a new volume's files: the directory that holds it (`images/<vmid>`), its own
/// subvolume `subvolume` if given (the directory of `path`), and the zero-reading image `path`
/// of `size` bytes in `format` ([`create_image`]). If the image cannot be created, the
/// subvolume is removed again.
pub fn create(
    path: &Path,
    subvolume: Option<&Path>,
    format: &str,
    size: u64,
    preallocation: Option<&str>,
) -> Result<()> {
    let parent = subvolume
        .unwrap_or(path)
        .parent()
        .expect("volume paths have a parent directory");
    std::fs::create_dir_all(parent).map_err(|e| Error::io("create image directory", parent, e))?;
    if let Some(sv) = subvolume {
        create_subvolume(sv)?;
    }
    let res = create_image(path, format, size, preallocation);
    if res.is_err() {
        if let Some(sv) = subvolume {
            if let Err(e) = remove_dir(sv) {
                tracing::warn!("cannot remove {} again: {e}", sv.display());
            }
        }
    }
    res
}

/// Creates the image `path` (which must not exist) of `size` bytes: a sparse file for `raw`,
/// `qemu-img create` for other formats, with `preallocation` for qcow2 (ignored for other
/// formats). A failed creation leaves no file.
pub fn create_image(
    path: &Path,
    format: &str,
    size: u64,
    preallocation: Option<&str>,
) -> Result<()> {
    // Reserve the name first so a concurrent creation cannot take it.
    let file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io("create volume", path, e))?;
    let res = if format == "raw" {
        file.set_len(size)
            .map_err(|e| Error::io("create volume", path, e))
    } else {
        drop(file);
        let preallocation = preallocation.filter(|_| format == "qcow2");
        crate::qemu_img::create(path, format, size, preallocation)
    };
    if res.is_err() {
        let _ = std::fs::remove_file(path);
    }
    res
}

/// Whether `path` is on a btrfs file system.
pub fn on_btrfs(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|st| i128::from(st.f_type) == BTRFS_SUPER_MAGIC)
}

/// Whether `dir` is the root of a btrfs subvolume.
pub fn is_subvolume(dir: &Path) -> bool {
    dir.symlink_metadata()
        .is_ok_and(|m| m.is_dir() && m.ino() == BTRFS_SUBVOLUME_INO)
        && on_btrfs(dir)
}

/// Creates the directory `dir` (which must not exist; its parent must) as a btrfs subvolume,
/// or as a plain directory when the parent is not on btrfs.
pub fn create_subvolume(dir: &Path) -> Result<()> {
    if dir.symlink_metadata().is_ok() {
        return Err(Error::io(
            "create subvolume",
            dir,
            IoKind::AlreadyExists.into(),
        ));
    }
    let parent = dir.parent().unwrap_or(Path::new("/"));
    if on_btrfs(parent) {
        btrfs(["subvolume", "create"], dir)
    } else {
        std::fs::create_dir(dir).map_err(|e| Error::io("create subvolume", dir, e))
    }
}

/// Removes a volume's directory with everything in it: a btrfs subvolume with
/// `btrfs subvolume delete`, a plain directory (dir storage, or [`create_subvolume`] off
/// btrfs) recursively. A missing one is fine.
pub fn remove_dir(dir: &Path) -> Result<()> {
    match dir.symlink_metadata() {
        Err(e) if e.kind() == IoKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("remove volume", dir, e)),
        Ok(_) => {}
    }
    if is_subvolume(dir) {
        btrfs(["subvolume", "delete"], dir)
    } else {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != IoKind::NotFound => Err(Error::io("remove volume", dir, e)),
            _ => Ok(()),
        }
    }
}

/// Removes a volume's image `path` and, if given, its own `subvolume` ([`remove_dir`]).
/// What is already gone is fine.
pub fn remove(path: &Path, subvolume: Option<&Path>) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != IoKind::NotFound => {
            return Err(Error::io("remove volume", path, e));
        }
        _ => {}
    }
    match subvolume {
        Some(sv) => remove_dir(sv),
        None => Ok(()),
    }
}

/// `btrfs -q <args> <dir>`, run to completion.
fn btrfs(args: [&str; 2], dir: &Path) -> Result<()> {
    let tool = |detail: String| Error::Tool {
        tool: "btrfs",
        path: dir.to_path_buf(),
        detail,
    };
    let out = Command::new("btrfs")
        .arg("-q")
        .args(args)
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| tool(format!("cannot run: {e}")))?;
    if !out.status.success() {
        return Err(tool(format!(
            "{}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use vmdump_testkit::mount::TestMount;

    fn allocated(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn raw_images_are_sparse_files_of_the_size() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("images/100/vm-100-disk-0.raw");
        create(&path, None, "raw", 5 << 20, Some("full")).unwrap();
        let md = std::fs::metadata(&path).unwrap();
        assert_eq!(md.len(), 5 << 20);
        assert!(allocated(&path) < 64 << 10, "not sparse: {md:?}");
        let info = crate::qemu_img::info(&path).unwrap();
        assert_eq!((info.format.as_str(), info.virtual_size), ("raw", 5 << 20));
        // An existing image is never replaced.
        std::fs::write(&path, b"keep").unwrap();
        let e = create_image(&path, "raw", 1 << 20, None).unwrap_err();
        assert_eq!(e.io_kind(), Some(IoKind::AlreadyExists), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
    }

    #[test]
    fn qcow2_images_have_the_size_and_the_preallocation() {
        let t = tempfile::tempdir().unwrap();
        let meta = t.path().join("meta.qcow2");
        create_image(&meta, "qcow2", 8 << 20, Some("metadata")).unwrap();
        let off = t.path().join("off.qcow2");
        create_image(&off, "qcow2", 8 << 20, None).unwrap();
        for p in [&meta, &off] {
            let info = crate::qemu_img::info(p).unwrap();
            assert_eq!(
                (info.format.as_str(), info.virtual_size),
                ("qcow2", 8 << 20)
            );
        }
        // Preallocated metadata maps every cluster: the file spans the disk; without, it
        // holds only the header and tables.
        assert!(std::fs::metadata(&meta).unwrap().len() >= 8 << 20);
        assert!(std::fs::metadata(&off).unwrap().len() < 1 << 20);
        // A failing qemu-img leaves no file behind.
        let bad = t.path().join("bad.qcow2");
        let e = create_image(&bad, "qcow2", 1 << 20, Some("nonsense")).unwrap_err();
        assert!(matches!(e, Error::Tool { .. }), "{e}");
        assert!(!bad.exists());
    }

    #[test]
    fn off_btrfs_a_subvolume_is_a_plain_directory_and_removal_takes_it() {
        let t = tempfile::tempdir().unwrap();
        assert!(!on_btrfs(t.path()), "the test needs a temp dir off btrfs");
        let sv = t.path().join("images/100/vm-100-disk-0");
        let path = sv.join("disk.raw");
        create(&path, Some(&sv), "raw", 1 << 20, None).unwrap();
        assert!(sv.is_dir() && !is_subvolume(&sv));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        let e = create_subvolume(&sv).unwrap_err();
        assert_eq!(e.io_kind(), Some(IoKind::AlreadyExists), "{e}");
        remove(&path, Some(&sv)).unwrap();
        assert!(!sv.exists());
        assert!(
            t.path().join("images/100").is_dir(),
            "the guest's directory stays"
        );
        // A container directory with contents goes as a whole.
        let ct = t.path().join("images/100/subvol-100-disk-1.subvol");
        create_subvolume(&ct).unwrap();
        std::fs::create_dir_all(ct.join("etc/deep")).unwrap();
        std::fs::write(ct.join("etc/deep/file"), b"x").unwrap();
        remove_dir(&ct).unwrap();
        assert!(!ct.exists());
    }

    #[test]
    fn a_failed_image_removes_its_new_subvolume() {
        let t = tempfile::tempdir().unwrap();
        let sv = t.path().join("vm-100-disk-0");
        let path = sv.join("disk.qcow2");
        let e = create(&path, Some(&sv), "qcow2", 1 << 20, Some("nonsense")).unwrap_err();
        assert!(matches!(e, Error::Tool { .. }), "{e}");
        assert!(!sv.exists());
    }

    #[test]
    fn on_btrfs_volume_directories_are_subvolumes() {
        let t = tempfile::tempdir().unwrap();
        let fs = TestMount::btrfs(&t.path().join("btrfs.img"), &t.path().join("mnt"), 128).unwrap();
        let mnt = fs.path();
        assert!(on_btrfs(mnt) && !on_btrfs(t.path()));
        let sv = mnt.join("images/100/vm-100-disk-0");
        let path = sv.join("disk.raw");
        create(&path, Some(&sv), "raw", 4 << 20, None).unwrap();
        assert!(is_subvolume(&sv), "not a subvolume");
        assert!(
            !is_subvolume(&mnt.join("images/100")),
            "the guest's directory is plain"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 << 20);
        // A container subvolume with contents, and an old plain directory on btrfs.
        let ct = mnt.join("images/100/subvol-100-disk-1.subvol");
        create_subvolume(&ct).unwrap();
        std::fs::create_dir_all(ct.join("etc")).unwrap();
        std::fs::write(ct.join("etc/hostname"), b"ct\n").unwrap();
        let plain = mnt.join("images/100/vm-100-fleece-0");
        std::fs::create_dir(&plain).unwrap();
        std::fs::write(plain.join("disk.raw"), b"old").unwrap();
        assert!(is_subvolume(&ct) && !is_subvolume(&plain));
        remove(&path, Some(&sv)).unwrap();
        remove_dir(&ct).unwrap();
        remove(&plain.join("disk.raw"), Some(&plain)).unwrap();
        for d in [&sv, &ct, &plain] {
            assert!(!d.exists(), "{} left", d.display());
        }
        assert_eq!(
            fs.subvolumes().unwrap(),
            Vec::<String>::new(),
            "subvolumes left"
        );
    }

    #[test]
    fn removing_a_missing_volume_is_fine() {
        let t = tempfile::tempdir().unwrap();
        let sv = t.path().join("vm-100-disk-0");
        remove(&sv.join("disk.raw"), Some(&sv)).unwrap();
        remove(&t.path().join("vm-100-disk-1.qcow2"), None).unwrap();
        remove_dir(&t.path().join("subvol-100-disk-2.subvol")).unwrap();
        // The image alone: its directory (not the volume's own) stays.
        let img = t.path().join("vm-100-disk-3.raw");
        create_image(&img, "raw", 512, None).unwrap();
        remove(&img, None).unwrap();
        assert!(!img.exists() && t.path().is_dir());
    }
}
