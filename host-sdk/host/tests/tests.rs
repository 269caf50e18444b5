//! Tests of `node-host` that need no plugin library: graph documents, validation and the
//! SDK checks, against plugins built in-process (`PluginMod::leak_into_prefix`).
//! Loading real libraries and running graphs is tested by the workspace's `tests/` crate.

mod suite;
