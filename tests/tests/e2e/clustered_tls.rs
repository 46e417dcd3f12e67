//! The clustered store's connection to NATS over TLS, against a real `nats-server` with a
//! certificate made for the test: the CA given with `--nats-ca`, a client certificate with
//! `--nats-cert`/`--nats-key` for a NATS server that verifies clients, and refusals in one
//! line when the certificate is not trusted or the client has none.

use mboard_tests::certs::Certificates;
use mboard_tests::nats::NatsCluster;
use mboard_tests::{Peer, ServerProcess, gate};

use crate::clustered::id_of;

/// The last line of a server that failed to start, which must say why.
fn refused(args: &[&str]) -> String {
    match ServerProcess::start(args) {
        Ok(_) => panic!("started with {args:?}"),
        Err((code, log)) => {
            assert_eq!(code, Some(1), "{log}");
            let last = log.lines().last().unwrap_or_default().to_owned();
            assert!(last.starts_with("error: "), "{log}");
            last
        }
    }
}

#[test]
fn nats_over_tls_with_the_ca_given() {
    let _gate = gate::plain();
    let certs = Certificates::generate();
    let nats = NatsCluster::start_with(1, &certs.nats_block(false));
    let urls = nats.urls();
    let ca = certs.ca();
    let ca = ca.to_str().expect("utf-8 path");
    let server = ServerProcess::must_start(&["--nats", &urls, "--nats-ca", ca]);
    let p = Peer::new(server.addr);
    assert_eq!(id_of(&p.ask_str("1:over tls")), 1);
    assert!(p.ask_str("3:1").ends_with(":over tls"));
    // The same through the config file, as every option can be.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("mboard.toml");
    std::fs::write(&file, format!("nats = \"{urls}\"\nnats-ca = \"{ca}\"\n")).expect("write");
    let from_file = ServerProcess::must_start(&["--config", file.to_str().expect("utf-8")]);
    assert_eq!(
        Peer::new(from_file.addr).ask_str("3:1"),
        p.ask_str("3:1"),
        "the same board"
    );
    // Without the CA, the NATS server's certificate is not trusted: start-up says so.
    let line = refused(&["--nats", &urls, "--nats-connect-timeout", "3s"]);
    assert!(line.contains("cannot connect to NATS"), "{line}");
}

#[test]
fn a_nats_server_that_verifies_clients_takes_the_client_certificate() {
    let _gate = gate::plain();
    let certs = Certificates::generate();
    let nats = NatsCluster::start_with(1, &certs.nats_block(true));
    let urls = nats.urls();
    let (ca, (cert, key)) = (certs.ca(), certs.client());
    let path = |p: &std::path::Path| p.to_str().expect("utf-8 path").to_owned();
    let (ca, cert, key) = (path(&ca), path(&cert), path(&key));
    let server = ServerProcess::must_start(&[
        "--nats",
        &urls,
        "--nats-ca",
        &ca,
        "--nats-cert",
        &cert,
        "--nats-key",
        &key,
    ]);
    assert_eq!(
        id_of(&Peer::new(server.addr).ask_str("1:with a client certificate")),
        1
    );
    let line = refused(&[
        "--nats",
        &urls,
        "--nats-ca",
        &ca,
        "--nats-connect-timeout",
        "3s",
    ]);
    assert!(line.contains("cannot connect to NATS"), "{line}");
    let line = refused(&["--nats", &urls, "--nats-cert", &cert]);
    assert!(line.contains("--nats-cert needs --nats-key"), "{line}");
}
