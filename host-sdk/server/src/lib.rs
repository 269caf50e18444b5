//! The reference host's web graph editor: an HTTP server over the same registry, executor
//! and saved-graph format as the CLI.
//!
//! - [`api`]: the JSON API (node schemas, validation, jobs and their live events as
//!   server-sent events, saved graphs, input files, outputs) and the page's routes.
//! - [`jobs`]: the bounded job queue and the worker thread that runs graphs, one at a time,
//!   each with its own cancel token; the executor's cache persists across jobs.
//! - [`files`]: confinement of file inputs to the input and output folders.
//! - [`assets`]: the editor page (built from `web/`), embedded in the binary.
//!
//! What it does not own: plugins, graphs, validation and execution (`node-host`), and
//! command-line parsing (`nodehost serve` in the CLI).

pub mod api;
pub mod assets;
pub mod files;
pub mod jobs;

use std::net::SocketAddr;
use std::sync::Arc;

use node_host::{Executor, Registry};

pub use api::{router, AppState};
pub use files::{FolderError, Folders};
pub use jobs::{Queue, QueueError};

/// Default bound on request bodies: graphs are small JSON documents.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Folder(#[from] FolderError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A server's state: the registry, the folders, and a queue with its worker running.
/// `loopback_only`: answer only requests addressed to localhost (for a server bound to a
/// loopback address).
pub fn start(
    registry: Arc<Registry>,
    folders: Folders,
    queue_capacity: usize,
    loopback_only: bool,
) -> Arc<AppState> {
    let folders = Arc::new(folders);
    let queue = Arc::new(Queue::new(queue_capacity));
    jobs::spawn_worker(
        queue.clone(),
        Executor::new(registry.clone()),
        folders.clone(),
    );
    Arc::new(AppState {
        registry,
        folders,
        queue,
        loopback_only,
    })
}

/// Serves on `addr` until Ctrl-C; `ready` is called with the bound address (port 0 picks a
/// free one) once connections are accepted.
pub fn serve(
    state: Arc<AppState>,
    addr: SocketAddr,
    max_body: usize,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        ready(listener.local_addr()?);
        axum::serve(listener, router(state, max_body))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}
