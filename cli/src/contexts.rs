//! `diplo context ls|use|add`: several named control planes in one config file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use diplo_api::context::{CliContext, ContextFile};

use crate::output::Format;

/// `diplo context` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ContextCommand {
    /// List the contexts (the current one marked).
    Ls,
    /// Make a context the current one.
    Use {
        /// Context name.
        name: String,
    },
    /// Record a context: from an existing cli.toml (`--from`), or from its parts.
    Add(AddArgs),
}

/// What `diplo context add` records.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Context name (letters, digits, '-', '_', '.').
    pub name: String,
    /// Copy an existing context file (e.g. a control plane's cli.toml).
    #[arg(long, conflicts_with_all = ["server", "ca", "cert", "key"])]
    pub from: Option<PathBuf>,
    /// gRPC endpoint, https://HOST:PORT.
    #[arg(long, required_unless_present = "from")]
    pub server: Option<String>,
    /// REST gateway, http(s)://HOST:PORT.
    #[arg(long)]
    pub rest: Option<String>,
    /// PEM CA certificate of the cluster.
    #[arg(long, required_unless_present = "from")]
    pub ca: Option<PathBuf>,
    /// PEM operator certificate.
    #[arg(long, required_unless_present = "from")]
    pub cert: Option<PathBuf>,
    /// PEM operator key.
    #[arg(long, required_unless_present = "from")]
    pub key: Option<PathBuf>,
    /// File holding a REST bearer token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Make it the current context too.
    #[arg(long = "use")]
    pub make_current: bool,
}

/// An absolute form of `path` (relative paths are taken from `base`), so that a context
/// works from any directory.
fn absolute(path: &Path, base: &Path) -> PathBuf {
    if path.as_os_str().is_empty() || path.is_absolute() { path.to_owned() } else { base.join(path) }
}

/// The context `args` describe.
fn context_of(args: &AddArgs) -> Result<CliContext> {
    if let Some(from) = &args.from {
        let file = ContextFile::load(from)?;
        let (_, context) = file.select(None, from)?;
        let base = from.parent().map(Path::to_owned).unwrap_or_default();
        let base = std::fs::canonicalize(&base).unwrap_or(base);
        return Ok(CliContext {
            ca: absolute(&context.ca, &base),
            cert: absolute(&context.cert, &base),
            key: absolute(&context.key, &base),
            token_file: absolute(&context.token_file, &base),
            ..context
        });
    }
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let path = |p: &Option<PathBuf>| absolute(p.as_deref().unwrap_or(Path::new("")), &cwd);
    let server = args.server.clone().unwrap_or_default();
    if !server.starts_with("https://") {
        bail!("invalid --server {server:?}: expected https://HOST:PORT");
    }
    Ok(CliContext {
        server,
        rest: args.rest.clone().unwrap_or_default(),
        ca: path(&args.ca),
        cert: path(&args.cert),
        key: path(&args.key),
        token_file: path(&args.token_file),
    })
}

/// Runs one `context` subcommand on the config file at `path` (created by `add` when
/// missing; a single-context file is kept readable and becomes context `default`).
pub fn run(path: &Path, command: ContextCommand, format: Format) -> Result<()> {
    let load =
        || ContextFile::load(path).with_context(|| format!("no contexts yet in {}: add one with `diplo context add`", path.display()));
    match command {
        ContextCommand::Ls => {
            let file = load()?;
            let list: Vec<serde_json::Value> = file
                .contexts
                .iter()
                .map(|(name, c)| {
                    serde_json::json!({"name": name, "current": file.current.as_deref() == Some(name), "server": c.server, "rest": c.rest})
                })
                .collect();
            crate::output::print(format, &serde_json::Value::Array(list), || {
                let rows = file.contexts.iter().map(|(name, c)| {
                    let current = if file.current.as_deref() == Some(name) { "*" } else { "" };
                    [current.to_owned(), name.clone(), c.server.clone(), c.rest.clone()]
                });
                crate::output::table(["CURRENT", "NAME", "SERVER", "REST"], rows)
            })?;
        }
        ContextCommand::Use { name } => {
            let mut file = load()?;
            file.use_context(&name, path)?;
            file.save(path)?;
            println!("current context: {name}");
        }
        ContextCommand::Add(args) => {
            let context = context_of(&args)?;
            let mut file = if path.is_file() { ContextFile::load(path)? } else { ContextFile::default() };
            file.add(&args.name, context)?;
            if args.make_current {
                file.use_context(&args.name, path)?;
            }
            file.save(path)?;
            println!("context {} added to {}", args.name, path.display());
        }
    }
    Ok(())
}
