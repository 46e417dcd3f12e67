use std::ffi::OsString;
use std::io::Write;

use clap::{CommandFactory, FromArgMatches, Parser};
use mboard_server::{JournalConfig, MEMORY_RETAIN_BYTES, Shedding};

use super::*;
use crate::cli::args::*;
use crate::cli::{self, RELOADED};

/// The options an operator sets: not `--help`, `--version` or the packagers' flags.
fn options() -> Vec<clap::Arg> {
    Args::command()
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version"))
        .cloned()
        .collect()
}

#[test]
fn every_option_has_its_environment_variable() {
    for arg in options() {
        let long = arg.get_long().expect("every option has a long name");
        let expected = format!("MBOARD_{}", long.to_uppercase().replace('-', "_"));
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some(expected.as_str()),
            "--{long} needs `env = \"{expected}\"`"
        );
    }
}

#[test]
fn every_option_with_a_default_can_be_written_in_the_config_file() {
    // Each option set to its own default, by its long name, in one file.
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    for arg in options() {
        let long = arg.get_long().expect("long name");
        if let Some(default) = arg.get_default_values().first() {
            let default = default.to_str().expect("utf-8");
            if arg.get_action().takes_values() {
                writeln!(file, "{long} = {default:?}").expect("write");
            } else {
                writeln!(file, "{long} = {default}").expect("write");
            }
        }
    }
    let argv = vec![OsString::from("mboard-server")];
    let options = cli::Options::try_from_args(Args::command(), argv)
        .expect("command line")
        .with_file(Some(file.path()))
        .expect("every default is accepted in the file");
    let args = Args::from_arg_matches(options.matches()).expect("args");
    let defaults = Args::try_parse_from(["mboard-server"]).expect("defaults");
    assert_eq!(
        format!("{:?}", config(&args)),
        format!("{:?}", config(&defaults))
    );
}

#[test]
fn the_options_under_the_reload_heading_are_the_ones_a_reload_changes() {
    let heading = |a: &clap::Arg| a.get_help_heading() == Some(RELOADED);
    let reloaded: Vec<_> = options().into_iter().filter(heading).collect();
    assert!(reloaded.len() >= 9, "{reloaded:?}");
    let base = Args::try_parse_from(["mboard-server", "--in-memory"]).expect("parse");
    for arg in reloaded {
        let long = format!("--{}", arg.get_long().expect("long"));
        let value = match arg.get_id().as_str() {
            "log_level" => "debug",
            "retain_age" => "5s",
            _ => "5",
        };
        let args =
            Args::try_parse_from(["mboard-server", "--in-memory", &long, value]).expect("parse");
        let changed = config(&args).reloadable() != config(&base).reloadable()
            || args.log_level != base.log_level;
        assert!(changed, "{long} {value} changes nothing a reload applies");
    }
}

#[test]
fn nats_options_select_the_clustered_store() {
    let args = Args::try_parse_from([
        "mboard-server",
        "--nats",
        "nats://127.0.0.1:4222,nats://127.0.0.1:4223",
        "--nats-replicas",
        "3",
        "--nats-user",
        "mboard",
        "--nats-password",
        "s3cret",
    ])
    .expect("parse");
    let config = config(&args);
    assert_eq!(
        config.retention.bytes,
        Some(MEMORY_RETAIN_BYTES),
        "replica in memory"
    );
    let Store::Clustered(cluster) = config.store else {
        panic!("clustered")
    };
    assert_eq!(cluster.servers.len(), 2);
    assert_eq!((cluster.stream.as_str(), cluster.replicas), ("mboard", 3));
    assert!(matches!(
        cluster.auth,
        mboard_server::NatsAuth::UserPassword { .. }
    ));
    assert!(
        !format!("{cluster:?}").contains("s3cret"),
        "secrets stay out of logs"
    );
    for lacking in [
        &["--nats-token", "t"][..],
        &["--nats", "nats://x", "--nats-user", "u"],
        &["--nats", "nats://x", "--nats-key", "k.pem"],
    ] {
        let argv = ["mboard-server"].iter().chain(lacking).copied();
        let args = Args::try_parse_from(argv).expect("parse");
        let e = cli::one_line(&checked_config(&args).expect_err("refused"));
        assert!(e.contains(" needs --nats"), "{lacking:?}: {e}");
    }
    for bad in [
        &["--nats", "nats://x", "--in-memory"][..],
        &["--nats", "nats://x", "--data-dir", "d"],
        &[
            "--nats",
            "nats://x",
            "--nats-token",
            "t",
            "--nats-user",
            "u",
            "--nats-password",
            "p",
        ],
    ] {
        let argv = ["mboard-server"].iter().chain(bad).copied();
        assert!(Args::try_parse_from(argv).is_err(), "{bad:?}");
    }
    let bad = Args::try_parse_from([
        "mboard-server",
        "--nats",
        "nats://x",
        "--nats-stream",
        "a.b",
    ])
    .expect("parse");
    assert!(
        super::config(&bad).validate().is_err(),
        "a dotted stream name"
    );
}

#[test]
fn nats_options_come_from_the_config_file_too_and_secrets_are_not_logged() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    writeln!(
        file,
        "nats = [\"nats://127.0.0.1:4222\", \"nats://127.0.0.1:4223\"]\n\
         nats-stream = \"board\"\nnats-token = \"t0ken-in-file\"\n\
         nats-ca = \"/etc/mboard/nats-ca.pem\"\nnats-timeout = \"1s\""
    )
    .expect("write");
    let argv = vec![OsString::from("mboard-server")];
    let options = cli::Options::try_from_args(Args::command(), argv)
        .expect("command line")
        .with_file(Some(file.path()))
        .expect("accepted");
    let args = Args::from_arg_matches(options.matches()).expect("args");
    let Store::Clustered(cluster) = config(&args).store else {
        panic!("the file selects the clustered store")
    };
    assert_eq!(cluster.servers.len(), 2);
    assert_eq!(cluster.stream, "board");
    assert_eq!(cluster.timeout, std::time::Duration::from_secs(1));
    assert!(cluster.tls.ca.is_some());
    let line = options.describe();
    assert!(line.contains("nats-stream=board"), "{line}");
    assert!(!line.contains("t0ken-in-file"), "{line}");
    assert!(line.contains("nats-token=(hidden)"), "{line}");
}

#[test]
fn unworkable_options_are_refused_before_anything_starts() {
    let refused = |extra: &[&str]| {
        let argv = [&["mboard-server", "--in-memory"], extra].concat();
        let args = Args::try_parse_from(argv).expect("parse");
        cli::one_line(&checked_config(&args).expect_err("refused"))
    };
    assert_eq!(
        refused(&["--rate-sources", "0"]),
        "invalid configuration: rate sources must be at least 1"
    );
    assert_eq!(
        refused(&["--workers", "0"]),
        "invalid configuration: workers must be at least 1"
    );
    assert_eq!(
        refused(&["--io-batch", "0"]),
        "invalid configuration: io batch must be from 1 to 256, not 0"
    );
    assert_eq!(
        refused(&["--io-batch", "257"]),
        "invalid configuration: io batch must be from 1 to 256, not 257"
    );
    assert!(refused(&["--max-session-memory", "100"]).contains("twice max datagram"));
    assert_eq!(
        refused(&["--rate-burst", "0.5"]),
        "invalid configuration: rate burst must be a number of at least 1 while its rate is above 0, not 0.5"
    );
    assert_eq!(
        refused(&["--error-reply-rate", "NaN"]),
        "invalid configuration: error reply rate must be a number of at least 0 (0 turns it off), not NaN"
    );
    let bad_filter = Args::try_parse_from(["mboard-server", "--log-level", "x=y=z"]);
    assert!(
        bad_filter.is_err(),
        "a bad log filter is refused while parsing"
    );
}

#[test]
fn no_options_means_the_library_defaults() {
    Args::command().debug_assert();
    let args = Args::try_parse_from(["mboard-server", "--in-memory"]).expect("parse");
    let config = config(&args);
    let defaults = Config::default();
    assert_eq!(config.limits, defaults.limits);
    assert_eq!(config.rate_limit, defaults.rate_limit);
    assert_eq!(config.error_limit, defaults.error_limit);
    assert_eq!(config.workers, defaults.workers);
    assert_eq!(config.io_batch, mboard_server::IO_BATCH);
    assert_eq!(args.recv_buffer, RECV_BUFFER);
    assert_eq!(config.retention, defaults.retention, "memory keeps 256 MiB");
    let durable = Args::try_parse_from(["mboard-server"]).expect("parse");
    let durable = super::config(&durable);
    assert_eq!(
        durable.retention,
        Retention::UNLIMITED,
        "the journal keeps all"
    );
    let Store::Journal(journal) = durable.store else {
        panic!("durable by default")
    };
    assert_eq!(journal, JournalConfig::new("mboard-data".into()));
}

#[test]
fn the_receive_buffer_is_an_option() {
    let args = Args::try_parse_from(["mboard-server", "--in-memory", "--recv-buffer", "0"])
        .expect("parse");
    assert_eq!(args.recv_buffer, 0, "0 keeps the system's default");
    assert!(
        Args::try_parse_from(["mboard-server", "--recv-buffer", "-1"]).is_err(),
        "a size is a number of bytes"
    );
}

#[test]
fn retention_options_take_sizes_durations_and_none() {
    let args = Args::try_parse_from([
        "mboard-server",
        "--retain-messages",
        "1000",
        "--retain-bytes",
        "512MiB",
        "--retain-age",
        "7d",
        "--segment-size",
        "1MiB",
    ])
    .expect("parse");
    let config = config(&args);
    assert_eq!(
        config.retention,
        Retention {
            messages: Some(1_000),
            bytes: Some(512 << 20),
            age: Some(std::time::Duration::from_secs(7 * 86_400)),
        }
    );
    let Store::Journal(journal) = config.store else {
        panic!("durable")
    };
    assert_eq!(journal.segment_size, 1 << 20);
    let unlimited =
        Args::try_parse_from(["mboard-server", "--in-memory", "--retain-bytes", "none"])
            .expect("parse");
    assert_eq!(super::config(&unlimited).retention, Retention::UNLIMITED);
    for bad in [
        &["--retain-bytes", "lots"][..],
        &["--retain-messages", "-3"],
        &["--retain-age", "soon"],
        &["--segment-size", "1XB"],
    ] {
        let argv = ["mboard-server"].iter().chain(bad).copied();
        assert!(Args::try_parse_from(argv).is_err(), "{bad:?}");
    }
}

#[test]
fn metrics_connection_caps_are_options() {
    let args = Args::try_parse_from([
        "mboard-server",
        "--in-memory",
        "--metrics-connections",
        "32",
        "--metrics-connections-per-ip",
        "2",
    ])
    .expect("parse");
    let metrics = config(&args).limits.metrics;
    assert_eq!((metrics.connections, metrics.connections_per_ip), (32, 2));
}

#[test]
fn host_shares_and_the_progress_floor_are_options() {
    let args = Args::try_parse_from([
        "mboard-server",
        "--in-memory",
        "--host-memory-share",
        "50",
        "--host-session-share",
        "10",
        "--progress-floor",
        "0",
        "--progress-grace",
        "2s",
    ])
    .expect("parse");
    let fair = config(&args).limits.fairness;
    assert_eq!(
        fair,
        Fairness {
            host_memory_share: 50,
            host_session_share: 10,
            progress_floor: 0,
            progress_grace: std::time::Duration::from_secs(2),
        }
    );
}

#[test]
fn the_overload_share_is_an_option_in_percent() {
    let args =
        |share: &str| Args::try_parse_from(["mboard-server", "--overload-host-share", share]);
    let parsed = args("10").expect("parse");
    assert_eq!(config(&parsed).shedding, Shedding { host_share: 10 });
    assert_eq!(config(&args("0").expect("parse")).shedding.host_share, 0);
    assert!(args("101").is_err());
    assert!(args("-1").is_err());
    let defaults = Args::try_parse_from(["mboard-server"]).expect("parse");
    assert_eq!(config(&defaults).shedding, Shedding::default());
}
