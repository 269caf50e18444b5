//! Plugins loaded through the real ABI: the workspace's plugin, the test-nodes fixture, a
//! plugin built against another SDK version, and files that are not plugins.

use std::path::{Path, PathBuf};

use node_abi::{
    abi_stable::std_types::RStr, InputKind, Literal, NodeDescriptor, ValueType, SDK_VERSION,
};
use node_host::{
    loader::{discover, load_plugin},
    LoadError, Registry,
};

use super::util::{library, plugin_dir, target_dir, INCOMPATIBLE_PLUGIN, REAL_PLUGIN, TEST_PLUGIN};

/// Checks what every node schema should satisfy, whichever plugin it comes from.
fn check_schema(d: &NodeDescriptor) {
    let class = d.class_type.as_str();
    assert!(
        !class.is_empty() && class.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "class_type {class:?}"
    );
    assert!(d.version >= 1, "{class}: version {}", d.version);
    for (what, text) in [
        ("display_name", &d.display_name),
        ("category", &d.category),
        ("description", &d.description),
    ] {
        assert!(!text.trim().is_empty(), "{class}: empty {what}");
    }
    let mut names: Vec<&str> = d.inputs.iter().map(|i| i.name.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(
        names.len(),
        d.inputs.len(),
        "{class}: duplicate input names"
    );
    for i in d.inputs.iter() {
        let at = format!("{class}.{}", i.name);
        assert!(
            !i.name.is_empty() && !i.name.starts_with('_'),
            "{at}: bad name"
        );
        if !i.ty.is_literal() {
            assert_eq!(
                i.accepts,
                InputKind::Link,
                "{at}: a {} input can only take a link",
                i.ty
            );
            assert!(
                i.default.is_none(),
                "{at}: a {} input cannot have a default",
                i.ty
            );
        }
        if let (Some(lo), Some(hi)) = (i.min.into_option(), i.max.into_option()) {
            assert!(lo <= hi, "{at}: min {lo} > max {hi}");
        }
        if i.ty == ValueType::Choice {
            assert!(!i.choices.is_empty(), "{at}: a choice without choices");
        }
        if let Some(default) = i.default.as_ref().into_option() {
            let number = match default {
                Literal::Int(v) => {
                    assert!(
                        matches!(i.ty, ValueType::Int | ValueType::Float),
                        "{at}: INT default for {}",
                        i.ty
                    );
                    Some(*v as f64)
                }
                Literal::Float(v) => {
                    assert_eq!(i.ty, ValueType::Float, "{at}: FLOAT default");
                    Some(*v)
                }
                Literal::String(s) => {
                    assert!(
                        matches!(i.ty, ValueType::String | ValueType::Choice),
                        "{at}: STRING default for {}",
                        i.ty
                    );
                    if i.ty == ValueType::Choice {
                        assert!(
                            i.choices.iter().any(|c| c == s),
                            "{at}: default {s:?} is not a choice"
                        );
                    }
                    None
                }
                Literal::Boolean(_) => {
                    assert_eq!(i.ty, ValueType::Boolean, "{at}: BOOLEAN default");
                    None
                }
            };
            if let Some(x) = number {
                assert!(
                    i.min.into_option().is_none_or(|lo| x >= lo),
                    "{at}: default {x} below min"
                );
                assert!(
                    i.max.into_option().is_none_or(|hi| x <= hi),
                    "{at}: default {x} above max"
                );
            }
        }
    }
    for o in d.outputs.iter() {
        assert!(!o.name.is_empty(), "{class}: unnamed output");
    }
    assert!(
        d.is_output || !d.outputs.is_empty(),
        "{class}: neither an output node nor has outputs: it could never run"
    );
}

fn node<'a>(nodes: &'a [NodeDescriptor], class: &str) -> &'a NodeDescriptor {
    nodes
        .iter()
        .find(|d| d.class_type.as_str() == class)
        .unwrap_or_else(|| panic!("no {class} node"))
}

#[test]
fn the_real_plugin_loads_with_sane_schemas() {
    let path = library(REAL_PLUGIN);
    let plugin = load_plugin(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plugin.info.id.as_str(), "org.fastvmt.nodes");
    assert_eq!(plugin.sdk, SDK_VERSION);
    assert!(!plugin.info.version.is_empty() && !plugin.info.name.is_empty());
    assert_eq!(plugin.path.as_deref(), Some(path.as_path()));

    let load = node(&plugin.nodes, "LoadReference");
    assert!(!load.is_output);
    assert_eq!(
        load.outputs.iter().map(|o| o.ty).collect::<Vec<_>>(),
        [ValueType::Video]
    );
    let path_input = load.input("path").expect("LoadReference.path");
    assert_eq!(path_input.ty, ValueType::String);
    assert!(
        path_input.required && path_input.default.is_none(),
        "a path must be given"
    );
    for size in ["width", "height"] {
        let spec = load
            .input(size)
            .unwrap_or_else(|| panic!("LoadReference.{size}"));
        assert_eq!(spec.ty, ValueType::Int);
        assert!(
            spec.max.into_option().is_some(),
            "{size} needs a maximum, or huge values reach the decoder"
        );
    }

    let save = node(&plugin.nodes, "SaveVideo");
    assert!(save.is_output);
    let video = save.input("video").expect("SaveVideo.video");
    assert_eq!(
        (video.ty, video.accepts, video.required),
        (ValueType::Video, InputKind::Link, true)
    );
    let format = save.input("format").expect("SaveVideo.format");
    assert!(
        format.choices.iter().any(|c| c == "gif"),
        "{:?}",
        format.choices
    );

    let mut classes: Vec<&str> = plugin.nodes.iter().map(|d| d.class_type.as_str()).collect();
    classes.sort();
    let before = classes.len();
    classes.dedup();
    assert_eq!(classes.len(), before, "duplicate class_type in {classes:?}");
    plugin.nodes.iter().for_each(check_schema);

    // Unknown classes are an error from the plugin, not a crash.
    let err = (plugin.module.create_node())(RStr::from("NoSuchNode"))
        .into_result()
        .err()
        .expect("unknown class refused");
    assert!(err.message.contains("NoSuchNode"), "{err}");
    // Every declared class can be instantiated.
    for d in &plugin.nodes {
        (plugin.module.create_node())(d.class_type.as_rstr())
            .into_result()
            .unwrap_or_else(|e| panic!("{}: {e}", d.class_type));
    }
}

#[test]
fn the_real_plugin_reports_its_diagnostics() {
    let plugin = load_plugin(&library(REAL_PLUGIN)).unwrap();
    let registry = Registry::new(vec![plugin]);
    let diagnostics = registry.diagnostics();
    let ort = diagnostics
        .iter()
        .find(|(_, d)| d.subject.contains("ONNX Runtime"))
        .unwrap_or_else(|| panic!("no ONNX Runtime line in {diagnostics:?}"));
    assert_eq!(ort.0, "org.fastvmt.nodes");
    assert!(!ort.1.detail.trim().is_empty(), "{:?}", ort.1);
}

#[test]
fn the_test_plugin_loads_beside_the_real_one() {
    let test = load_plugin(&library(TEST_PLUGIN)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(test.info.id.as_str(), "org.fastvmt.test-nodes");
    assert_eq!(test.sdk, SDK_VERSION);
    let mut classes: Vec<&str> = test.nodes.iter().map(|d| d.class_type.as_str()).collect();
    classes.sort();
    assert_eq!(
        classes,
        [
            "AddNumbers",
            "Collect",
            "Fail",
            "MakeNumber",
            "MakeText",
            "Panic",
            "Pick",
            "SlowCounter",
            "WriteText",
            "WrongOutput"
        ]
    );
    test.nodes.iter().for_each(check_schema);
    let make = node(&test.nodes, "MakeNumber");
    assert_eq!(
        (
            make.input("value").unwrap().min.into_option(),
            make.input("value").unwrap().max.into_option()
        ),
        (Some(-1.0e6), Some(1.0e6))
    );

    let real = load_plugin(&library(REAL_PLUGIN)).unwrap();
    let registry = Registry::new(vec![test, real]);
    assert!(registry.conflicts.is_empty(), "{:?}", registry.conflicts);
    assert_eq!(registry.plugins().len(), 2);
    for class in ["MakeNumber", "WriteText", "LoadReference", "SaveVideo"] {
        registry
            .class(class)
            .unwrap_or_else(|| panic!("{class}"))
            .create()
            .unwrap_or_else(|e| panic!("{class}: {e}"));
    }
    assert_eq!(
        registry
            .class("LoadReference")
            .unwrap()
            .plugin
            .info
            .id
            .as_str(),
        "org.fastvmt.nodes"
    );
    assert!(registry
        .diagnostics()
        .iter()
        .any(|(id, d)| id == "org.fastvmt.test-nodes" && d.subject.as_str() == "test nodes"));
}

#[test]
fn a_plugin_built_for_another_sdk_is_refused_naming_both_versions() {
    let path = library(INCOMPATIBLE_PLUGIN);
    let err = load_plugin(&path)
        .err()
        .expect("a plugin built for SDK 99.0 must be refused");
    let message = err.to_string();
    match &err {
        LoadError::IncompatibleSdk {
            plugin,
            plugin_sdk,
            host_sdk,
            path: at,
        } => {
            assert_eq!(plugin, "org.fastvmt.incompatible");
            assert_eq!((plugin_sdk.major, plugin_sdk.minor), (99, 0));
            assert_eq!(*host_sdk, SDK_VERSION);
            assert_eq!(at, &path);
        }
        other => panic!("expected IncompatibleSdk, got {other:?}"),
    }
    assert!(message.contains("99.0"), "{message}");
    assert!(message.contains(&SDK_VERSION.to_string()), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(!message.contains('\n'), "one line: {message}");
}

/// A shared library that is not a plugin: a system library, else a proc-macro library cargo
/// built.
fn foreign_library() -> PathBuf {
    let system = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
        "/usr/lib64/libm.so.6",
        "/lib/aarch64-linux-gnu/libm.so.6",
    ];
    if let Some(p) = system.iter().map(Path::new).find(|p| p.is_file()) {
        return p.to_path_buf();
    }
    let deps = target_dir().join("deps");
    std::fs::read_dir(&deps)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libthiserror_impl-"))
                && p.extension().is_some_and(|e| e == "so")
        })
        .unwrap_or_else(|| {
            panic!(
                "no non-plugin shared library found on this machine or in {}",
                deps.display()
            )
        })
}

#[test]
fn files_that_are_not_plugins_give_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.so");
    std::fs::write(&text, "this is a text file, renamed\n".repeat(50)).unwrap();
    let empty = dir.path().join("empty.so");
    std::fs::write(&empty, b"").unwrap();
    let missing = dir.path().join("missing.so");
    for path in [text, empty, missing, foreign_library()] {
        let err = load_plugin(&path)
            .err()
            .unwrap_or_else(|| panic!("{} loaded as a plugin", path.display()));
        assert!(
            matches!(err, LoadError::NotAPlugin { .. }),
            "{}: expected NotAPlugin, got {err:?}",
            path.display()
        );
        let message = err.to_string();
        assert!(
            message.contains(&path.display().to_string())
                && message.contains("not a loadable node plugin"),
            "{message}"
        );
        assert!(!message.contains('\n'), "one line: {message}");
    }
}

#[test]
fn discover_loads_what_it_can_and_reports_the_rest() {
    let root = tempfile::tempdir().unwrap();
    let dir = plugin_dir(root.path(), &[TEST_PLUGIN, INCOMPATIBLE_PLUGIN]);
    std::fs::write(dir.join("aaa-junk.so"), "junk").unwrap();
    std::fs::write(dir.join("README.txt"), "not a library, not even tried").unwrap();
    std::fs::create_dir(dir.join("sub.so")).unwrap();
    let missing = root.path().join("no-such-folder");

    let (plugins, errors) = discover(&[dir, missing.clone()]);
    let ids: Vec<&str> = plugins.iter().map(|p| p.info.id.as_str()).collect();
    assert_eq!(ids, ["org.fastvmt.test-nodes"]);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(
        errors.iter().any(
            |e| matches!(e, LoadError::NotAPlugin { path, .. } if path.ends_with("aaa-junk.so"))
        ),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| matches!(e, LoadError::IncompatibleSdk { .. })),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| matches!(e, LoadError::Folder { path, .. } if *path == missing)),
        "{errors:#?}"
    );
}
