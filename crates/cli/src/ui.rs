//! How backup and restore talk to the terminal: one [`vmdump_task::Progress`] implementation
//! for both (plain lines on stdout, an indicatif bar on a terminal instead of the percentage
//! lines), the signal handler that cancels the one [`Cancel`] token, and whether stderr gets
//! colour.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use vmdump_task::{Cancel, Level, Progress, Transfer};

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// vzdump: every line with its level (`INFO: ...`).
    Vzdump,
    /// qmrestore: plain lines; only warnings and errors carry their level.
    Qmrestore,
}

/// Task output on stdout, plus a bar on a terminal.
pub struct Ui {
    style: Style,
    tty: bool,
    /// Label of the bar to show once there is something to count.
    prefix: Mutex<Option<String>>,
    bar: Mutex<Option<ProgressBar>>,
    /// The run as a task of the registry, once [`record_task`](Self::record_task) was called.
    task: std::sync::OnceLock<vmdump_task::TaskFile>,
}

impl Ui {
    /// Output in `style`; a bar only when stderr is a terminal.
    pub fn new(style: Style) -> Self {
        Self {
            style,
            tty: std::io::stderr().is_terminal(),
            prefix: Mutex::new(None),
            bar: Mutex::new(None),
            task: std::sync::OnceLock::new(),
        }
    }

    /// Records this run as a task (`kind`, `id`) of the task registry (`$VMDUMP_TASK_DIR`):
    /// every line printed from now on also goes to the task log. A registry that cannot be
    /// written is a warning, never a failure of the command.
    pub fn record_task(&self, kind: &str, id: &str) {
        match vmdump_task::TaskDir::from_env().start(kind, id, "root@cli") {
            Ok(t) => {
                let _ = self.task.set(t);
            }
            Err(e) => tracing::warn!(error = %e, "cannot record this run as a task"),
        }
    }

    /// Records the task's result (a task never finished counts as failed).
    pub fn finish_task(&self, result: Result<(), String>) {
        if let Some(t) = self.task.get() {
            t.finish(result);
        }
    }

    /// Show a bar labelled `prefix` (terminal only) from the first transfer update until
    /// [`done`](Self::done).
    pub fn start(&self, prefix: String) {
        if self.tty {
            if let Ok(mut p) = self.prefix.lock() {
                *p = Some(prefix);
            }
        }
    }

    /// The bar, created on the first update after [`start`](Self::start).
    fn bar(&self) -> Option<ProgressBar> {
        let mut slot = self.bar.lock().ok()?;
        if slot.is_none() {
            let prefix = self.prefix.lock().ok()?.take()?;
            *slot = Some(Self::new_bar(prefix));
        }
        slot.clone()
    }

    fn new_bar(prefix: String) -> ProgressBar {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:40}] {percent:>3}% {msg} ({elapsed_precise}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(prefix);
        bar
    }

    /// Remove the bar.
    pub fn done(&self) {
        if let Ok(mut p) = self.prefix.lock() {
            p.take();
        }
        if let Ok(mut b) = self.bar.lock() {
            if let Some(bar) = b.take() {
                bar.finish_and_clear();
            }
        }
    }

    /// Print one line.
    pub fn print(&self, level: Level, line: &str) {
        if let Some(t) = self.task.get() {
            t.log(level, line, false);
        }
        let text = match (self.style, level) {
            (Style::Qmrestore, Level::Info) => line.to_string(),
            _ => format!("{}: {line}", level.prefix()),
        };
        // A closed stdout must not stop a backup or restore: the task log keeps every line.
        let show = || {
            let _ = crate::output::line(format_args!("{text}"));
        };
        match self.bar.lock().ok().and_then(|b| b.clone()) {
            Some(bar) => bar.suspend(show),
            None => show(),
        }
    }
}

impl Progress for Ui {
    fn log(&self, level: Level, line: &str, progress: bool) {
        if progress && self.tty {
            // The bar shows it; a backup's log file and the task log still get the line.
            if let Some(t) = self.task.get() {
                t.log(level, line, progress);
            }
            return;
        }
        self.print(level, line);
    }

    fn update(&self, t: &Transfer) {
        if let Some(task) = self.task.get() {
            task.update(t);
        }
        if let Some(bar) = self.bar() {
            bar.set_length(t.total);
            bar.set_position(t.transferred);
            bar.set_message(format!(
                "{} of {}",
                vmdump_engine::render_bytes(t.transferred as f64, 1),
                vmdump_engine::render_bytes(t.total as f64, 1)
            ));
        }
    }
}

/// Cancel `cancel` on SIGINT or SIGTERM. The handler runs on its own thread (with a small
/// runtime), so it serves blocking and async commands alike, and is installed before this
/// returns.
pub fn cancel_on_signals(cancel: Cancel) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    let _ = ready_tx.send(());
                    return;
                };
                let _ = ready_tx.send(());
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                cancel.cancel();
            });
        });
    if spawned.is_ok() {
        let _ = ready_rx.recv();
    }
}

/// Colour on stderr only for a terminal, and never with `NO_COLOR` set (no-color.org).
pub fn color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
