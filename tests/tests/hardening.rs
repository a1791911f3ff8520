//! Hardening against what the outside world does to a running fleet (issue #10), end to end:
//! a broker and an agent whose stderr and stdout have gone away keep running however much they
//! log; a retained command (a "ghost", replayed on every reconnect) is never executed; an agent
//! whose group subscription the broker refuses says so, in its log and as an event.

use std::process::Command;
use std::time::Duration;

use pifleet_proto::report::Outcome;
use pifleet_tests::*;

/// The minimal agent config of [`Agent::start_in`], for agents started by hand.
fn agent_config(url: &str, device: &str, extra: &str) -> String {
    format!(
        "device = {device:?}\nbroker = {url:?}\ngpio = \"sim\"\nkeep_alive_secs = 2\n\
         reconnect_max_secs = 0.5\n\n[[output]]\nname = \"led\"\npin = 17\n{extra}"
    )
}

// ---------------------------------------------------------------------------------------------
// Logging that cannot abort the process.

#[test]
fn a_broker_whose_stderr_and_stdout_are_gone_keeps_serving_however_much_it_logs() {
    let creds = Creds::new();
    let ops = creds.add(&["controller", "add", "ops"]);
    let mut cmd = Command::new(bin("pifleet-broker"));
    cmd.arg("--credentials").arg(&creds.path).args([
        "--mqtt",
        "127.0.0.1:0",
        "--no-ws",
        "--no-state",
        "--no-history",
    ]);
    let (mut broker, ready) = Proc::spawn_unheard("broker", cmd, Some("pifleet-broker: MQTT on "));
    let url = format!("mqtt://{}", ready.rsplit(' ').next().unwrap());

    // Each refused login is a warning in the broker's log (and the end of each session an info
    // line); the first one used to abort the broker, so any client could stop it.
    for attempt in 0..3 {
        assert!(
            broker.is_running(),
            "the broker died: {:?}",
            broker.child.try_wait()
        );
        let out = cli_env(
            &url,
            &["status"],
            &[
                ("PIFLEET_USER", "ops"),
                ("PIFLEET_PASSWORD", "not-the-password-1234"),
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(4),
            "wrong password, attempt {attempt}"
        );
    }
    let login = [("PIFLEET_USER", "ops"), ("PIFLEET_PASSWORD", ops.as_str())];
    let out = cli_env(&url, &["status"], &login);
    assert_eq!(out.status.code(), Some(0), "the broker still serves MQTT");
    assert!(broker.is_running(), "{:?}", broker.child.try_wait());
}

#[test]
fn an_agent_whose_stderr_is_gone_keeps_running_and_reconnects() {
    let broker = Broker::start_with(&["--mqtt", "127.0.0.1:0", "--no-ws"]);
    let url = broker.url();
    let addr = broker.mqtt.clone();
    let dir = temp_dir("lima");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, agent_config(&url, "lima", "")).unwrap();
    let mut cmd = Command::new(bin("pifleet-agent"));
    cmd.arg("--config").arg(&config);
    // The agent logs from its first moment (the outputs it sets up, the connection).
    let (mut agent, _) = Proc::spawn_unheard("lima", cmd, None);
    let mut online = || {
        assert!(
            agent.is_running(),
            "the agent died: {:?}",
            agent.child.try_wait()
        );
        device_status(&url, "lima").is_some_and(|d| d.online)
    };
    wait_until("lima is online", Duration::from_secs(15), &mut online);

    // Without a broker the agent logs every failed attempt.
    drop(broker);
    let _broker = Broker::start_with(&["--mqtt", &addr, "--no-ws"]);
    wait_until("lima is back online", Duration::from_secs(15), &mut online);
    let (r, code) = switch(&url, &["on", "lima"]);
    assert_eq!((code, outcome(&r, "lima")), (Some(0), Outcome::Confirmed));
}

// ---------------------------------------------------------------------------------------------
// Retained commands are ghosts.

/// A tool that leaves a retained command behind must not switch the device now, nor at every
/// later (re)connect. Whether the broker stores the retained command (this one still does) or
/// refuses to, the device's output must not move.
#[test]
fn a_retained_command_is_never_executed_at_start_or_restart() {
    let broker = Broker::start_with(&["--mqtt", "127.0.0.1:0", "--no-ws"]);
    let url = broker.url();
    publish_raw_retained(
        &url,
        "pifleet/dev/mike/cmnd",
        br#"{"id":"ghost-1","action":"on","output":"led"}"#,
    );
    let watch = watch(&url, &["mike"]);
    let outputs = "[[output]]\nname = \"led\"\npin = 17\n[[output]]\nname = \"relay\"\npin = 22\n";
    let mut agent = Agent::start(&url, "mike", outputs);

    for (run, relay) in [("start", "on"), ("restart", "off")] {
        wait_online(&url, "mike");
        // A stored command reaches the agent when it subscribes, before any later message on
        // the same topic: once a later command (for the other output) is confirmed, the ghost
        // has been seen and dealt with.
        let (r, code) = switch(&url, &[relay, "mike", "--output", "relay"]);
        assert_eq!(
            (code, outcome(&r, "mike")),
            (Some(0), Outcome::Confirmed),
            "{run}"
        );
        let led = device_status(&url, "mike").unwrap().outputs["led"].clone();
        assert!(!led.on, "the ghost switched the LED on at {run}: {led:?}");
        assert_eq!(led.cmd, None, "{run}: {led:?}");
        if run == "start" {
            agent.proc.signal("TERM");
            agent.proc.wait_exit(Duration::from_secs(10));
            let dir = std::mem::replace(&mut agent.dir, temp_dir("unused"));
            agent = Agent::start_in(dir, &url, "mike", outputs);
        }
    }
    // Nothing was published for the ghost: no acknowledgement, no refusal event.
    assert!(
        !watch.stdout.since(0).iter().any(|l| l.contains("ghost-1")),
        "{:?}",
        watch.stdout.since(0)
    );
}

// ---------------------------------------------------------------------------------------------
// Refused subscriptions are reported.

/// The device's config lists a group its credentials do not: the broker refuses that one
/// subscription (SUBACK 0x80). The agent says so, in its log and as an event, and the groups it
/// was granted keep working.
#[test]
fn an_agent_reports_a_refused_group_subscription_and_keeps_the_granted_ones() {
    let creds = Creds::new();
    let secret = creds.add(&["device", "add", "november", "--group", "downstairs"]);
    let ops = creds.add(&["controller", "add", "ops"]);
    let broker = creds.broker();
    let url = broker.url();
    let login = [("PIFLEET_USER", "ops"), ("PIFLEET_PASSWORD", ops.as_str())];
    let watch = watch_env(&url, &["november"], &login);
    let agent = Agent::start(
        &url,
        "november",
        &format!("password = {secret:?}\ngroups = [\"downstairs\", \"upstairs\"]\n"),
    );

    let said = agent.proc.stderr.wait_for(
        "the agent's report of the refusal",
        Duration::from_secs(15),
        |l| l.contains("broker refused subscription"),
    );
    assert!(
        said.contains("ERROR")
            && said.contains(
                "broker refused subscription to group 'upstairs' (pifleet/group/upstairs/cmnd): \
                 check the device's groups in the broker's credentials"
            ),
        "{said}"
    );
    let event = watch.stdout.wait_for(
        "the subscription_refused event",
        Duration::from_secs(10),
        |l| l.contains("subscription_refused"),
    );
    assert!(
        event.contains(r#""filter":"pifleet/group/upstairs/cmnd""#),
        "{event}"
    );

    let (r, code) = switch_env(&url, &["on", "--group", "downstairs"], &login);
    assert_eq!(
        (code, outcome(&r, "november")),
        (Some(0), Outcome::Confirmed)
    );
    // Only the one filter was refused.
    let refusals: Vec<_> = agent
        .proc
        .stderr
        .since(0)
        .into_iter()
        .filter(|l| l.contains("refused subscription"))
        .collect();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
}
