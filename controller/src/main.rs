//! `pifleet`: parse flags, call the library, exit with its code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = pifleet_controller::cli::Cli::parse();
    pifleet_client::logging::init("warn");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    ExitCode::from(runtime.block_on(pifleet_controller::run(cli)))
}
