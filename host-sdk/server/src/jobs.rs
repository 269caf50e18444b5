//! The job queue: graphs submitted over the API run one at a time on a worker thread (the
//! executor is blocking and its node cache, with loaded models, persists across jobs). The
//! queue is bounded; each job has its own cancel token, so cancelling one never touches
//! another. Every job keeps the list of its events, so a client that connects late replays
//! them before following live ones.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use node_abi::LogLevel;
use node_host::{CancelToken, Event, ExecError, Executor, Graph};
use serde_json::{json, Value as Json};
use tokio::sync::watch;

use crate::files::Folders;

/// Finished jobs kept for status queries; older ones are forgotten.
const KEEP_FINISHED: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed | JobState::Cancelled
        )
    }
}

struct JobInner {
    state: JobState,
    events: Vec<Json>,
    graph: Option<Graph>,
    outputs: Vec<Json>,
    error: Option<Json>,
}

/// One submitted graph.
pub struct Job {
    pub id: u64,
    cancel: CancelToken,
    inner: Mutex<JobInner>,
    /// Number of events so far; event streams wait on it.
    version: watch::Sender<usize>,
}

impl Job {
    fn lock(&self) -> MutexGuard<'_, JobInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, event: Json) {
        let count = self.append(&mut self.lock(), event);
        self.version.send_replace(count);
    }

    /// Appends `event` (numbered) under the caller's lock; returns the new event count.
    fn append(&self, inner: &mut JobInner, mut event: Json) -> usize {
        event["job"] = json!(self.id);
        event["seq"] = json!(inner.events.len());
        inner.events.push(event);
        inner.events.len()
    }

    fn finish(&self, state: JobState, outputs: Vec<Json>, error: Option<Json>, seconds: f64) {
        if let Some(e) = &error {
            let mut event = e.clone();
            event["type"] = json!("error");
            self.push(event);
        }
        // The finished state and the `done` event under one lock: an event stream that sees the
        // job finished has the `done` event too (set apart, a stream could end between them
        // without it; seen once in CI's `cancelling_a_job_by_id_leaves_the_others_alone`).
        let count = {
            let mut inner = self.lock();
            inner.state = state;
            inner.outputs = outputs.clone();
            inner.error = error;
            inner.graph = None;
            let done = json!({"type": "done", "state": state.name(), "outputs": outputs, "seconds": seconds});
            self.append(&mut inner, done)
        };
        self.version.send_replace(count);
    }

    pub fn state(&self) -> JobState {
        self.lock().state
    }

    /// Events from index `from` on, and whether the job has finished (no more will come).
    pub fn events_since(&self, from: usize) -> (Vec<Json>, bool) {
        let inner = self.lock();
        (
            inner.events.get(from..).unwrap_or_default().to_vec(),
            inner.state.is_finished(),
        )
    }

    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.version.subscribe()
    }

    /// Status as the API returns it.
    pub fn status(&self) -> Json {
        let inner = self.lock();
        // The running node and its last step, from the events.
        let mut node = Json::Null;
        let mut progress = Json::Null;
        for e in &inner.events {
            match e["type"].as_str() {
                Some("node_started") => {
                    node = e["node"].clone();
                    progress = Json::Null;
                }
                Some("progress") => progress = json!({"step": e["step"], "total": e["total"]}),
                _ => {}
            }
        }
        json!({
            "id": self.id,
            "state": inner.state.name(),
            "node": if inner.state == JobState::Running { node } else { Json::Null },
            "progress": if inner.state == JobState::Running { progress } else { Json::Null },
            "events": inner.events.len(),
            "outputs": inner.outputs,
            "error": inner.error,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue is full ({0} jobs waiting); try again when one has finished")]
    Full(usize),
    #[error("no job {0}")]
    NotFound(u64),
    #[error("job {0} has already finished ({1})")]
    Finished(u64, &'static str),
}

struct QueueState {
    pending: VecDeque<Arc<Job>>,
    jobs: BTreeMap<u64, Arc<Job>>,
    next_id: u64,
}

/// Jobs by id and the ones waiting to run.
pub struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
    capacity: usize,
}

impl Queue {
    /// A queue holding at most `capacity` waiting jobs (the running one not counted).
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(QueueState {
                pending: VecDeque::new(),
                jobs: BTreeMap::new(),
                next_id: 1,
            }),
            wake: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a graph whose file inputs are already resolved.
    pub fn submit(&self, graph: Graph) -> Result<Arc<Job>, QueueError> {
        let mut st = self.lock();
        if st.pending.len() >= self.capacity {
            return Err(QueueError::Full(st.pending.len()));
        }
        let id = st.next_id;
        st.next_id += 1;
        let job = Arc::new(Job {
            id,
            cancel: CancelToken::new(),
            inner: Mutex::new(JobInner {
                state: JobState::Queued,
                events: Vec::new(),
                graph: Some(graph),
                outputs: Vec::new(),
                error: None,
            }),
            version: watch::channel(0).0,
        });
        job.push(json!({"type": "queued", "position": st.pending.len()}));
        st.pending.push_back(job.clone());
        st.jobs.insert(id, job.clone());
        // Forget the oldest finished jobs.
        let finished: Vec<u64> = st
            .jobs
            .values()
            .filter(|j| j.state().is_finished())
            .map(|j| j.id)
            .collect();
        for old in finished
            .iter()
            .take(finished.len().saturating_sub(KEEP_FINISHED))
        {
            st.jobs.remove(old);
        }
        drop(st);
        self.wake.notify_one();
        Ok(job)
    }

    pub fn get(&self, id: u64) -> Option<Arc<Job>> {
        self.lock().jobs.get(&id).cloned()
    }

    pub fn list(&self) -> Vec<Json> {
        self.lock()
            .jobs
            .values()
            .map(|j| json!({"id": j.id, "state": j.state().name()}))
            .collect()
    }

    /// Cancels job `id` only: a waiting job leaves the queue, a running one is stopped at
    /// its next cancellation point.
    pub fn cancel(&self, id: u64) -> Result<JobState, QueueError> {
        let mut st = self.lock();
        let job = st.jobs.get(&id).cloned().ok_or(QueueError::NotFound(id))?;
        match job.state() {
            JobState::Queued => {
                st.pending.retain(|j| j.id != id);
                drop(st);
                job.cancel.cancel();
                job.finish(JobState::Cancelled, Vec::new(), None, 0.0);
                Ok(JobState::Cancelled)
            }
            JobState::Running => {
                job.cancel.cancel();
                Ok(JobState::Running)
            }
            done => Err(QueueError::Finished(id, done.name())),
        }
    }

    fn next(&self) -> Arc<Job> {
        let mut st = self.lock();
        loop {
            if let Some(job) = st.pending.pop_front() {
                job.lock().state = JobState::Running;
                return job;
            }
            st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Starts the thread that runs queued jobs, one at a time, for the life of the process.
pub fn spawn_worker(queue: Arc<Queue>, mut executor: Executor, folders: Arc<Folders>) {
    std::thread::Builder::new()
        .name("nodehost-jobs".into())
        .spawn(move || loop {
            let job = queue.next();
            run_job(&job, &mut executor, &folders);
        })
        .expect("the job thread starts");
}

fn run_job(job: &Job, executor: &mut Executor, folders: &Folders) {
    let started = Instant::now();
    let Some(graph) = job.lock().graph.take() else {
        return;
    };
    let events = |e: Event| job.push(event_json(e));
    // Nodes catch their own panics; this keeps the worker alive should the host side panic.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        executor.run(&graph, &events, &job.cancel)
    }));
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(Ok(report)) => {
            let outputs = report
                .outputs
                .iter()
                .flat_map(|(node, values)| {
                    values
                        .iter()
                        .filter_map(move |v| output_json(folders, node, v.as_str()?))
                })
                .collect();
            job.finish(JobState::Done, outputs, None, seconds);
        }
        Ok(Err(e)) if e.is_cancelled() => {
            job.finish(JobState::Cancelled, Vec::new(), None, seconds)
        }
        Ok(Err(e)) => job.finish(JobState::Failed, Vec::new(), Some(error_json(&e)), seconds),
        Err(_) => job.finish(
            JobState::Failed,
            Vec::new(),
            Some(json!({"node": null, "message": "the host panicked while running the graph"})),
            seconds,
        ),
    }
}

/// A path an output node returned, as the page shows it: where it is and how to preview it.
fn output_json(folders: &Folders, node: &str, path: &str) -> Option<Json> {
    let path = Path::new(path);
    let rel = folders.output_relative(path)?;
    let kind = if path.is_dir() {
        "frames"
    } else {
        match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
            "gif" => "gif",
            "mp4" | "webm" => "video",
            "png" | "jpg" | "jpeg" => "image",
            _ => "file",
        }
    };
    Some(json!({
        "node": node,
        "path": folders.shown(&folders.output.join(&rel)),
        "url": format!("/api/outputs/{rel}"),
        "kind": kind,
    }))
}

fn error_json(e: &ExecError) -> Json {
    match e {
        ExecError::Node {
            node,
            class_type,
            error,
        } => json!({
            "node": node,
            "class_type": class_type,
            "input": error.input.as_ref().map(|i| i.to_string()).into_option(),
            "message": error.message.as_str(),
        }),
        ExecError::Invalid(problems) => json!({
            "node": problems.first().and_then(|p| p.node.clone()),
            "message": e.to_string(),
            "problems": problems.iter().map(crate::api::problem_json).collect::<Vec<_>>(),
        }),
        ExecError::Cancelled { node } => json!({"node": node, "message": e.to_string()}),
    }
}

fn event_json(e: Event) -> Json {
    match e {
        Event::Plan { order } => json!({"type": "plan", "order": order}),
        Event::NodeStarted { node, class_type } => {
            json!({"type": "node_started", "node": node, "class_type": class_type})
        }
        Event::NodeCached { node, class_type } => {
            json!({"type": "node_cached", "node": node, "class_type": class_type})
        }
        Event::Progress {
            node,
            step,
            total,
            message,
        } => {
            json!({"type": "progress", "node": node, "step": step, "total": total, "message": message})
        }
        Event::Log {
            node,
            level,
            message,
        } => {
            let level = match level {
                LogLevel::Debug => "debug",
                LogLevel::Info => "info",
                LogLevel::Warn => "warning",
                LogLevel::Error => "error",
            };
            json!({"type": "log", "node": node, "level": level, "message": message})
        }
        Event::NodeFinished {
            node,
            class_type,
            elapsed,
        } => {
            json!({"type": "node_finished", "node": node, "class_type": class_type, "seconds": elapsed.as_secs_f64()})
        }
    }
}
