//! The subcommands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use node_host::{
    graph::InputValue,
    loader::{discover, search_dirs},
    schema_json::registry_json,
    validate::validate as validate_graph,
    CancelToken, Executor, Graph, Registry,
};

use crate::progress::Progress;

/// Loads the plugins, printing (not failing on) the ones that cannot be loaded.
pub fn load_registry(plugin_dirs: &[PathBuf], quiet: bool) -> Result<Registry> {
    let dirs = search_dirs(plugin_dirs);
    let (plugins, errors) = discover(&dirs);
    if !quiet {
        for e in &errors {
            eprintln!("warning: {e}");
        }
    }
    let registry = Registry::new(plugins);
    if !quiet {
        for c in &registry.conflicts {
            eprintln!("warning: {c}");
        }
    }
    if registry.plugins().is_empty() {
        let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        bail!(
            "no plugin found in {} (build the workspace with `cargo build --release`, or pass --plugin-dir / set NODEHOST_PLUGIN_PATH)",
            shown.join(", ")
        );
    }
    Ok(registry)
}

pub fn nodes(plugin_dirs: &[PathBuf], json: bool) -> Result<ExitCode> {
    let registry = load_registry(plugin_dirs, json)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&registry_json(&registry))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    for p in registry.plugins() {
        println!(
            "plugin {} {} (SDK {}) — {}",
            p.info.id, p.info.version, p.sdk, p.info.name
        );
    }
    let mut category = String::new();
    for class in registry.classes() {
        let d = &class.descriptor;
        if d.category.as_str() != category {
            category = d.category.to_string();
            println!("\n[{category}]");
        }
        let marker = if d.is_output { " (output)" } else { "" };
        println!("  {}{} — {}", d.class_type, marker, d.description);
        for i in d.inputs.iter() {
            let mut extra = Vec::new();
            if let Some(def) = i.default.as_ref().into_option() {
                extra.push(format!("default {}", literal_text(def)));
            }
            if let (Some(lo), Some(hi)) = (i.min.into_option(), i.max.into_option()) {
                extra.push(format!("{lo}..{hi}"));
            }
            if !i.choices.is_empty() {
                extra.push(
                    i.choices
                        .iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join("|"),
                );
            }
            let req = if i.required { "" } else { " optional" };
            println!(
                "    in  {:<22} {:<12}{req} {}",
                i.name,
                i.ty.name(),
                extra.join(", ")
            );
        }
        for (n, o) in d.outputs.iter().enumerate() {
            println!("    out {n}: {:<19} {}", o.name, o.ty.name());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn literal_text(l: &node_abi::Literal) -> String {
    match l {
        node_abi::Literal::Int(i) => i.to_string(),
        node_abi::Literal::Float(f) => f.to_string(),
        node_abi::Literal::String(s) => format!("{:?}", s.as_str()),
        node_abi::Literal::Boolean(b) => b.to_string(),
    }
}

pub fn validate(plugin_dirs: &[PathBuf], path: &Path) -> Result<ExitCode> {
    let registry = load_registry(plugin_dirs, false)?;
    let graph = Graph::load(path)?;
    let problems = validate_graph(&graph, &registry);
    if problems.is_empty() {
        println!("{}: ok ({} nodes)", path.display(), graph.nodes.len());
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}: {} problem(s)", path.display(), problems.len());
    for p in &problems {
        println!("  - {p}");
    }
    Ok(ExitCode::FAILURE)
}

/// Applies `ID.INPUT=VALUE` overrides; VALUE is parsed as JSON when it is JSON, else taken
/// as a string (so paths need no quoting).
fn apply_overrides(graph: &mut Graph, overrides: &[String]) -> Result<()> {
    for o in overrides {
        let (target, value) = o
            .split_once('=')
            .with_context(|| format!("--set {o}: expected ID.INPUT=VALUE"))?;
        let (id, input) = target
            .split_once('.')
            .with_context(|| format!("--set {o}: expected ID.INPUT before '='"))?;
        let node = graph
            .node_mut(id)
            .with_context(|| format!("--set {o}: the graph has no node {id}"))?;
        let json: serde_json::Value = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
        let value = match &json {
            serde_json::Value::Array(a) if a.len() == 2 && a[0].is_string() && a[1].is_u64() => {
                InputValue::Link {
                    node: a[0].as_str().unwrap_or_default().to_string(),
                    slot: a[1].as_u64().unwrap_or_default() as usize,
                }
            }
            _ => InputValue::Literal(json),
        };
        node.set_input(input, value);
    }
    Ok(())
}

pub fn run(
    plugin_dirs: &[PathBuf],
    path: &Path,
    overrides: &[String],
    plain: bool,
) -> Result<ExitCode> {
    let registry = Arc::new(load_registry(plugin_dirs, false)?);
    let mut graph = Graph::load(path)?;
    apply_overrides(&mut graph, overrides)?;

    let cancel = CancelToken::new();
    {
        let cancel = cancel.clone();
        ctrlc::set_handler(move || {
            if cancel.is_cancelled() {
                eprintln!("\ninterrupted twice: exiting now");
                std::process::exit(130);
            }
            eprintln!("\ncancelling… (press Ctrl-C again to exit at once)");
            cancel.cancel();
        })
        .context("cannot install the Ctrl-C handler")?;
    }

    let progress = Progress::new(plain);
    let mut executor = Executor::new(registry);
    let result = executor.run(&graph, &|e| progress.event(e), &cancel);
    progress.finish();
    match result {
        Ok(report) => {
            println!(
                "done in {:.1} s ({} node(s) ran, {} from cache)",
                report.elapsed.as_secs_f64(),
                report.executed.len(),
                report.cached.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.is_cancelled() => {
            eprintln!("{e}; no partial output was written");
            Ok(ExitCode::from(130))
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("running {}", path.display()))),
    }
}

pub fn doctor(plugin_dirs: &[PathBuf]) -> Result<ExitCode> {
    let dirs = search_dirs(plugin_dirs);
    println!("host SDK {}", node_abi::SDK_VERSION);
    println!(
        "plugin folders searched: {}",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (plugins, errors) = discover(&dirs);
    for e in &errors {
        println!("  [refused] {e}");
    }
    let registry = Registry::new(plugins);
    for p in registry.plugins() {
        let path = p
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        println!(
            "  [ok] plugin {} {} (SDK {}, {} nodes) at {path}",
            p.info.id,
            p.info.version,
            p.sdk,
            p.nodes.len()
        );
    }
    if registry.plugins().is_empty() {
        println!("  no plugin loaded");
    }
    let mut current = String::new();
    for (plugin, d) in registry.diagnostics() {
        if plugin != current {
            println!("{plugin}:");
            current = plugin;
        }
        let mark = if d.available { "ok" } else { "no" };
        println!("  [{mark}] {}: {}", d.subject, d.detail);
    }
    Ok(ExitCode::SUCCESS)
}
