//! `nodehost`: the reference host. Thin: parsing and printing live here, everything else in
//! `node-host`.

mod commands;
mod progress;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "nodehost",
    version,
    about = "Reference host for node plugins: list nodes, validate and run saved graphs, serve the graph editor."
)]
struct Cli {
    /// Folder to load plugins from (repeatable). Default: $NODEHOST_PLUGIN_PATH and the folder of this executable.
    #[arg(long = "plugin-dir", global = true)]
    plugin_dirs: Vec<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the nodes of every loaded plugin and their inputs and outputs.
    Nodes {
        /// Print the schemas as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a saved graph and print every problem (exit 1 when there is any).
    Validate { graph: PathBuf },
    /// Run a saved graph.
    Run {
        graph: PathBuf,
        /// Override an input without editing the file: ID.INPUT=VALUE (VALUE is JSON, or a plain string).
        #[arg(long = "set", value_name = "ID.INPUT=VALUE")]
        set: Vec<String>,
        /// Print events as lines instead of progress bars.
        #[arg(long)]
        plain: bool,
    },
    /// Report what this machine offers: plugins, ONNX Runtime, CUDA.
    Doctor,
    /// Serve the graph editor and its API (http://127.0.0.1:8188/ by default).
    Serve(serve::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Nodes { json } => commands::nodes(&cli.plugin_dirs, json),
        Command::Validate { graph } => commands::validate(&cli.plugin_dirs, &graph),
        Command::Run { graph, set, plain } => commands::run(&cli.plugin_dirs, &graph, &set, plain),
        Command::Doctor => commands::doctor(&cli.plugin_dirs),
        Command::Serve(args) => serve::serve(&cli.plugin_dirs, &args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
