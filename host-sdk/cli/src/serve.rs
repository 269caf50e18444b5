//! `nodehost serve`: the graph editor and its API (the `node-server` crate).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Args;
use node_server::Folders;

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on. Anything but a loopback address needs --allow-remote.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8188)]
    port: u16,
    /// Allow listening on a non-loopback address (anyone who reaches it can run graphs).
    #[arg(long)]
    allow_remote: bool,
    /// Folder that file inputs (e.g. LoadReference.path) are chosen from; must be inside the working folder.
    #[arg(long, default_value = "input")]
    input_dir: PathBuf,
    /// Folder that outputs (e.g. SaveVideo.folder) are written under; must be inside the working folder.
    #[arg(long, default_value = "output")]
    output_dir: PathBuf,
    /// Folder of the named graphs the editor lists, opens and saves.
    #[arg(long, default_value = "graphs")]
    graphs_dir: PathBuf,
    /// Jobs that may wait in the queue (one runs at a time).
    #[arg(long, default_value_t = 16)]
    queue: usize,
    /// Largest request body accepted, in KiB.
    #[arg(long, default_value_t = 1024)]
    max_body_kib: usize,
}

pub fn serve(plugin_dirs: &[PathBuf], args: &ServeArgs) -> Result<ExitCode> {
    if !args.host.is_loopback() {
        if !args.allow_remote {
            bail!(
                "refusing to listen on {}: the editor runs graphs and writes files for anyone who reaches it; pass --allow-remote to do it anyway",
                args.host
            );
        }
        eprintln!(
            "warning: listening on {} (not loopback): anyone who can reach this address can run graphs and read outputs; there is no authentication",
            args.host
        );
    }
    let registry = Arc::new(crate::commands::load_registry(plugin_dirs, false)?);
    let folders = Folders::new(
        &std::env::current_dir()?,
        &args.input_dir,
        &args.output_dir,
        &args.graphs_dir,
    )?;
    let shown = format!(
        "inputs from {}, outputs to {}, graphs in {}",
        folders.shown(&folders.input),
        folders.shown(&folders.output),
        folders.shown(&folders.graphs)
    );
    let state = node_server::start(registry, folders, args.queue, args.host.is_loopback());
    node_server::serve(
        state,
        SocketAddr::new(args.host, args.port),
        args.max_body_kib.saturating_mul(1024),
        |addr| {
            // The e2e test reads the URL from this line.
            println!("nodehost editor: http://{addr}/ ({shown}); Ctrl-C stops it");
        },
    )?;
    Ok(ExitCode::SUCCESS)
}
