//! All node classes of the loaded plugins, by `class_type`.

use std::collections::HashMap;
use std::sync::Arc;

use node_abi::{Diagnostic, NodeDescriptor, NodeError, NodeInstanceBox};

use crate::loader::LoadedPlugin;

/// A node class and the plugin that provides it.
#[derive(Clone)]
pub struct NodeClass {
    pub descriptor: NodeDescriptor,
    pub plugin: Arc<LoadedPlugin>,
}

impl NodeClass {
    pub fn create(&self) -> Result<NodeInstanceBox, NodeError> {
        (self.plugin.module.create_node())(self.descriptor.class_type.as_rstr()).into_result()
    }
}

#[derive(Default, Clone)]
pub struct Registry {
    plugins: Vec<Arc<LoadedPlugin>>,
    classes: HashMap<String, NodeClass>,
    /// Node classes offered by more than one plugin: the first one loaded wins.
    pub conflicts: Vec<String>,
}

impl Registry {
    pub fn new(plugins: Vec<LoadedPlugin>) -> Self {
        let mut reg = Registry::default();
        for p in plugins {
            reg.add(p);
        }
        reg
    }

    pub fn add(&mut self, plugin: LoadedPlugin) {
        let plugin = Arc::new(plugin);
        for d in &plugin.nodes {
            let class = d.class_type.to_string();
            if let Some(existing) = self.classes.get(&class) {
                self.conflicts.push(format!(
                    "node '{class}' is offered by both {} and {}; using {}",
                    existing.plugin.info.id, plugin.info.id, existing.plugin.info.id
                ));
                continue;
            }
            self.classes.insert(
                class,
                NodeClass {
                    descriptor: d.clone(),
                    plugin: plugin.clone(),
                },
            );
        }
        self.plugins.push(plugin);
    }

    pub fn class(&self, class_type: &str) -> Option<&NodeClass> {
        self.classes.get(class_type)
    }

    pub fn plugins(&self) -> &[Arc<LoadedPlugin>] {
        &self.plugins
    }

    /// All node classes, sorted by category then class_type.
    pub fn classes(&self) -> Vec<&NodeClass> {
        let mut v: Vec<&NodeClass> = self.classes.values().collect();
        v.sort_by(|a, b| {
            (
                a.descriptor.category.as_str(),
                a.descriptor.class_type.as_str(),
            )
                .cmp(&(
                    b.descriptor.category.as_str(),
                    b.descriptor.class_type.as_str(),
                ))
        });
        v
    }

    /// Every plugin's self-check, labelled by plugin id.
    pub fn diagnostics(&self) -> Vec<(String, Diagnostic)> {
        self.plugins
            .iter()
            .flat_map(|p| {
                (p.module.diagnostics())()
                    .into_iter()
                    .map(move |d| (p.info.id.to_string(), d))
            })
            .collect()
    }
}
