//! How configuration files are read and written: whole-file reads with path-naming errors,
//! atomic writes (temp file in the same directory, fsync, rename). Every file type's `load`
//! and `save` goes through here; nothing here knows a file type.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Read a UTF-8 text file with a path-naming error.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Write `data` to `path` through a temp file in the same directory, fsync, rename. Creates the
/// parent directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let werr = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(werr)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("config");
    let tmp = parent.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(werr)
}
