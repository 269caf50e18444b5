//! SDK version checks, the registry and the schema JSON, on in-process plugins.

use node_abi::{SdkVersion, SDK_VERSION};
use node_host::{schema_json::registry_json, LoadError, LoadedPlugin, Registry};

use super::fixture::{self, PLUGIN_ID};

#[test]
fn current_sdk_version_loads_with_its_nodes() {
    let plugin = LoadedPlugin::from_module(fixture::module(SDK_VERSION), None).expect("loads");
    assert_eq!(plugin.sdk, SDK_VERSION);
    assert_eq!(plugin.info.id.as_str(), PLUGIN_ID);
    let names: Vec<&str> = plugin.nodes.iter().map(|d| d.class_type.as_str()).collect();
    assert_eq!(names, ["Num", "Text", "Clip", "Pass", "Sink"]);
    assert!(plugin.path.is_none());
}

fn refused(sdk: SdkVersion) -> String {
    match LoadedPlugin::from_module(fixture::module(sdk), None) {
        Ok(_) => {
            panic!("a plugin built for SDK {sdk} was accepted by a host speaking {SDK_VERSION}")
        }
        Err(e @ LoadError::IncompatibleSdk { .. }) => {
            let LoadError::IncompatibleSdk {
                plugin,
                plugin_sdk,
                host_sdk,
                ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((*plugin_sdk, *host_sdk), (sdk, SDK_VERSION));
            assert_eq!(plugin, PLUGIN_ID);
            e.to_string()
        }
        Err(other) => panic!("SDK {sdk}: expected IncompatibleSdk, got {other}"),
    }
}

#[test]
fn other_major_versions_are_refused_naming_both_versions() {
    let mut versions = vec![
        SdkVersion {
            major: SDK_VERSION.major + 1,
            minor: 0,
        },
        SdkVersion {
            major: SDK_VERSION.major + 98,
            minor: SDK_VERSION.minor + 7,
        },
    ];
    if SDK_VERSION.major > 0 {
        versions.push(SdkVersion {
            major: SDK_VERSION.major - 1,
            minor: SDK_VERSION.minor,
        });
    }
    for sdk in versions {
        let message = refused(sdk);
        assert!(message.contains(&format!("SDK {sdk}")), "{message}");
        assert!(message.contains(&format!("SDK {SDK_VERSION}")), "{message}");
        assert!(message.contains(PLUGIN_ID), "{message}");
        assert!(!message.contains('\n'), "one line: {message}");
    }
}

#[test]
fn a_newer_minor_version_is_refused() {
    let sdk = SdkVersion {
        major: SDK_VERSION.major,
        minor: SDK_VERSION.minor + 1,
    };
    let message = refused(sdk);
    assert!(
        message.contains(&sdk.to_string()) && message.contains(&SDK_VERSION.to_string()),
        "{message}"
    );
}

#[test]
fn can_load_accepts_same_major_and_older_or_equal_minor_only() {
    let host = SdkVersion { major: 3, minor: 5 };
    for (major, minor, ok) in [
        (3, 0, true),
        (3, 5, true),
        (3, 6, false),
        (2, 5, false),
        (4, 0, false),
        (0, 0, false),
    ] {
        assert_eq!(
            host.can_load(SdkVersion { major, minor }),
            ok,
            "host 3.5, plugin {major}.{minor}"
        );
    }
    assert_eq!(
        SdkVersion {
            major: 12,
            minor: 34
        }
        .to_string(),
        "12.34"
    );
}

#[test]
fn a_class_offered_twice_is_a_conflict_and_the_first_plugin_wins() {
    let first =
        LoadedPlugin::from_module(fixture::module(SDK_VERSION), Some("first.so".into())).unwrap();
    let second =
        LoadedPlugin::from_module(fixture::module(SDK_VERSION), Some("second.so".into())).unwrap();
    let registry = Registry::new(vec![first, second]);
    assert_eq!(registry.plugins().len(), 2);
    assert_eq!(
        registry.conflicts.len(),
        fixture::descriptors().len(),
        "{:?}",
        registry.conflicts
    );
    assert!(
        registry.conflicts.iter().any(|c| c.contains("'Sink'")),
        "{:?}",
        registry.conflicts
    );
    let sink = registry.class("Sink").unwrap();
    assert_eq!(
        sink.plugin.path.as_deref(),
        Some(std::path::Path::new("first.so"))
    );
}

#[test]
fn classes_are_sorted_and_diagnostics_labelled_by_plugin() {
    let registry = fixture::registry();
    let names: Vec<&str> = registry
        .classes()
        .iter()
        .map(|c| c.descriptor.class_type.as_str())
        .collect();
    assert_eq!(names, ["Clip", "Num", "Pass", "Sink", "Text"]);
    let diagnostics = registry.diagnostics();
    assert_eq!(diagnostics.len(), 1);
    assert_eq!(diagnostics[0].0, PLUGIN_ID);
    assert_eq!(diagnostics[0].1.subject.as_str(), "fixture");
    assert!(registry.class("Nope").is_none());
}

#[test]
fn a_plugin_refusing_to_create_a_node_returns_its_error() {
    let registry = fixture::registry();
    let err = registry
        .class("Num")
        .unwrap()
        .create()
        .err()
        .expect("the fixture creates nothing");
    assert!(err.message.contains("Num"), "{err}");
}

#[test]
fn schema_json_describes_every_input() {
    let json = registry_json(&fixture::registry());
    let classes: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(classes, ["Clip", "Num", "Pass", "Sink", "Text"]);
    let sink = &json["Sink"];
    assert_eq!(sink["output_node"], true);
    assert_eq!(sink["plugin"], PLUGIN_ID);
    assert_eq!(sink["outputs"], serde_json::json!([]));
    let input = |name: &str| {
        sink["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(input("video")["accepts"], "link");
    assert_eq!(input("video")["type"], "VIDEO");
    assert_eq!(input("count")["required"], true);
    assert_eq!(input("count")["default"], serde_json::Value::Null);
    assert_eq!(
        (
            input("count")["min"].as_f64(),
            input("count")["max"].as_f64()
        ),
        (Some(1.0), Some(10.0))
    );
    assert_eq!(
        input("mode")["choices"],
        serde_json::json!(["fast", "slow"])
    );
    assert_eq!(input("mode")["default"], "fast");
    assert_eq!(input("label")["accepts"], "constant");
    assert_eq!(input("label")["required"], false);
    assert_eq!(input("gain")["default"], 1.0);
    assert_eq!(input("loop")["type"], "BOOLEAN");
    assert_eq!(
        json["Num"]["outputs"],
        serde_json::json!([{"name": "n", "type": "INT"}])
    );
}
