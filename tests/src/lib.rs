//! Workspace-level integration tests live in `tests/host.rs` (one test binary, topic modules
//! under `tests/host/`). They need the plugin libraries and the `nodehost` binary that
//! `cargo test --workspace` builds next to the test executable's `deps/` folder.
