//! Workspace integration tests, one binary with a module per topic:
//!
//! - `loading`: the real plugin, the test-nodes plugin, a plugin built for another SDK and
//!   files that are not plugins, all through the real ABI;
//! - `executor`: what runs, in which order, caching, progress, panics, cancellation (on the
//!   `test-nodes-plugin` fixture);
//! - `video`: the real `LoadReference` → `SaveVideo` on generated GIFs;
//! - `cli`: the `nodehost` binary, including malformed inputs and Ctrl-C;
//! - `motion`: the shipped motion-transfer example graph through `nodehost` with the real
//!   model (short runs) and its bad-input refusals.
//!
//! Everything they load is built by `cargo test --workspace` into the folder above the test
//! executable's `deps/`.

mod host {
    pub mod util;

    mod cli;
    mod executor;
    mod loading;
    mod motion;
    mod video;
}
