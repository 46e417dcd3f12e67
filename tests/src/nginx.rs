//! A real nginx UDP load balancer in front of several mboard servers, as
//! `scripts/cluster.sh` runs it: `hash $remote_addr$remote_port consistent`, so that one
//! client socket sticks to one server.
//!
//! A missing nginx or stream module fails the test saying how to install them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's `libnginx-mod-stream` puts the module.
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

fn nginx() -> PathBuf {
    let found = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    match found {
        Some(nginx) if Path::new(STREAM_MODULE).is_file() => nginx,
        _ => panic!(
            "nginx with its stream module is not installed: the load-balancer test needs it \
             (scripts/test.sh installs it: apt-get install nginx libnginx-mod-stream)"
        ),
    }
}

/// The configuration of a UDP balancer on `listen` over `servers`, keeping its files in
/// `dir`.
pub fn config(listen: SocketAddr, servers: &[SocketAddr], dir: &Path) -> String {
    let upstreams: String = servers
        .iter()
        .map(|s| format!("        server {s};\n"))
        .collect();
    format!(
        "load_module {STREAM_MODULE};\n\
         daemon off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         stream {{\n    upstream mboard {{\n        hash $remote_addr$remote_port consistent;\n{upstreams}    }}\n\
         \x20   server {{\n        listen {listen} udp;\n        proxy_pass mboard;\n        proxy_timeout 30s;\n    }}\n}}\n",
        dir = dir.display()
    )
}

/// A running nginx, stopped when dropped.
pub struct Nginx {
    child: Child,
    /// Where clients send to.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts a balancer on a free loopback port over `servers`.
    pub fn start(servers: &[SocketAddr]) -> Nginx {
        let nginx = nginx();
        let dir = tempfile::Builder::new()
            .prefix("mboard-nginx-")
            .tempdir()
            .expect("temp dir");
        let addr = crate::vacant_addr();
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, config(addr, servers, dir.path())).expect("nginx config");
        let child = Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("nginx.log"))
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        // nginx writes its pid file once it listens.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dir.path().join("nginx.pid").exists() {
            let log = std::fs::read_to_string(dir.path().join("nginx.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "nginx did not start: {log}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGKILL also ends its workers: they watch their parent and exit with it.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
