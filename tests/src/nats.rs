//! Real `nats-server` processes for the clustered store's tests: one node or a cluster on
//! loopback, random ports, a temp store dir each, killed when dropped.
//!
//! A missing `nats-server` fails the test with a message saying how to install it: these
//! tests never skip.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `nats-server` binary: on PATH, or in /usr/sbin where Debian puts it.
fn nats_server() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "nats-server is not installed: the clustered store's tests need it \
             (scripts/test.sh installs it: apt-get install nats-server)"
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

struct Node {
    name: String,
    client_port: u16,
    route_port: u16,
    child: Option<Child>,
    /// Whether it has run: its ports are then in the others' configurations and clients'.
    started: bool,
}

/// A NATS cluster (or one node) with JetStream, on loopback.
pub struct NatsCluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    /// Extra lines for every node's configuration (authorization, say).
    extra: String,
}

impl NatsCluster {
    /// `n` nodes (1: no cluster block), started and listening.
    pub fn start(n: usize) -> Self {
        Self::start_with(n, "")
    }

    /// [`NatsCluster::start`] with `extra` configuration lines on every node.
    pub fn start_with(n: usize, extra: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("mboard-nats-")
            .tempdir()
            .expect("temp dir");
        let nodes = (1..=n)
            .map(|i| Node {
                name: format!("n{i}"),
                client_port: free_port(),
                route_port: free_port(),
                child: None,
                started: false,
            })
            .collect();
        let mut cluster = NatsCluster {
            dir,
            nodes,
            extra: extra.to_owned(),
        };
        for i in 0..n {
            cluster.start_node(i);
        }
        cluster
    }

    fn config(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let store = self.dir.path().join(&node.name).join("js");
        let mut config = format!(
            "server_name: {}\nserver_tags: [\"node:{}\"]\nlisten: \"127.0.0.1:{}\"\nmax_payload: 17MB\n\
             jetstream {{ store_dir: \"{}\", max_memory_store: 256MB, max_file_store: 4GB }}\n{}\n",
            node.name,
            node.name,
            node.client_port,
            store.display(),
            self.extra,
        );
        if self.nodes.len() > 1 {
            let routes: Vec<String> = self
                .nodes
                .iter()
                .map(|n| format!("\"nats-route://127.0.0.1:{}\"", n.route_port))
                .collect();
            config.push_str(&format!(
                "cluster {{ name: mboard-test, listen: \"127.0.0.1:{}\", routes: [{}] }}\n",
                node.route_port,
                routes.join(", ")
            ));
        }
        config
    }

    /// Starts node `i` (again, after [`NatsCluster::kill`]: same ports, same store). A port
    /// taken by someone else between choosing it and binding it is chosen again on a first
    /// start (the other nodes still find this one: NATS gossips routes).
    pub fn start_node(&mut self, i: usize) {
        for _attempt in 0..5 {
            match self.try_start_node(i) {
                Ok(()) => {
                    self.nodes[i].started = true;
                    return;
                }
                Err(log) if !self.nodes[i].started && log.contains("address already in use") => {
                    self.nodes[i].client_port = free_port();
                    self.nodes[i].route_port = free_port();
                }
                Err(log) => panic!("nats-server {i} did not listen: {log}"),
            }
        }
        panic!("nats-server {i} found no free ports: {}", self.log(i));
    }

    fn try_start_node(&mut self, i: usize) -> Result<(), String> {
        let path = self.dir.path().join(format!("{}.conf", self.nodes[i].name));
        std::fs::write(&path, self.config(i)).expect("write nats config");
        let log =
            std::fs::File::create(self.dir.path().join(format!("{}.log", self.nodes[i].name)))
                .expect("nats log");
        let mut child = Command::new(nats_server())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        let port = self.nodes[i].client_port;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(self.log(i));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Node `i`'s URL.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// Every node's URL, comma-separated (what `--nats` takes).
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.nodes[i].name)))
            .unwrap_or_default()
    }

    /// The index of the node named `name` (`n1` is 0).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

impl NatsCluster {
    /// The name of stream `stream`'s leader node, asked over the NATS protocol itself
    /// (`$JS.API.STREAM.INFO`), through node `via`.
    pub fn stream_leader(&self, via: usize, stream: &str) -> Option<String> {
        let body = self.request(via, &format!("$JS.API.STREAM.INFO.{stream}"), "")?;
        let leader = body.split("\"leader\":\"").nth(1)?;
        Some(leader.split('"').next()?.to_owned())
    }

    /// Publishes `payload` on `subject` through node `via` and returns the reply's body
    /// (a JetStream API request, or a publish into a stream, whose reply is its
    /// acknowledgement), over the NATS protocol itself.
    pub fn request(&self, via: usize, subject: &str, payload: &str) -> Option<String> {
        use std::io::{BufRead, BufReader, Read, Write};
        let mut tcp =
            std::net::TcpStream::connect(("127.0.0.1", self.nodes[via].client_port)).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let mut reader = BufReader::new(tcp.try_clone().ok()?);
        let mut line = String::new();
        reader.read_line(&mut line).ok()?; // INFO
        let request = format!(
            "CONNECT {{\"verbose\":false,\"headers\":true}}\r\nSUB _INBOX.test 1\r\nPUB {subject} _INBOX.test {}\r\n{payload}\r\n",
            payload.len()
        );
        tcp.write_all(request.as_bytes()).ok()?;
        loop {
            line.clear();
            reader.read_line(&mut line).ok()?;
            if line.starts_with("PING") {
                tcp.write_all(b"PONG\r\n").ok()?;
            } else if let Some(rest) = line.strip_prefix("MSG ") {
                let len: usize = rest.split_whitespace().last()?.parse().ok()?;
                let mut body = vec![0; len + 2];
                reader.read_exact(&mut body).ok()?;
                body.truncate(len);
                return String::from_utf8(body).ok();
            } else if line.is_empty() {
                return None;
            }
        }
    }
}
