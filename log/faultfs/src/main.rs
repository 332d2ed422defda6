//! `raftline-faultfs mount BACKING MOUNTPOINT --ctl SOCKET` serves the filesystem (prints `ready`
//! on stdout once mounted); `raftline-faultfs ctl SOCKET COMMAND...` sends it one command.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use raftline_faultfs::server::{self, ServeOptions};

#[derive(Parser)]
#[command(
    name = "raftline-faultfs",
    about = "A fault-injecting FUSE passthrough filesystem"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mirror BACKING at MOUNTPOINT until killed or unmounted.
    Mount {
        backing: PathBuf,
        mountpoint: PathBuf,
        /// The control socket to listen on.
        #[arg(long)]
        ctl: PathBuf,
        /// FUSE worker threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Let other users use the mount (allow_other).
        #[arg(long)]
        allow_other: bool,
    },
    /// Send one command to a mounted filesystem: power-cut [--torn [SEED]], flip PATH OFFSET BIT,
    /// fail-fsync N, enospc on|off, space BYTES|off, delay-fsync MS, freeze on|off,
    /// wait-frozen N [TIMEOUT_MS], lie-fsync on|off, stats, ping.
    Ctl {
        socket: PathBuf,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Mount {
            backing,
            mountpoint,
            ctl,
            threads,
            allow_other,
        } => {
            let opts = ServeOptions {
                threads,
                allow_other,
            };
            let (shared, session) = match server::mount(&backing, &mountpoint, &opts) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("raftline-faultfs: mounting {}: {e}", mountpoint.display());
                    return ExitCode::FAILURE;
                }
            };
            let _control = match server::serve_control(shared, &ctl) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("raftline-faultfs: control socket {}: {e}", ctl.display());
                    return ExitCode::FAILURE;
                }
            };
            println!("ready");
            let _ = std::io::stdout().flush();
            match session.run() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("raftline-faultfs: session: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Ctl { socket, command } => {
            match raftline_faultfs::control(&socket, &command.join(" ")) {
                Ok(reply) => {
                    println!("ok{}{reply}", if reply.is_empty() { "" } else { " " });
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("raftline-faultfs: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
