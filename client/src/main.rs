//! `mboard-client`: publish to and read from an mboard server (see `mboard_client::run_cli`).

fn main() -> std::process::ExitCode {
    mboard_client::run_cli()
}
