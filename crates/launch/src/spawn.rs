//! Forking children from one long-lived thread.
//!
//! `PR_SET_PDEATHSIG` fires when the thread that forked the child exits, not when the process
//! does. A child spawned from a tokio worker or blocking-pool thread (or a test thread) would
//! be killed as soon as that thread ends, long before vmdump does. So every child is forked by
//! the spawner thread, which is started on first use and never ends: its death signal arrives
//! exactly when the process dies, however it dies (SIGKILL included).

use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Reply = mpsc::Sender<std::io::Result<Child>>;

struct Request {
    cmd: Command,
    bound: bool,
    reply: Reply,
}

fn spawner() -> &'static Mutex<mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("vmdump-spawner".into())
            .spawn(move || {
                for mut req in rx {
                    if req.bound {
                        bind_to_parent(&mut req.cmd);
                    }
                    let _ = req.reply.send(req.cmd.spawn());
                }
            })
            .expect("start the process spawner thread");
        Mutex::new(tx)
    })
}

/// Arrange for the child to get SIGKILL when its parent thread (the spawner) ends.
#[allow(unsafe_code)]
fn bind_to_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe operations are allowed; it makes two raw system calls through rustix
    // (prctl, getppid) and builds an `io::Error` from an errno, none of which allocates,
    // takes a lock or touches the parent's state.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // The parent may have died before the prctl: then nobody will send the signal.
            if rustix::process::getppid() != Some(parent) {
                return Err(rustix::io::Errno::SRCH.into());
            }
            Ok(())
        });
    }
}

fn submit(cmd: Command, bound: bool) -> std::io::Result<Child> {
    let (reply, rx) = mpsc::channel();
    spawner()
        .lock()
        .map_err(|_| std::io::Error::other("process spawner poisoned"))?
        .send(Request { cmd, bound, reply })
        .map_err(|_| std::io::Error::other("process spawner is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("process spawner is gone"))?
}

/// Spawn `cmd` so that it is killed (SIGKILL) when this process dies. The caller records it
/// ([`crate::Session::spawn`] does both).
pub fn spawn_bound(cmd: Command) -> std::io::Result<Child> {
    submit(cmd, true)
}

/// Spawn `cmd` without a death signal: for a QEMU that daemonizes and is meant to outlive the
/// CLI (`vmdump vm start`). Still forked by the spawner thread, so every process vmdump starts
/// has one origin.
pub fn spawn(cmd: Command) -> std::io::Result<Child> {
    submit(cmd, false)
}
