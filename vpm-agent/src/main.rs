//! The `vpm` command: parses, calls the library, prints.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = <cli::Cli as clap::Parser>::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .format_target(false)
        .init();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`vpm plan | head`): nothing more to say.
        Err(err) if broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // The whole chain: what failed, then why (a cause the message
            // already quotes is not repeated).
            let mut said = err.to_string();
            eprintln!("vpm: error: {said}");
            for cause in err.chain().skip(1) {
                let text = cause.to_string();
                if !said.contains(&text) {
                    eprintln!("  caused by: {text}");
                }
                said.push_str(&text);
            }
            ExitCode::from(2)
        }
    }
}

/// Whether `err` is a write to stdout after its reader closed it (not a
/// broken socket to the agent or a VM's monitor: those are errors).
fn broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<cli::output::StdoutError>()
            .is_some_and(|e| e.0.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
