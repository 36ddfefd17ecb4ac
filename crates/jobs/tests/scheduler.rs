//! The scheduler against a real jobs.cfg and state directory, with a counting runner and a
//! controlled clock: a due job runs exactly once, a missed run is caught up after a restart
//! only with `repeat-missed 1`, a disabled job never runs, and two schedulers cannot run on
//! one host.

use std::cell::RefCell;

use chrono::{DateTime, Local, TimeZone};
use vmdump_config::{BackupJobConfig, ConfigRoot};
use vmdump_jobs::scheduler::{RunOutcome, Runner, Scheduler};
use vmdump_jobs::state::{Phase, StateStore};

#[derive(Default)]
struct Counting {
    runs: RefCell<Vec<String>>,
}

impl Runner for &Counting {
    fn run(&self, job: &BackupJobConfig) -> RunOutcome {
        self.runs.borrow_mut().push(job.id.clone());
        RunOutcome {
            ok: true,
            message: "OK".into(),
        }
    }
}

fn at(h: u32, m: u32, s: u32) -> DateTime<Local> {
    Local
        .with_ymd_and_hms(2025, 6, 2, h, m, s)
        .single()
        .expect("valid local time")
}

fn setup(jobs: &str) -> (tempfile::TempDir, ConfigRoot, StateStore) {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("jobs.cfg"), jobs).expect("write jobs.cfg");
    let root = ConfigRoot::new(tmp.path());
    let states = StateStore::new(tmp.path().join("state"));
    (tmp, root, states)
}

const JOBS: &str = "vzdump: hourly\n\tschedule hourly\n\tvmid 100\n\nvzdump: off\n\tschedule *:*\n\tvmid 100\n\tenabled 0\n\nvzdump: catchup\n\tschedule 03:00\n\tvmid 100\n\trepeat-missed 1\n\nvzdump: skip\n\tschedule 03:00\n\tvmid 100\n";

#[test]
fn a_due_job_runs_exactly_once_and_a_disabled_one_never() {
    let (_tmp, root, states) = setup(JOBS);
    let counter = Counting::default();
    let mut s = Scheduler::new(root, states.clone(), &counter);
    // First sight of the jobs at 01:10: nothing is due yet.
    assert!(s.tick(at(1, 10, 0)).expect("tick").is_empty());
    assert!(s.tick(at(1, 59, 59)).expect("tick").is_empty());
    // 02:00: the hourly job is due; passes within the same hour do not run it again.
    assert_eq!(s.tick(at(2, 0, 5)).expect("tick"), ["hourly"]);
    assert!(s.tick(at(2, 0, 30)).expect("tick").is_empty());
    assert!(s.tick(at(2, 59, 0)).expect("tick").is_empty());
    assert_eq!(
        s.tick(at(3, 0, 1)).expect("tick"),
        ["hourly", "catchup", "skip"]
    );
    assert_eq!(counter.runs.borrow().len(), 4);
    assert!(!counter.runs.borrow().contains(&"off".to_string()));
    let st = states.load("hourly").expect("load").expect("exists");
    assert_eq!(st.state, Phase::Stopped);
    assert_eq!(st.last_run, Some(at(3, 0, 1).timestamp()));
    assert_eq!(st.message.as_deref(), Some("OK"));
}

#[test]
fn a_restart_catches_up_only_repeat_missed_jobs_once() {
    let (_tmp, root, states) = setup(JOBS);
    let counter = Counting::default();
    {
        let mut s = Scheduler::new(root.clone(), states.clone(), &counter);
        s.tick(at(1, 0, 0)).expect("tick");
    }
    // The scheduler was down from 01:00 to 05:30: 02:00..05:00 (hourly) and 03:00 missed.
    let mut s = Scheduler::new(root.clone(), states.clone(), &counter);
    assert_eq!(s.tick(at(5, 30, 0)).expect("tick"), ["catchup"]);
    // Caught up once, not once per missed event; the skipped ones resume on schedule.
    assert!(s.tick(at(5, 31, 0)).expect("tick").is_empty());
    assert_eq!(s.tick(at(6, 0, 0)).expect("tick"), ["hourly"]);
    assert_eq!(*counter.runs.borrow(), ["catchup", "hourly"]);
}

#[test]
fn a_run_recorded_by_a_live_process_is_not_started_again() {
    let (_tmp, root, states) = setup("vzdump: j\n\tschedule *:*\n\tvmid 100\n");
    let counter = Counting::default();
    let mut s = Scheduler::new(root.clone(), states.clone(), &counter);
    s.tick(at(1, 0, 0)).expect("tick");
    // Another process (this test's own pid is alive) is running the job.
    let mut st = states.load("j").expect("load").expect("exists");
    st.state = Phase::Started;
    st.pid = Some(std::process::id() as i32);
    states.save("j", &st).expect("save");
    assert!(s.tick(at(1, 5, 0)).expect("tick").is_empty());
    // Its process died: the job is marked aborted and runs again.
    st.pid = Some(i32::MAX - 1);
    states.save("j", &st).expect("save");
    assert_eq!(s.tick(at(1, 6, 0)).expect("tick"), ["j"]);
}

#[test]
fn one_scheduler_per_host() {
    let (_tmp, root, states) = setup(JOBS);
    let counter = Counting::default();
    let mut a = Scheduler::new(root.clone(), states.clone(), &counter);
    a.lock().expect("first scheduler");
    let mut b = Scheduler::new(root, states, &counter);
    let err = b.lock().expect_err("second scheduler");
    assert_eq!(err.kind(), vmdump_jobs::ErrorKind::Busy);
}

#[test]
fn changing_a_schedule_resets_the_base() {
    let (tmp, root, states) = setup("vzdump: j\n\tschedule 04:00\n\tvmid 100\n");
    let counter = Counting::default();
    let mut s = Scheduler::new(root, states, &counter);
    s.tick(at(1, 0, 0)).expect("tick");
    s.tick(at(1, 1, 0)).expect("tick");
    std::fs::write(
        tmp.path().join("jobs.cfg"),
        "vzdump: j\n\tschedule 02:00\n\tvmid 100\n",
    )
    .expect("edit");
    assert!(
        s.tick(at(2, 30, 0)).expect("tick").is_empty(),
        "the change happened at 02:30"
    );
    std::fs::write(
        tmp.path().join("jobs.cfg"),
        "vzdump: j\n\tschedule 03:00\n\tvmid 100\n",
    )
    .expect("edit");
    assert!(s.tick(at(2, 40, 0)).expect("tick").is_empty());
    assert_eq!(s.tick(at(3, 0, 0)).expect("tick"), ["j"]);
}
