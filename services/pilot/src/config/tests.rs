use super::*;

#[test]
fn defaults_are_valid() {
    Config::default().validate().unwrap();
}

#[test]
fn durations_parse_from_humantime_text() {
    let config: Config =
        toml::from_str("queue = \"q1\"\nlifetime = \"2h\"\nkill_grace = \"3s\"\nheartbeat_interval = \"150ms\"\n")
            .unwrap();
    assert_eq!(config.queue, "q1");
    assert_eq!(config.lifetime, Duration::from_secs(7200));
    assert_eq!(config.kill_grace, Duration::from_secs(3));
    assert_eq!(config.heartbeat_interval, Some(Duration::from_millis(150)));
    assert_eq!(config.server_deadline, Config::default().server_deadline);
}

#[test]
fn unknown_keys_are_refused() {
    let error = toml::from_str::<Config>("queu = \"q1\"").unwrap_err().to_string();
    assert!(error.contains("queu"), "{error}");
}

#[test]
fn every_problem_is_reported() {
    let config = Config {
        queue: String::new(),
        server_deadline: Duration::ZERO,
        heartbeat_interval: Some(Duration::ZERO),
        ..Config::default()
    };
    let Err(Error::InvalidConfig(problems)) = config.validate() else { panic!("expected InvalidConfig") };
    assert_eq!(problems.len(), 3, "{problems:?}");
}

#[test]
fn heartbeat_interval_prefers_the_override_then_the_job() {
    let check = |override_: Option<Duration>, job_seconds, expected| {
        let config = Config { heartbeat_interval: override_, ..Config::default() };
        assert_eq!(config.heartbeat_interval_for(job_seconds), expected);
    };
    check(None, 0, DEFAULT_HEARTBEAT_INTERVAL);
    check(None, 60, Duration::from_secs(60));
    check(Some(Duration::from_millis(100)), 60, Duration::from_millis(100));
}
