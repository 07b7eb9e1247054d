//! The `syncpool` command; everything it does is in the library (`syncpool::cli`).

use clap::Parser;
use syncpool::cli::{Cli, CliError, printable};

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,syncpool=info")),
        )
        .init();
    syncpool::metrics::install();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(syncpool::cli::run(cli)) {
        // Error texts quote names and servers' messages, which may hold terminal controls.
        match &e {
            CliError::Usage(msg) => eprintln!("error: {}", printable(msg)),
            CliError::Runtime(err) => eprintln!("error: {}", printable(&format!("{err:#}"))),
            CliError::Unsuccessful { .. } | CliError::TimedOut { .. } => eprintln!("{e}"),
        }
        std::process::exit(e.exit_code());
    }
}
