//! `seckill-chaos`: parses the command line and hands over to the library.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let opts = seckill_chaos::cli::Options::parse();
    seckill_chaos::telemetry::init();
    match seckill_chaos::campaign::run(opts).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(3)
        }
    }
}
