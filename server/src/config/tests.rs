use super::*;

#[test]
fn defaults_are_valid_and_match_the_contract() {
    let l = Limits::default();
    assert_eq!(l.validate(), Ok(()));
    assert_eq!(l.download_block_size(), 1_412);
}

const NAMES: RateNames = RateNames {
    rate: "r",
    burst: "b",
    sources: "s",
};

#[test]
fn unworkable_rate_limits_are_refused_each_in_its_own_words() {
    let ok = RateLimit::default();
    assert_eq!(ok.validate(NAMES), Ok(()));
    let off = RateLimit {
        rate: 0.0,
        burst: 0.0,
        ..ok
    };
    assert_eq!(off.validate(NAMES), Ok(()), "0 turns limiting off");
    let nan = RateLimit {
        rate: f64::NAN,
        ..ok
    };
    assert!(matches!(
        nan.validate(NAMES),
        Err(ConfigError::Rate("r", _))
    ));
    let negative = RateLimit { rate: -1.0, ..ok };
    assert_eq!(negative.validate(NAMES), Err(ConfigError::Rate("r", -1.0)));
    let half = RateLimit { burst: 0.5, ..ok };
    assert_eq!(half.validate(NAMES), Err(ConfigError::Burst("b", 0.5)));
    let endless = RateLimit {
        burst: f64::INFINITY,
        ..ok
    };
    assert!(matches!(
        endless.validate(NAMES),
        Err(ConfigError::Burst("b", _))
    ));
    let untracked = RateLimit {
        max_sources: 0,
        ..ok
    };
    assert_eq!(untracked.validate(NAMES), Err(ConfigError::Zero("s")));
    assert_eq!(
        ConfigError::Zero("rate sources").to_string(),
        "rate sources must be at least 1"
    );
    let config = Config {
        error_limit: RateLimit {
            burst: 0.0,
            ..RateLimit::ERROR_REPLIES
        },
        ..Config::default()
    };
    assert_eq!(
        config.validate(),
        Err(ConfigError::Burst("error reply burst", 0.0))
    );
    let no_workers = Config {
        workers: 0,
        ..Config::default()
    };
    assert_eq!(no_workers.validate(), Err(ConfigError::Workers));
    for found in [0, IO_BATCH_MAX + 1] {
        let config = Config {
            io_batch: found,
            ..Config::default()
        };
        assert_eq!(
            config.validate(),
            Err(ConfigError::IoBatch {
                max: IO_BATCH_MAX,
                found
            })
        );
    }
    for fine in [1, IO_BATCH_MAX] {
        let config = Config {
            io_batch: fine,
            ..Config::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }
}

#[test]
fn unworkable_limits_are_refused() {
    let bad = |f: fn(&mut Limits)| {
        let mut l = Limits::default();
        f(&mut l);
        l.validate()
    };
    assert_eq!(
        bad(|l| l.max_datagram = 100),
        Err(ConfigError::Datagram(100))
    );
    assert_eq!(
        bad(|l| l.max_datagram = 65_508),
        Err(ConfigError::Datagram(65_508))
    );
    assert!(bad(|l| l.max_sessions = 0).is_err());
    assert!(bad(|l| l.max_sessions_per_source = 0).is_err());
    assert_eq!(
        bad(|l| l.max_session_memory = 100),
        Err(ConfigError::SessionMemory(2_944, 100))
    );
    assert_eq!(
        bad(|l| {
            l.max_datagram = 1_000;
            l.max_session_memory = 2_000;
        }),
        Ok(())
    );
    assert_eq!(
        bad(|l| l.validation_ttl = Duration::ZERO),
        Err(ConfigError::ValidationTtl)
    );
    assert_eq!(
        bad(|l| l.max_validated = 0),
        Err(ConfigError::Zero("max validated"))
    );
    assert!(bad(|l| l.max_request_size = 0).is_err());
    assert_eq!(
        bad(|l| l.session_timeout = Duration::ZERO),
        Err(ConfigError::Timeout)
    );
    assert_eq!(
        bad(|l| l.tokens.window = Duration::ZERO),
        Err(ConfigError::DedupWindow)
    );
    assert_eq!(
        bad(|l| l.tokens.max_tokens = 0),
        Err(ConfigError::Zero("max tokens"))
    );
    assert_eq!(
        bad(|l| l.fairness.host_memory_share = 0),
        Err(ConfigError::Share("host memory share", 0))
    );
    assert_eq!(
        bad(|l| l.max_queued_publishes = 0),
        Err(ConfigError::Zero("max queued publishes"))
    );
    assert_eq!(
        bad(|l| l.max_catching_up = 0),
        Err(ConfigError::Zero("max catching up"))
    );
    assert_eq!(
        bad(|l| l.max_building_replies = 0),
        Err(ConfigError::Zero("max building replies"))
    );
    assert_eq!(
        bad(|l| l.max_queued_bytes = 1_000).map_err(|e| e.to_string()),
        Err(
            "max queued bytes must be at least the max request size (16777216 bytes), not 1000"
                .into()
        )
    );
}

#[test]
fn sizes_are_read_as_people_write_them() {
    for (text, bytes) in [
        ("4096", 4_096),
        ("0", 0),
        ("512KiB", 512 << 10),
        ("64MiB", 64 << 20),
        ("64mib", 64 << 20),
        ("64M", 64 << 20),
        ("1.5GiB", 3 << 29),
        ("10GB", 10_000_000_000),
        ("2TiB", 2 << 40),
        ("7 KB", 7_000),
        ("100B", 100),
    ] {
        assert_eq!(parse_size(text), Ok(bytes), "{text}");
    }
    for bad in [
        "",
        "MiB",
        "12XB",
        "-1",
        "1e3",
        "99999999999999999999TiB",
        "1.2.3MiB",
    ] {
        assert!(parse_size(bad).is_err(), "{bad}");
    }
    assert_eq!(
        parse_size("3 parsecs"),
        Err(
            "unknown size unit \"parsecs\" in \"3 parsecs\" (use B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"
                .into()
        )
    );
}

#[test]
fn unworkable_retention_and_segments_are_refused() {
    let limits = Limits::default();
    let keep = |r: Retention| r.validate(&limits).map_err(|e| e.to_string());
    assert_eq!(keep(Retention::UNLIMITED), Ok(()));
    assert_eq!(
        keep(Retention {
            messages: Some(0),
            ..Retention::UNLIMITED
        }),
        Err("retain messages must be at least 1".into())
    );
    assert_eq!(
        keep(Retention {
            bytes: Some(1 << 20),
            ..Retention::UNLIMITED
        }),
        Err(
            "retain bytes must be at least the max request size (16777216 bytes), not 1048576"
                .into()
        )
    );
    assert_eq!(
        keep(Retention {
            age: Some(Duration::ZERO),
            ..Retention::UNLIMITED
        }),
        Err("retain age must be longer than zero".into())
    );
    assert_eq!(Config::default().validate(), Ok(()));
    assert_eq!(Config::default().retention.bytes, Some(MEMORY_RETAIN_BYTES));
    let mut journal = JournalConfig::new("data".into());
    journal.segment_size = 1_000;
    let config = Config {
        store: Store::Journal(journal),
        ..Config::default()
    };
    assert_eq!(
        config.validate().map_err(|e| e.to_string()),
        Err("segment size must be between 65536 and 1099511627776 bytes, not 1000".into())
    );
}
