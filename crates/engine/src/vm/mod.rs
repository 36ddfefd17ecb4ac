//! The VM side of a backup: what each mode does to a running guest before the jobs start
//! ([`modes::prepare`]) and how the guest gets back to the state it was in
//! ([`modes::Restore::finish`]), with vzdump's hook phases and downtime lines around them.
//! The shared job/plan/log core (`backup`, `live`, `hook`) calls into it.

pub(crate) mod fleece;
pub(crate) mod modes;

/// Test seam (debug builds only): with `VMDUMP_TEST_STALL=<phase>` the backup announces
/// `vmdump: test stall at <phase>` on stderr and stops there, so a test can SIGKILL vmdump
/// at that exact point (`frozen`, `paused`, `shutdown`). Release builds never stall.
pub(crate) fn stall(phase: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("VMDUMP_TEST_STALL").is_ok_and(|p| p == phase) {
        eprintln!("vmdump: test stall at {phase}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = phase;
}
