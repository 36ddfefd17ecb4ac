//! `vmdump jobs`: scheduled backup jobs in `<root>/jobs.cfg` (Proxmox's `vzdump:` sections):
//! list, show, add, set, remove, run now, next runs, systemd units.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use vmdump_config::BackupJobConfig;
use vmdump_jobs::state::StateStore;

use crate::output::{self, outln, Format};
use crate::ui::{Style, Ui};

/// Arguments of `vmdump jobs`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
    /// The scheduler's state directory (last runs).
    #[arg(long, global = true, env = "VMDUMP_STATE_DIR", default_value = vmdump_jobs::state::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// List the jobs.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output_format: Format,
    },
    /// Print a job's settings.
    Show {
        /// Job id.
        id: String,
    },
    /// Add a job.
    Add {
        /// Job id (a letter, then letters, digits, '-', '_', '.').
        id: String,
        #[command(flatten)]
        props: Box<Props>,
    },
    /// Change a job.
    Set {
        /// Job id.
        id: String,
        #[command(flatten)]
        props: Box<Props>,
        /// Remove these keys.
        #[arg(long, value_name = "KEY")]
        delete: Vec<String>,
    },
    /// Remove a job (and its scheduler state).
    Remove {
        /// Job id.
        id: String,
    },
    /// Run a job now, printing its task log.
    Run {
        /// Job id.
        id: String,
    },
    /// The next run of each job.
    Next {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output_format: Format,
    },
    /// Print (or write) systemd service and timer units for the jobs and the scheduler.
    SystemdUnits {
        /// Write the units into this directory instead of printing them.
        #[arg(long)]
        output_dir: Option<PathBuf>,
        /// The vmdump binary the units run (default: this one).
        #[arg(long)]
        exe: Option<PathBuf>,
    },
}

/// Job properties settable from the command line (jobs.cfg keys).
#[derive(clap::Args, Debug)]
struct Props {
    /// Calendar event, e.g. 'sat 02:00', 'mon..fri 21:30', '*/2:00', 'monthly'.
    #[arg(long)]
    schedule: Option<String>,
    /// Guests (comma-separated).
    #[arg(long)]
    vmid: Option<String>,
    /// All guests of this host (1/0).
    #[arg(long)]
    all: Option<String>,
    /// Skip these guests (implies all).
    #[arg(long)]
    exclude: Option<String>,
    /// 1/0.
    #[arg(long)]
    enabled: Option<String>,
    /// Run a missed run as soon as possible after the scheduler starts (1/0).
    #[arg(long)]
    repeat_missed: Option<String>,
    /// Free text (at most 512 characters).
    #[arg(long)]
    comment: Option<String>,
    /// Target storage.
    #[arg(long)]
    storage: Option<String>,
    /// snapshot, suspend, stop.
    #[arg(long)]
    mode: Option<String>,
    /// 0, 1, gzip, lzo, zstd.
    #[arg(long)]
    compress: Option<String>,
    /// Retention, e.g. keep-last=3,keep-weekly=4.
    #[arg(long)]
    prune_backups: Option<String>,
    /// Prune after each guest's backup (1/0).
    #[arg(long)]
    remove: Option<String>,
    /// Send the summary by sendmail to these addresses.
    #[arg(long)]
    mailto: Option<String>,
    /// When to notify: always or failure.
    #[arg(long)]
    mailnotification: Option<String>,
    /// Notes template.
    #[arg(long)]
    notes_template: Option<String>,
    /// Mark backups protected (1/0).
    #[arg(long)]
    protected: Option<String>,
    /// Any other vzdump option as KEY=VALUE.
    #[arg(long = "option", value_name = "KEY=VALUE")]
    options: Vec<String>,
}

impl Props {
    fn pairs(&self) -> anyhow::Result<Vec<(String, String)>> {
        let named = [
            ("schedule", &self.schedule),
            ("vmid", &self.vmid),
            ("all", &self.all),
            ("exclude", &self.exclude),
            ("enabled", &self.enabled),
            ("repeat-missed", &self.repeat_missed),
            ("comment", &self.comment),
            ("storage", &self.storage),
            ("mode", &self.mode),
            ("compress", &self.compress),
            ("prune-backups", &self.prune_backups),
            ("remove", &self.remove),
            ("mailto", &self.mailto),
            ("mailnotification", &self.mailnotification),
            ("notes-template", &self.notes_template),
            ("protected", &self.protected),
        ];
        let mut out: Vec<(String, String)> = named
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), v.clone())))
            .collect();
        for o in &self.options {
            let (k, v) = o
                .split_once('=')
                .with_context(|| format!("--option '{o}' is not KEY=VALUE"))?;
            out.push((k.to_string(), v.to_string()));
        }
        Ok(out)
    }
}

/// Run `vmdump jobs`.
pub fn run(args: Args, global: &crate::Global) -> anyhow::Result<ExitCode> {
    let root = global.config_root();
    let states = StateStore::new(&args.state_dir);
    let path = root.jobs_cfg_path();
    match args.action {
        Action::List { output_format } => {
            let jobs = root.jobs()?.jobs();
            if output_format == Format::Json {
                let v: Vec<serde_json::Value> = jobs.iter().map(job_json).collect();
                output::json(&v)?;
            } else {
                let rows: Vec<Vec<String>> = jobs
                    .iter()
                    .map(|j| {
                        vec![
                            j.id.clone(),
                            u8::from(j.enabled).to_string(),
                            j.schedule.clone(),
                            selection(j),
                            j.options.storage.clone().unwrap_or_else(|| "-".into()),
                            j.comment.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                output::table(
                    &["id", "enabled", "schedule", "guests", "storage", "comment"],
                    &rows,
                )?;
            }
        }
        Action::Show { id } => {
            let job = root
                .jobs()?
                .get(&id)
                .ok_or_else(|| vmdump_jobs::Error::NoSuchJob(id.clone()))?;
            outln!("vzdump: {}", job.id)?;
            outln!("\tschedule {}", job.schedule)?;
            outln!("\tenabled {}", u8::from(job.enabled))?;
            outln!("\trepeat-missed {}", u8::from(job.repeat_missed))?;
            if let Some(c) = &job.comment {
                outln!("\tcomment {c}")?;
            }
            outln!("\t{}", selection_line(&job))?;
            for (k, v) in &job.option_pairs {
                outln!("\t{k} {v}")?;
            }
        }
        Action::Add { id, props } => {
            let pairs = props.pairs()?;
            check_schedule(&pairs)?;
            let mut cfg = root.jobs()?;
            let refs: Vec<(&str, &str)> = pairs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            cfg.add(&id, &refs)
                .with_context(|| format!("add job '{id}'"))?;
            cfg.save(&path)?;
        }
        Action::Set { id, props, delete } => {
            let pairs = props.pairs()?;
            check_schedule(&pairs)?;
            if pairs.is_empty() && delete.is_empty() {
                bail!("nothing to change");
            }
            let mut cfg = root.jobs()?;
            let mut changes: Vec<(&str, Option<&str>)> = pairs
                .iter()
                .map(|(k, v)| (k.as_str(), Some(v.as_str())))
                .collect();
            changes.extend(delete.iter().map(|k| (k.as_str(), None)));
            cfg.set(&id, &changes)
                .with_context(|| format!("change job '{id}'"))?;
            cfg.save(&path)?;
        }
        Action::Remove { id } => {
            let mut cfg = root.jobs()?;
            if !cfg.remove(&id) {
                return Err(vmdump_jobs::Error::NoSuchJob(id).into());
            }
            cfg.save(&path)?;
            states.remove(&id)?;
        }
        Action::Run { id } => {
            let job = root
                .jobs()?
                .get(&id)
                .ok_or_else(|| vmdump_jobs::Error::NoSuchJob(id.clone()))?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("start the async runtime")?;
            let ui = Ui::new(Style::Vzdump);
            ui.record_task("vzdump", &job.id);
            let summary = rt.block_on(vmdump_jobs::run::run_job(
                &root,
                &global.run_base(),
                &job,
                &ui,
            ));
            if !summary.ok() {
                let _ = outln!("TASK ERROR: job errors");
                ui.finish_task(Err(summary
                    .job_error
                    .clone()
                    .unwrap_or_else(|| "job errors".into())));
                return Ok(ExitCode::from(1));
            }
            ui.finish_task(Ok(()));
        }
        Action::Next { output_format } => {
            let next = vmdump_jobs::scheduler::next_runs(&root, &states, chrono::Local::now())?;
            if output_format == Format::Json {
                output::json(&next)?;
            } else {
                let rows: Vec<Vec<String>> = next
                    .iter()
                    .map(|n| {
                        vec![
                            n.id.clone(),
                            n.schedule.clone(),
                            u8::from(n.enabled).to_string(),
                            n.last_run.map_or("-".into(), output::local_time),
                            n.last_result.clone().unwrap_or_else(|| "-".into()),
                            n.next_run.map_or("-".into(), output::local_time),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "id", "schedule", "enabled", "last run", "result", "next run",
                    ],
                    &rows,
                )?;
            }
        }
        Action::SystemdUnits { output_dir, exe } => {
            let exe = match exe {
                Some(e) => e,
                None => std::env::current_exe().context("find the vmdump binary")?,
            };
            let mut units = vec![vmdump_jobs::systemd::scheduler_unit(&root, &exe)];
            units.extend(vmdump_jobs::systemd::job_units(
                &root,
                &exe,
                &root.jobs()?.jobs(),
            )?);
            match output_dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("create {}", dir.display()))?;
                    for u in &units {
                        let p = dir.join(&u.file_name);
                        std::fs::write(&p, &u.text)
                            .with_context(|| format!("write {}", p.display()))?;
                        outln!("{}", p.display())?;
                    }
                }
                None => {
                    for u in &units {
                        outln!("# {}\n{}", u.file_name, u.text)?;
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check_schedule(pairs: &[(String, String)]) -> anyhow::Result<()> {
    if let Some((_, s)) = pairs.iter().find(|(k, _)| k == "schedule") {
        vmdump_schedule::CalendarEvent::parse(s)?;
    }
    Ok(())
}

fn selection(j: &BackupJobConfig) -> String {
    if j.all {
        if j.exclude.is_empty() {
            "all".into()
        } else {
            format!("all except {}", join(&j.exclude))
        }
    } else {
        join(&j.vmids)
    }
}

fn selection_line(j: &BackupJobConfig) -> String {
    if !j.all {
        format!("vmid {}", join(&j.vmids))
    } else if j.exclude.is_empty() {
        "all 1".into()
    } else {
        format!("exclude {}", join(&j.exclude))
    }
}

fn join(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn job_json(j: &BackupJobConfig) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": j.id,
        "schedule": j.schedule,
        "enabled": j.enabled,
        "repeat-missed": j.repeat_missed,
        "comment": j.comment,
        "all": j.all,
        "vmid": j.vmids,
        "exclude": j.exclude,
    });
    if let Some(o) = v.as_object_mut() {
        for (k, val) in &j.option_pairs {
            o.insert(k.clone(), serde_json::Value::String(val.clone()));
        }
    }
    v
}
