//! API tests: the router driven in-process (no socket) over a real registry and worker.

mod api {
    pub mod plugin;
}

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::{
    body::Body,
    http::{Request, StatusCode},
    Router,
};
use node_server::{router, start, Folders};
use serde_json::{json, Value as Json};
use tower::ServiceExt;

struct Server {
    dir: tempfile::TempDir,
    app: Router,
}

const MAX_BODY: usize = 64 * 1024;

impl Server {
    fn with_queue(capacity: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("input/clips")).unwrap();
        std::fs::write(dir.path().join("input/clips/a.txt"), "hello").unwrap();
        std::fs::write(dir.path().join("secret.txt"), "TOPSECRET").unwrap();
        let folders = Folders::new(
            dir.path(),
            Path::new("input"),
            Path::new("out"),
            Path::new("graphs"),
        )
        .unwrap();
        let state = start(Arc::new(api::plugin::registry()), folders, capacity, true);
        Server {
            app: router(state, MAX_BODY),
            dir,
        }
    }

    fn new() -> Self {
        Self::with_queue(8)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    async fn send(&self, method: &str, uri: &str, body: Option<String>) -> (StatusCode, Vec<u8>) {
        self.send_to("127.0.0.1:8188", method, uri, body).await
    }

    async fn send_to(
        &self,
        host: &str,
        method: &str,
        uri: &str,
        body: Option<String>,
    ) -> (StatusCode, Vec<u8>) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", host);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(body.map(Body::from).unwrap_or_default()).unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, bytes.to_vec())
    }

    async fn json(&self, method: &str, uri: &str, body: Option<Json>) -> (StatusCode, Json) {
        let (status, bytes) = self.send(method, uri, body.map(|b| b.to_string())).await;
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}));
        (status, json)
    }

    async fn submit(&self, graph: Json) -> u64 {
        let (status, body) = self.json("POST", "/api/jobs", Some(graph)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["job"].as_u64().unwrap()
    }

    /// Every event of a job (the stream ends after `done`).
    async fn events(&self, job: u64) -> Vec<Json> {
        let (status, bytes) = tokio::time::timeout(
            Duration::from_secs(30),
            self.send("GET", &format!("/api/jobs/{job}/events"), None),
        )
        .await
        .expect("the event stream ends after done");
        assert_eq!(status, StatusCode::OK);
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    async fn wait_running(&self, job: u64) {
        for _ in 0..500 {
            let (_, s) = self.json("GET", &format!("/api/jobs/{job}"), None).await;
            if s["state"] == "running" && !s["progress"].is_null() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("job {job} never started");
    }
}

fn copy(path: &str, folder: &str, name: &str) -> Json {
    json!({"1": {"class_type": "CopyFile", "inputs": {"path": path, "folder": folder, "name": name}}})
}

fn slow(name: &str, steps: u64) -> Json {
    json!({"1": {"class_type": "CopyFile", "inputs": {
        "path": "input/clips/a.txt", "folder": "out", "name": name, "steps": steps, "step_ms": 20}}})
}

fn types(events: &[Json]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn schemas_carry_file_roles() {
    let s = Server::new();
    let (status, nodes) = s.json("GET", "/api/nodes", None).await;
    assert_eq!(status, StatusCode::OK);
    let inputs = nodes["CopyFile"]["inputs"].as_array().unwrap();
    let role = |name: &str| inputs.iter().find(|i| i["name"] == name).unwrap()["file"].clone();
    assert_eq!(role("path"), "input_file");
    assert_eq!(role("folder"), "output_folder");
    assert_eq!(role("name"), Json::Null);
    let (_, files) = s.json("GET", "/api/inputs", None).await;
    assert_eq!(files["files"], json!(["input/clips/a.txt"]));
    assert_eq!(files["folder"], "input");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_streams_its_events_writes_its_output_and_serves_it() {
    let s = Server::new();
    let job = s.submit(slow("b.txt", 3)).await;
    let events = s.events(job).await;
    assert_eq!(
        types(&events),
        [
            "queued",
            "plan",
            "node_started",
            "progress",
            "progress",
            "progress",
            "node_finished",
            "done"
        ]
    );
    assert_eq!(events[3]["node"], "1");
    assert_eq!(
        (events[5]["step"].as_u64(), events[5]["total"].as_u64()),
        (Some(3), Some(3))
    );
    let done = events.last().unwrap();
    assert_eq!(done["state"], "done");
    assert_eq!(done["outputs"][0]["path"], "out/b.txt");
    assert_eq!(done["outputs"][0]["node"], "1");
    assert_eq!(
        std::fs::read_to_string(s.path("out/b.txt")).unwrap(),
        "hello"
    );
    let url = done["outputs"][0]["url"].as_str().unwrap().to_string();
    assert_eq!(url, "/api/outputs/b.txt");
    let (status, body) = s.send("GET", &url, None).await;
    assert_eq!((status, body), (StatusCode::OK, b"hello".to_vec()));
    let (_, status) = s.json("GET", &format!("/api/jobs/{job}"), None).await;
    assert_eq!(status["state"], "done");
    // A client connecting after the end replays everything.
    assert_eq!(s.events(job).await.len(), events.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_node_is_an_error_event_naming_node_and_input() {
    let s = Server::new();
    let mut graph = copy("input/clips/a.txt", "out", "x.txt");
    graph["1"]["inputs"]["fail"] = json!(true);
    let events = s.events(s.submit(graph).await).await;
    let error = events
        .iter()
        .find(|e| e["type"] == "error")
        .expect("an error event");
    assert_eq!(
        (error["node"].as_str(), error["input"].as_str()),
        (Some("1"), Some("fail"))
    );
    assert_eq!(error["message"], "asked to fail");
    assert_eq!(events.last().unwrap()["state"], "failed");
    assert!(!s.path("out/x.txt").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn path_escapes_are_refused_naming_node_and_input() {
    let s = Server::new();
    std::os::unix::fs::symlink(s.path("secret.txt"), s.path("input/link.txt")).unwrap();
    std::os::unix::fs::symlink(s.dir.path(), s.path("out/up")).unwrap();
    let abs = s.path("secret.txt").display().to_string();
    let cases = [
        (
            copy("input/../secret.txt", "out", "a"),
            "path",
            "'..' is refused",
        ),
        (copy(&abs, "out", "a"), "path", "absolute paths are refused"),
        (
            copy("secret.txt", "out", "a"),
            "path",
            "outside the input folder",
        ),
        (
            copy("input/link.txt", "out", "a"),
            "path",
            "outside the input folder",
        ),
        (
            copy("input/clips/a.txt", "out/../input", "a"),
            "folder",
            "'..' is refused",
        ),
        (
            copy("input/clips/a.txt", "/tmp", "a"),
            "folder",
            "absolute paths are refused",
        ),
        (
            copy("input/clips/a.txt", "input", "a"),
            "folder",
            "outside the output folder",
        ),
        (
            copy("input/clips/a.txt", "out/up/new", "a"),
            "folder",
            "outside the output folder",
        ),
    ];
    for (graph, input, message) in cases {
        for route in ["/api/jobs", "/api/validate"] {
            let (status, body) = s.json("POST", route, Some(graph.clone())).await;
            let expected = if route == "/api/jobs" {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            };
            assert_eq!(status, expected, "{route} {graph}: {body}");
            let problems = body["problems"].as_array().unwrap();
            assert!(
                problems.iter().any(|p| p["node"] == "1"
                    && p["input"] == input
                    && p["message"].as_str().unwrap().contains(message)),
                "{graph}: {body}"
            );
        }
    }
    // Nothing ran: no job, nothing written outside the output folder.
    let (_, jobs) = s.json("GET", "/api/jobs", None).await;
    assert_eq!(jobs, json!([]));
    assert!(!s.path("input/a").exists() && !s.path("new").exists() && !s.path("a").exists());
    // The default folder of an omitted input is resolved (and allowed) too.
    let (status, body) = s
        .json(
            "POST",
            "/api/validate",
            Some(json!({"1": {"class_type": "CopyFile", "inputs": {"path": "input/clips/a.txt"}}})),
        )
        .await;
    assert_eq!(
        (status, &body["ok"]),
        (StatusCode::OK, &json!(true)),
        "{body}"
    );
    // Outputs are fetched from the output folder only.
    std::fs::write(s.path("out/ok.txt"), "ok").unwrap();
    assert_eq!(
        s.send("GET", "/api/outputs/ok.txt", None).await.0,
        StatusCode::OK
    );
    for uri in [
        "/api/outputs/../secret.txt",
        "/api/outputs/%2e%2e/secret.txt",
        "/api/outputs/up/secret.txt",
        "/api/outputs//etc/passwd",
    ] {
        let (status, body) = s.send("GET", uri, None).await;
        assert!(status.is_client_error(), "{uri}: {status}");
        assert!(
            !String::from_utf8_lossy(&body).contains("TOPSECRET"),
            "{uri}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn validation_lists_every_problem() {
    let s = Server::new();
    let graph = json!({
        "1": {"class_type": "CopyFile", "inputs": {"path": "input/nope.txt", "steps": -1}},
        "2": {"class_type": "Missing", "inputs": {}}
    });
    let (status, body) = s.json("POST", "/api/validate", Some(graph)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["ok"], false);
    let found: Vec<(String, String)> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["node"].as_str().unwrap().into(),
                p["input"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    for want in [("1", "steps"), ("1", "path"), ("2", "")] {
        assert!(
            found.contains(&(want.0.into(), want.1.into())),
            "{want:?} in {found:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_oversized_requests_get_4xx_with_a_message() {
    let s = Server::new();
    let big = format!(
        "{{\"1\": {{\"class_type\": \"CopyFile\", \"inputs\": {{\"name\": \"{}\"}}}}}}",
        "x".repeat(MAX_BODY)
    );
    let (status, _) = s.send("POST", "/api/jobs", Some(big.clone())).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = s.send("PUT", "/api/graphs/big", Some(big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(!s.path("graphs/big.json").exists());

    let (status, body) = s.json("POST", "/api/jobs", None).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    for (body, says) in [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("{\"1\": {\"inputs\": {}}}", "class_type is missing"),
    ] {
        let (status, reply) = s.send("POST", "/api/jobs", Some(body.into())).await;
        let reply: Json = serde_json::from_slice(&reply).unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            reply["error"].as_str().unwrap().contains(says),
            "{body}: {reply}"
        );
    }
    for (uri, want) in [
        ("/api/jobs/abc", StatusCode::BAD_REQUEST),
        ("/api/jobs/999", StatusCode::NOT_FOUND),
        ("/api/jobs/999/events", StatusCode::NOT_FOUND),
        ("/api/graphs/nope", StatusCode::NOT_FOUND),
        ("/api/nowhere", StatusCode::NOT_FOUND),
    ] {
        let (status, body) = s.json("GET", uri, None).await;
        assert_eq!(status, want, "{uri}: {body}");
        assert!(
            body["error"].is_string() || status == StatusCode::BAD_REQUEST,
            "{uri}: {body}"
        );
    }
    let (status, _) = s.json("POST", "/api/jobs/999/cancel", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_job_by_id_leaves_the_others_alone() {
    let s = Server::new();
    let a = s.submit(slow("a.txt", 500)).await;
    let b = s.submit(slow("b.txt", 2)).await;
    let c = s.submit(slow("c.txt", 2)).await;
    s.wait_running(a).await;
    // C waits in the queue: cancelling it removes it, A keeps running.
    let (status, body) = s.json("POST", &format!("/api/jobs/{c}/cancel"), None).await;
    assert_eq!(
        (status, &body["state"]),
        (StatusCode::OK, &json!("cancelled")),
        "{body}"
    );
    let (_, a_now) = s.json("GET", &format!("/api/jobs/{a}"), None).await;
    assert_eq!(a_now["state"], "running");
    // Cancelling the running A lets B run to the end.
    let (status, _) = s.json("POST", &format!("/api/jobs/{a}/cancel"), None).await;
    assert_eq!(status, StatusCode::OK);
    let a_events = s.events(a).await;
    assert_eq!(a_events.last().unwrap()["state"], "cancelled");
    let steps = a_events.iter().filter(|e| e["type"] == "progress").count();
    assert!(steps < 500, "A ran all its steps");
    let b_events = s.events(b).await;
    assert_eq!(b_events.last().unwrap()["state"], "done");
    assert_eq!(types(&s.events(c).await), ["queued", "done"]);
    assert!(
        !s.path("out/a.txt").exists()
            && s.path("out/b.txt").exists()
            && !s.path("out/c.txt").exists()
    );
    // A finished job cannot be cancelled again.
    let (status, body) = s.json("POST", &format!("/api/jobs/{b}/cancel"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_queue_is_bounded() {
    let s = Server::with_queue(1);
    let a = s.submit(slow("a.txt", 500)).await;
    s.wait_running(a).await;
    let b = s.submit(slow("b.txt", 1)).await;
    let (status, body) = s.json("POST", "/api/jobs", Some(slow("c.txt", 1))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().unwrap().contains("queue is full"));
    s.json("POST", &format!("/api/jobs/{a}/cancel"), None).await;
    assert_eq!(s.events(b).await.last().unwrap()["state"], "done");
}

#[tokio::test(flavor = "multi_thread")]
async fn graphs_save_list_and_load_with_their_layout() {
    let s = Server::new();
    let mut graph = copy("input/clips/a.txt", "out", "g.txt");
    graph["_graph"] = json!({"format_version": 1, "editor": {"nodes": {"1": {"pos": [10.5, 20]}}}});
    let (status, body) = s
        .json("PUT", "/api/graphs/my%20graph", Some(graph.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["path"], "graphs/my graph.json");
    let (_, list) = s.json("GET", "/api/graphs", None).await;
    assert_eq!(list["graphs"], json!(["my graph"]));
    let (status, loaded) = s.json("GET", "/api/graphs/my%20graph", None).await;
    assert_eq!((status, &loaded), (StatusCode::OK, &graph));
    // The saved file is a plain graph the executor runs (layout ignored).
    let saved = node_host::Graph::load(&s.path("graphs/my graph.json")).unwrap();
    assert_eq!(
        saved.meta["_graph"]["editor"]["nodes"]["1"]["pos"],
        json!([10.5, 20])
    );
    for bad in ["..", ".hidden", "a%2Fb", "a%5Cb", "a%00b"] {
        let (status, body) = s
            .json("PUT", &format!("/api/graphs/{bad}"), Some(graph.clone()))
            .await;
        assert!(status.is_client_error(), "{bad}: {status} {body}");
    }
    assert_eq!(std::fs::read_dir(s.path("graphs")).unwrap().count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_requests_to_localhost_are_answered() {
    let s = Server::new();
    for host in ["localhost:8188", "127.0.0.1", "[::1]:9000"] {
        assert_eq!(
            s.send_to(host, "GET", "/api/nodes", None).await.0,
            StatusCode::OK,
            "{host}"
        );
    }
    for host in [
        "evil.example:8188",
        "evil.example",
        "127.0.0.1.evil.example",
    ] {
        let (status, body) = s.send_to(host, "GET", "/api/nodes", None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{host}");
        assert!(String::from_utf8_lossy(&body).contains("only requests to localhost"));
    }
    let (status, _) = s
        .send_to(
            "evil.example",
            "POST",
            "/api/jobs",
            Some(slow("x.txt", 1).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, jobs) = s.json("GET", "/api/jobs", None).await;
    assert_eq!(jobs, json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_and_its_assets_are_served() {
    let s = Server::new();
    let (status, html) = s.send("GET", "/", None).await;
    let html = String::from_utf8(html).unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("/assets/app.js") && html.contains("id=\"canvas\""),
        "{html}"
    );
    for asset in ["/assets/app.js", "/assets/app.css"] {
        let (status, body) = s.send("GET", asset, None).await;
        assert!(status == StatusCode::OK && body.len() > 1000, "{asset}");
    }
    assert_eq!(
        s.send("GET", "/assets/nope.js", None).await.0,
        StatusCode::NOT_FOUND
    );
}

#[test]
fn input_and_output_folders_must_be_inside_the_working_folder() {
    let work = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let err = Folders::new(
        work.path(),
        elsewhere.path(),
        Path::new("out"),
        Path::new("g"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("input folder") && err.contains("not inside the working folder"),
        "{err}"
    );
    let err = Folders::new(
        work.path(),
        Path::new("in"),
        Path::new("../out"),
        Path::new("g"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("output folder"), "{err}");
    assert!(
        !work.path().join("in").exists(),
        "nothing is created before the checks"
    );
}
