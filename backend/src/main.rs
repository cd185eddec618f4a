//! `seckill-backend`: parses the command line and hands over to the library.

use clap::Parser;

// Every buy allocates (the request, its JSON, the order message, the
// broker's frames); glibc's allocator spent a fifth of the buy path's
// instructions (callgrind), mimalloc a fraction of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = seckill_backend::cli::Cli::parse();
    match seckill_backend::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
