//! `seckill-loadgen`: parses the command line and hands over to the library.

use clap::Parser;

// The crowd shares the machine with what it measures: allocate cheaply.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = seckill_loadgen::cli::Cli::parse();
    match seckill_loadgen::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
