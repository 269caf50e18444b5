//! Smoke tests of the `nodehost` binary on its own; the workspace's `tests/` crate runs it
//! against real plugins. Having integration tests also makes `cargo test` build the binary
//! (at `target/<profile>/nodehost`), where those tests find it.

use std::process::Command;

const NODEHOST: &str = env!("CARGO_BIN_EXE_nodehost");

#[test]
fn version_and_help_name_the_subcommands() {
    let out = Command::new(NODEHOST).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("nodehost {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(NODEHOST).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for sub in [
        "nodes",
        "validate",
        "run",
        "doctor",
        "serve",
        "--plugin-dir",
    ] {
        assert!(help.contains(sub), "{sub} missing from\n{help}");
    }
}

#[test]
fn a_folder_without_plugins_is_a_one_line_error() {
    let dir = std::env::temp_dir().join(format!("nodehost-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(NODEHOST)
        .arg("--plugin-dir")
        .arg(&dir)
        .arg("nodes")
        .env_remove("NODEHOST_PLUGIN_PATH")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: no plugin found in")
            && stderr.contains(&dir.display().to_string()),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2_without_a_panic() {
    for args in [
        &["frobnicate"][..],
        &["run"],
        &["validate", "a.json", "b.json"],
        &["run", "g.json", "--set"],
    ] {
        let out = Command::new(NODEHOST).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn serve_refuses_a_non_loopback_address_without_allow_remote() {
    let out = Command::new(NODEHOST)
        .args(["serve", "--host", "0.0.0.0", "--port", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0") && stderr.contains("--allow-remote"),
        "{stderr}"
    );
}
