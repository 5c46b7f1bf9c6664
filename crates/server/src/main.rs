//! `keygate`: the key service (`keygate serve`) and its CLI (`keygate keys ...`).

use std::process::ExitCode;

use clap::Parser;
use keygate_server::cli::{
    run_audit, run_blocks, run_keys, run_pools, run_roles, run_sign, run_signing_keys, Cli, Command,
};
use keygate_server::config::ServeConfig;
use keygate_server::serve;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => run_serve(args),
        Command::Keys(args) => run_keys(args),
        Command::SigningKeys(args) => run_signing_keys(args),
        Command::Audit(args) => run_audit(args),
        Command::Roles(args) => run_roles(args),
        Command::Blocks(args) => run_blocks(args),
        Command::Pools(args) => run_pools(args),
        Command::Sign(args) => run_sign(args),
        Command::Webhooks(args) => keygate_server::cli::run_webhooks(args),
    }
}

fn run_serve(args: keygate_server::config::ServeArgs) -> ExitCode {
    let filter = EnvFilter::try_from_env("KEYGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let config = match ServeConfig::from_args(args, |name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(error = %error, "invalid configuration");
            eprintln!("keygate: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("keygate: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "key service stopped");
            eprintln!("keygate: {error}");
            ExitCode::FAILURE
        }
    }
}
