//! The real binaries: `mboard-server` as a child process, and runs of `mboard-client`.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The path of a workspace binary, built once per test process with the test's profile.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--workspace", "--bins", "--quiet"]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build --bins failed");
    });
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target profile dir");
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// What a run of `mboard-client` produced.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output, raw.
    pub stdout: Vec<u8>,
    /// Standard error, as text.
    pub stderr: String,
}

impl CliOutput {
    /// Standard output as text.
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs `mboard-client --server <server> <args>` with `stdin` as standard input.
pub fn cli(server: SocketAddr, args: &[&str], stdin: &[u8]) -> CliOutput {
    cli_at(&server.to_string(), args, stdin)
}

/// [`cli`] with `--server` as written (a list, a name).
pub fn cli_at(server: &str, args: &[&str], stdin: &[u8]) -> CliOutput {
    let mut child = Command::new(binary("mboard-client"))
        .arg("--server")
        .arg(server)
        .args(args)
        .env_remove("MBOARD_SERVER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mboard-client");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    // Written from a thread so that a large input cannot deadlock against the output pipes.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = child.wait_with_output().expect("wait for mboard-client");
    let _ = writer.join();
    CliOutput {
        code: out.status.code(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The real `mboard-server` binary, running as a child process.
pub struct ServerProcess {
    child: Child,
    /// Where it serves.
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl ServerProcess {
    /// Starts `mboard-server --listen 127.0.0.1:0 <args>` and waits until it serves; if it
    /// exits instead, returns its exit code and standard error.
    pub fn start(args: &[&str]) -> Result<ServerProcess, (Option<i32>, String)> {
        let mut child = Command::new(binary("mboard-server"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            // The log is parsed for addresses: plain text, whatever the terminal.
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mboard-server");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        // Keeps draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = addr_after(&line, "addr=") {
                    let _ = tx.send(addr);
                }
                let mut log = sink.lock().expect("log");
                log.push_str(&line);
                log.push('\n');
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => Ok(ServerProcess { child, addr, log }),
            Err(_) => {
                let status = child.wait().expect("wait");
                // Give the reader a moment to collect the last lines.
                std::thread::sleep(Duration::from_millis(100));
                let text = log.lock().expect("log").clone();
                Err((status.code(), text))
            }
        }
    }

    /// [`ServerProcess::start`], for a server that must start: panics with its exit code
    /// and log if it does not.
    pub fn must_start(args: &[&str]) -> ServerProcess {
        Self::start(args).unwrap_or_else(|(code, log)| panic!("exit {code:?}: {log}"))
    }

    /// Its resident memory in bytes, from `/proc` (Linux).
    pub fn resident_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    /// Where its metrics endpoint listens (started with `--metrics`), from its log.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = addr_after(&self.log(), "serving metrics addr=");
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything it has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// Kills it with SIGKILL: no chance to flush or clean up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it with SIGTERM and returns its exit code.
    pub fn stop(mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address logged right after `marker` in `text`, if any.
fn addr_after(text: &str, marker: &str) -> Option<SocketAddr> {
    text.split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}
