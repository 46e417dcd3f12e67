//! `mboard-client`: publish to and read from an mboard server (see `mboard_client::cli`).

fn main() -> std::process::ExitCode {
    mboard_client::cli::main()
}
