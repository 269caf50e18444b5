//! The JSON API and the page's routes.
//!
//! Errors are JSON `{"error": message, "problems"?: [...]}` with a 4xx status; request
//! bodies are read as bytes and parsed here, so a malformed body is a 400 with the parser's
//! message, and an oversized one a 413 (axum's body limit).

use std::convert::Infallible;
use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{
        sse::{Event as SseEvent, KeepAlive, Sse},
        IntoResponse, Response,
    },
    routing::{get, post},
    Router,
};
use futures_util::{stream, Stream, StreamExt};
use node_abi::FileRole;
use node_host::{
    graph::InputValue, schema_json::registry_json, validate::validate, Graph, Problem, Registry,
};
use serde_json::{json, Value as Json};

use crate::assets;
use crate::files::Folders;
use crate::jobs::{Queue, QueueError};

/// What the handlers share.
pub struct AppState {
    pub registry: Arc<Registry>,
    pub folders: Arc<Folders>,
    pub queue: Arc<Queue>,
    /// Answer only requests addressed to a loopback name (see [`loopback_only`]).
    pub loopback_only: bool,
}

/// An API error: a status and a message (and the graph's problems, when there are any).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub problems: Vec<Json>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            problems: Vec::new(),
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.message});
        if !self.problems.is_empty() {
            body["problems"] = Json::Array(self.problems);
        }
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        let status = match e {
            QueueError::Full(_) => StatusCode::SERVICE_UNAVAILABLE,
            QueueError::NotFound(_) => StatusCode::NOT_FOUND,
            QueueError::Finished(..) => StatusCode::CONFLICT,
        };
        Self::new(status, e.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

/// The routes; `max_body` bounds every request body (bytes).
pub fn router(state: Arc<AppState>, max_body: usize) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/{file}", get(assets::file))
        .route("/api/nodes", get(nodes))
        .route("/api/validate", post(validate_graph))
        .route("/api/jobs", get(list_jobs).post(submit))
        .route("/api/jobs/{id}", get(job_status))
        .route("/api/jobs/{id}/cancel", post(cancel))
        .route("/api/jobs/{id}/events", get(events))
        .route("/api/graphs", get(list_graphs))
        .route("/api/graphs/{name}", get(load_graph).put(save_graph))
        .route("/api/inputs", get(inputs))
        .route("/api/outputs/{*path}", get(output))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), loopback_only))
        .with_state(state)
}

/// On a loopback server, refuses requests whose `Host` is not a loopback name: a page that
/// rebinds its own domain name to 127.0.0.1 (DNS rebinding) would otherwise be same-origin
/// with the editor.
async fn loopback_only(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if state.loopback_only {
        if let Some(host) = request.headers().get(header::HOST) {
            let host = host.to_str().unwrap_or("");
            let name = match host.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => host,
            };
            if !matches!(name, "localhost" | "127.0.0.1" | "[::1]") {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("this server answers only requests to localhost, not to '{host}'"),
                )
                .into_response();
            }
        }
    }
    next.run(request).await
}

pub fn problem_json(p: &Problem) -> Json {
    json!({
        "kind": format!("{:?}", p.kind),
        "node": p.node,
        "class_type": p.class_type,
        "input": p.input,
        "message": p.message,
        "text": p.to_string(),
    })
}

/// Parses a JSON body. Writes must say `Content-Type: application/json`: a page on another
/// site cannot send that to this server without a CORS preflight, which it never answers.
fn json_body(headers: &HeaderMap, body: &Bytes) -> Result<Json, ApiError> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_type {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as Content-Type: application/json",
        ));
    }
    node_host::json_from_slice_unique(body)
        .map_err(|e| ApiError::bad(format!("the body is not valid JSON: {e}")))
}

fn parse_graph(json: Json) -> Result<Graph, ApiError> {
    Graph::from_json(json, std::path::Path::new("request"))
        .map_err(|e| ApiError::bad(e.to_string()))
}

/// Validates `graph` and resolves its file inputs inside the folders: the graph the worker
/// runs (file inputs as absolute paths) and every problem found.
fn prepare(state: &AppState, graph: &Graph) -> (Graph, Vec<Json>) {
    let mut problems: Vec<Json> = validate(graph, &state.registry)
        .iter()
        .map(problem_json)
        .collect();
    let mut resolved = graph.clone();
    for (id, node) in &graph.nodes {
        let Some(class) = state.registry.class(&node.class_type) else {
            continue;
        };
        for spec in class.descriptor.inputs.iter() {
            if spec.file == FileRole::None {
                continue;
            }
            let name = spec.name.as_str();
            let value = match node.input(name) {
                Some(InputValue::Literal(Json::String(s))) => s.clone(),
                Some(InputValue::Literal(_)) => continue, // a type problem, reported above
                Some(InputValue::Link { .. }) => {
                    problems.push(file_problem(id, &node.class_type, name, "is a file path: choose it in the editor; links are refused because the server cannot check where they point"));
                    continue;
                }
                None => match spec.default.as_ref().into_option() {
                    Some(node_abi::Literal::String(s)) => s.to_string(),
                    _ => continue, // missing: reported above
                },
            };
            match state.folders.resolve(spec.file, &value) {
                Ok(path) => {
                    if let Some(n) = resolved.node_mut(id) {
                        n.set_input(
                            name,
                            InputValue::Literal(Json::String(path.display().to_string())),
                        );
                    }
                }
                Err(message) => problems.push(file_problem(id, &node.class_type, name, &message)),
            }
        }
    }
    (resolved, problems)
}

fn file_problem(node: &str, class_type: &str, input: &str, message: &str) -> Json {
    json!({
        "kind": "File",
        "node": node,
        "class_type": class_type,
        "input": input,
        "message": message,
        "text": format!("node {node} ({class_type}), input '{input}': {message}"),
    })
}

async fn nodes(State(state): State<Arc<AppState>>) -> axum::Json<Json> {
    axum::Json(registry_json(&state.registry))
}

async fn validate_graph(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let graph = parse_graph(json_body(&headers, &body)?)?;
    let (_, problems) = prepare(&state, &graph);
    Ok(axum::Json(json!({"ok": problems.is_empty(), "problems": problems})).into_response())
}

async fn submit(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let graph = parse_graph(json_body(&headers, &body)?)?;
    let (resolved, problems) = prepare(&state, &graph);
    if !problems.is_empty() {
        let mut e = ApiError::bad(format!(
            "the graph has {} problem(s); nothing was queued",
            problems.len()
        ));
        e.problems = problems;
        return Err(e);
    }
    let job = state.queue.submit(resolved)?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"job": job.id, "events": format!("/api/jobs/{}/events", job.id)})),
    )
        .into_response())
}

async fn list_jobs(State(state): State<Arc<AppState>>) -> axum::Json<Json> {
    axum::Json(Json::Array(state.queue.list()))
}

fn job_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad(format!("'{id}' is not a job id")))
}

async fn job_status(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    let id = job_id(&id)?;
    let job = state.queue.get(id).ok_or(QueueError::NotFound(id))?;
    Ok(axum::Json(job.status()).into_response())
}

async fn cancel(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    let id = job_id(&id)?;
    let now = state.queue.cancel(id)?;
    Ok(
        axum::Json(json!({"job": id, "state": now.name(), "cancel_requested": true}))
            .into_response(),
    )
}

/// Server-sent events of one job: every event so far, then live ones; the stream ends
/// after the `done` event.
async fn events(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let id = job_id(&id)?;
    let job = state.queue.get(id).ok_or(QueueError::NotFound(id))?;
    let rx = job.subscribe();
    let batches = stream::unfold((job, rx, 0usize), |(job, mut rx, next)| async move {
        loop {
            rx.borrow_and_update();
            let (batch, finished) = job.events_since(next);
            if !batch.is_empty() {
                let next = next + batch.len();
                return Some((batch, (job, rx, next)));
            }
            if finished || rx.changed().await.is_err() {
                return None;
            }
        }
    });
    let events = batches
        .flat_map(stream::iter)
        .map(|e| Ok(SseEvent::default().data(e.to_string())));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

async fn list_graphs(State(state): State<Arc<AppState>>) -> axum::Json<Json> {
    axum::Json(json!({
        "folder": state.folders.shown(&state.folders.graphs),
        "graphs": state.folders.graph_names(),
    }))
}

async fn load_graph(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> ApiResult {
    let path = state.folders.graph_file(&name).map_err(ApiError::bad)?;
    if !path.is_file() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no saved graph '{name}'"),
        ));
    }
    let graph = Graph::load(&path)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    Ok(axum::Json(graph.to_json()).into_response())
}

async fn save_graph(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let path = state.folders.graph_file(&name).map_err(ApiError::bad)?;
    let graph = parse_graph(json_body(&headers, &body)?)?;
    graph
        .save(&path)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(axum::Json(json!({"saved": name, "path": state.folders.shown(&path)})).into_response())
}

async fn inputs(State(state): State<Arc<AppState>>) -> axum::Json<Json> {
    axum::Json(json!({
        "folder": state.folders.shown(&state.folders.input),
        "output_folder": state.folders.shown(&state.folders.output),
        "files": state.folders.input_files(5000),
    }))
}

/// A file from the output folder, or the file names of a folder there (PNG frames).
async fn output(State(state): State<Arc<AppState>>, Path(rel): Path<String>) -> ApiResult {
    let path = state
        .folders
        .output_entry(&rel)
        .map_err(|m| ApiError::new(StatusCode::NOT_FOUND, m))?;
    if path.is_dir() {
        let mut files: Vec<String> = std::fs::read_dir(&path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        files.sort();
        let base = rel.trim_end_matches('/');
        let urls: Vec<String> = files
            .iter()
            .map(|f| format!("/api/outputs/{base}/{f}"))
            .collect();
        return Ok(axum::Json(json!({"files": urls})).into_response());
    }
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, format!("'{rel}': {e}")))?;
    let mime = match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "gif" => "image/gif",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "json" => "application/json",
        _ => "application/octet-stream",
    };
    Ok(([(header::CONTENT_TYPE, mime)], bytes).into_response())
}
