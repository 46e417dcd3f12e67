//! The real binaries: `mboard-server` as a child process, and runs of `mboard-client`.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
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
        Self::start_with_env(args, &[])
    }

    /// [`ServerProcess::must_start`] on `addr`: a restart where the server was, so that
    /// clients (and proxies) in front of it find it again.
    pub fn must_start_on(addr: SocketAddr, args: &[&str]) -> ServerProcess {
        Self::start_listening(&addr.to_string(), args, &[])
            .unwrap_or_else(|(code, log)| panic!("exit {code:?}: {log}"))
    }

    /// [`ServerProcess::start`] with these environment variables; any other `MBOARD_…`
    /// variable of the test's own environment is left out.
    pub fn start_with_env(
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<ServerProcess, (Option<i32>, String)> {
        Self::start_listening("127.0.0.1:0", args, env)
    }

    fn start_listening(
        listen: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<ServerProcess, (Option<i32>, String)> {
        let mut command = Command::new(binary("mboard-server"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("MBOARD_") {
                command.env_remove(name);
            }
        }
        command
            .args(["--listen", listen])
            .args(args)
            .envs(env.iter().copied());
        Self::start_command(command)
    }

    /// [`ServerProcess::start`] for a command of the caller's making (environment variables,
    /// a shell that sets limits and `exec`s the server), which must pass `--listen` itself.
    pub fn start_command(mut cmd: Command) -> Result<ServerProcess, (Option<i32>, String)> {
        let mut child = cmd
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

    /// Waits up to `timeout` for its log to contain `text`; returns the log either way.
    pub fn log_until(&self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(text) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends it SIGTERM without waiting for it to exit.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Waits up to `timeout` for it to exit: `Some(code)` if it did.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends it a signal by name (`HUP`, `TERM`, …).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.child.id());
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
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

/// A long-running `mboard-client` (`follow`), whose output is read line by line as it
/// comes; killed on drop if still running.
pub struct CliProcess {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl CliProcess {
    /// Starts `mboard-client --server <server> <args>`.
    pub fn start(server: SocketAddr, args: &[&str]) -> CliProcess {
        Self::start_at(&server.to_string(), args)
    }

    /// Starts `mboard-client --server <servers> <args>`: a list, `a,b,c`, say.
    pub fn start_at(servers: &str, args: &[&str]) -> CliProcess {
        let mut child = Command::new(binary("mboard-client"))
            .arg("--server")
            .arg(servers)
            .args(args)
            .env_remove("MBOARD_SERVER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mboard-client");
        let mut out = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(&mut out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err = child.stderr.take().expect("stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut text = sink.lock().expect("stderr");
                text.push_str(&line);
                text.push('\n');
            }
        });
        CliProcess {
            child,
            lines,
            stderr,
        }
    }

    /// The next line of its standard output, if one comes within `timeout`.
    pub fn line_within(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// The next `n` lines, each within `timeout` of the one before; panics with what came
    /// and its standard error if they do not.
    pub fn lines(&self, n: usize, timeout: Duration) -> Vec<String> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match self.line_within(timeout) {
                Some(line) => got.push(line),
                None => panic!(
                    "{} of {n} lines within {timeout:?} each: {got:#?}\nstderr: {}",
                    got.len(),
                    self.stderr()
                ),
            }
        }
        got
    }

    /// Its standard error so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr").clone()
    }

    /// Waits until its standard error contains `text`, for up to `timeout`.
    pub fn stderr_has(&self, text: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stderr().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stderr().contains(text)
    }

    /// Sends it SIGINT (Ctrl+C).
    pub fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -INT {} failed", self.child.id());
    }

    /// Its exit code, if it exits within `timeout` (`None` also if killed by a signal).
    pub fn exit_within(&mut self, timeout: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for CliProcess {
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
