//! Credentials and ACL changes reach a running broker without a restart: the admin commands
//! change the file while `pifleet-broker` runs, and clients see the result within about a
//! second (the broker polls the files) or at once on SIGHUP. A bad file changes nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use pifleet_tests::raw::{self, Client, Connect, Packet};
use pifleet_tests::*;

/// How long the broker may take to notice a change on disk (it polls every second).
const NOTICE: Duration = Duration::from_secs(3);

/// The CONNACK return code for `user`'s login with client id `user`.
fn login_code(addr: &str, user: &str, secret: &str) -> u8 {
    let (_, _, code) = Client::connect(addr, &Connect::new(user).login(user, secret));
    code
}

/// How many times the broker logged that it re-read its credentials and ACL.
fn reloads(broker: &Broker) -> usize {
    broker
        .proc
        .stderr
        .since(0)
        .iter()
        .filter(|l| l.contains("credentials re-read"))
        .count()
}

/// Waits until the broker re-read its files more than `before` times.
fn wait_reloaded(broker: &Broker, before: usize) {
    wait_until("the broker re-read its credentials and ACL", NOTICE, || {
        reloads(broker) > before
    });
}

/// Replaces a file the way the admin commands do (a new file renamed over it), so the broker
/// never sees it half written.
fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_device_added_while_the_broker_runs_can_log_in_without_a_restart() {
    let creds = Creds::new();
    creds.add(&["controller", "add", "ops"]);
    let broker = creds.broker();
    assert_eq!(login_code(&broker.mqtt, "kitchen", "not-yet-anything"), 4);

    let secret = creds.add(&["device", "add", "kitchen"]);
    let added = Instant::now();
    wait_until("the new device can log in", NOTICE, || {
        login_code(&broker.mqtt, "kitchen", &secret) == 0
    });
    eprintln!(
        "new device accepted {:?} after `device add`",
        added.elapsed()
    );
    // A wrong secret is still refused.
    assert_eq!(login_code(&broker.mqtt, "kitchen", "not-the-secret-123"), 4);
}

#[test]
fn a_removed_devices_connection_is_closed_within_2_s_and_it_cannot_log_in_again() {
    let creds = Creds::new();
    let secret = creds.add(&["device", "add", "kitchen"]);
    let garage = creds.add(&["device", "add", "garage"]);
    let broker = creds.broker();
    let addr = broker.mqtt.as_str();
    let mut kitchen = Client::accepted(
        addr,
        &Connect::new("kitchen")
            .persistent()
            .login("kitchen", &secret),
    );
    assert_eq!(
        kitchen.subscribe(1, &[("pifleet/dev/kitchen/cmnd", 1)]),
        [1]
    );
    let mut other = Client::accepted(addr, &Connect::new("garage").login("garage", &garage));

    creds.admin(&["device", "remove", "kitchen"]);
    let removed = Instant::now();
    kitchen
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let end = kitchen.try_read();
    let took = removed.elapsed();
    eprintln!("removed device's connection ended {took:?} after `device remove`: {end:?}");
    assert!(
        matches!(end, Ok(None) | Err(_)) && took < Duration::from_millis(2500),
        "connection still open {took:?} after the device was removed: {end:?}"
    );
    assert!(
        !matches!(end, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "timed out rather than closed"
    );
    assert_eq!(login_code(addr, "kitchen", &secret), 4);
    // The other device was not disturbed.
    assert!(other.ping().is_empty());

    // Its persistent session went with it: the same name added again starts afresh.
    let again = creds.add(&["device", "add", "kitchen"]);
    wait_until("the re-added device can log in", NOTICE, || {
        login_code(addr, "kitchen", &again) == 0
    });
    let (_, session_present, code) = Client::connect(
        addr,
        &Connect::new("kitchen")
            .persistent()
            .login("kitchen", &again),
    );
    assert_eq!((session_present, code), (false, 0));
}

/// In-place, same length, same modification time: a change the poll cannot see, so only the
/// SIGHUP can have made the broker read it.
fn overwrite_unnoticeably(path: &Path, contents: &str) {
    let before = std::fs::metadata(path).unwrap();
    assert_eq!(before.len(), contents.len() as u64, "same length");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(false)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut &f, contents.as_bytes()).unwrap();
    f.set_modified(before.modified().unwrap()).unwrap();
    f.sync_all().unwrap();
    let after = std::fs::metadata(path).unwrap();
    assert_eq!(after.modified().unwrap(), before.modified().unwrap());
}

#[test]
fn sighup_rereads_the_credentials_file() {
    let creds = Creds::new();
    let old = creds.add(&["device", "add", "kitchen"]);
    let mut broker = creds.broker();
    assert_eq!(login_code(&broker.mqtt, "kitchen", &old), 0);

    // The same file with a new secret for kitchen, made by the admin commands on a copy.
    let copy = Creds::new();
    std::fs::copy(&creds.path, &copy.path).unwrap();
    copy.admin(&["device", "remove", "kitchen"]);
    let new = copy.add(&["device", "add", "kitchen"]);
    overwrite_unnoticeably(&creds.path, &std::fs::read_to_string(&copy.path).unwrap());
    // A sleep, not a readiness check: what is checked is that nothing happens over two polls.
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(reloads(&broker), 0, "the poll noticed the change");
    assert_eq!(
        login_code(&broker.mqtt, "kitchen", &old),
        0,
        "not re-read yet"
    );

    broker.proc.signal("HUP");
    wait_reloaded(&broker, 0);
    assert!(broker.proc.running());
    assert_eq!(login_code(&broker.mqtt, "kitchen", &new), 0);
    assert_eq!(login_code(&broker.mqtt, "kitchen", &old), 4);
}

#[test]
fn a_corrupted_credentials_file_keeps_the_old_identities_and_logs_an_error() {
    let creds = Creds::new();
    let secret = creds.add(&["device", "add", "kitchen"]);
    let ops = creds.add(&["controller", "add", "ops"]);
    let mut broker = creds.broker();
    let addr = broker.mqtt.clone();
    let addr = addr.as_str();
    let mut live = Client::accepted(addr, &Connect::new("ops:live").login("ops", &ops));

    let good = std::fs::read_to_string(&creds.path).unwrap();
    write_atomically(&creds.path, &format!("{good}\n[[device]]\nname = \"half"));
    let error = broker
        .proc
        .stderr
        .wait_for("an error about the credentials file", NOTICE, |l| {
            l.contains("ERROR") && l.contains("credentials file")
        });
    assert!(error.contains("stay in force"), "{error}");
    // The identities read before still hold: the live connection and a new login.
    assert!(live.ping().is_empty());
    assert_eq!(login_code(addr, "kitchen", &secret), 0);
    // SIGHUP with the bad file in place: the same.
    broker.proc.signal("HUP");
    wait_until("the SIGHUP's error", NOTICE, || {
        broker
            .proc
            .stderr
            .since(0)
            .iter()
            .any(|l| l.contains("SIGHUP") && l.contains("ERROR"))
    });
    assert!(broker.proc.running());
    assert_eq!(login_code(addr, "kitchen", &secret), 0);

    // A good file again is read as usual.
    write_atomically(&creds.path, &good);
    let garage = creds.add(&["device", "add", "garage"]);
    wait_until("the repaired file is read", NOTICE, || {
        login_code(addr, "garage", &garage) == 0
    });
    assert!(live.ping().is_empty());
}

#[test]
fn a_device_taken_out_of_a_group_loses_that_groups_commands_at_once() {
    let creds = Creds::new();
    let secret = creds.add(&["device", "add", "kitchen", "--group", "down"]);
    let ops = creds.add(&["controller", "add", "ops"]);
    let broker = creds.broker();
    let addr = broker.mqtt.as_str();
    let mut kitchen = Client::accepted(addr, &Connect::new("kitchen").login("kitchen", &secret));
    let own = "pifleet/dev/kitchen/cmnd";
    let group = "pifleet/group/down/cmnd";
    assert_eq!(kitchen.subscribe(1, &[(own, 0), (group, 0)]), [0, 0]);
    let mut ctl = Client::accepted(addr, &Connect::new("ops").login("ops", &ops));
    ctl.publish_acked(group, b"before", false, 1);
    assert_eq!(kitchen.next_publish().text(), "before");

    let before = reloads(&broker);
    creds.admin(&["device", "groups", "kitchen", "--none"]);
    wait_reloaded(&broker, before);
    // The held subscription was dropped: a group command published before a marker on the
    // device's own topic would have arrived first.
    ctl.publish_acked(group, b"after", false, 2);
    ctl.publish_acked(own, b"marker", false, 3);
    assert_eq!(kitchen.publishes_until(own), []);
    // And the connection, still open, acts with its new groups.
    assert_eq!(kitchen.subscribe(2, &[(group, 0)]), [raw::REFUSED]);
    assert!(kitchen
        .ping()
        .iter()
        .all(|p| !matches!(p, Packet::Publish { .. })));
}

#[test]
fn an_acl_file_change_applies_without_a_restart() {
    let creds = Creds::new();
    let secret = creds.add(&["device", "add", "kitchen"]);
    let ops = creds.add(&["controller", "add", "ops"]);
    let acl = creds.dir.path().join("acl.toml");
    // Controllers may publish weather reports throughout; whether devices may read them changes.
    let publishers = "[[allow]]\nwho = \"role:controller\"\npublish = [\"weather/#\"]\n";
    std::fs::write(&acl, publishers).unwrap();
    let config = creds.dir.path().join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\ncredentials = {:?}\nacl_file = {:?}\n",
            creds.path.to_str().unwrap(),
            acl.to_str().unwrap()
        ),
    )
    .unwrap();
    let broker = Broker::start_with(&[
        "--config",
        config.to_str().unwrap(),
        "--mqtt",
        "127.0.0.1:0",
        "--no-ws",
    ]);
    auth_announced(&broker);
    let addr = broker.mqtt.as_str();
    let mut kitchen = Client::accepted(addr, &Connect::new("kitchen").login("kitchen", &secret));
    let own = "pifleet/dev/kitchen/cmnd";
    assert_eq!(
        kitchen.subscribe(1, &[("weather/#", 0), (own, 0)]),
        [raw::REFUSED, 0]
    );
    let mut ctl = Client::accepted(addr, &Connect::new("ops").login("ops", &ops));

    let before = reloads(&broker);
    write_atomically(
        &acl,
        &format!("{publishers}[[allow]]\nwho = \"role:device\"\nsubscribe = [\"weather/#\"]\n"),
    );
    wait_reloaded(&broker, before);
    assert_eq!(kitchen.subscribe(2, &[("weather/#", 0)]), [0]);
    ctl.publish_acked("weather/today", b"sunny", false, 1);
    assert_eq!(kitchen.next_publish().text(), "sunny");

    // Taken away again: the held subscription goes too.
    let before = reloads(&broker);
    write_atomically(&acl, publishers);
    wait_reloaded(&broker, before);
    ctl.publish_acked("weather/today", b"rain", false, 2);
    ctl.publish_acked(own, b"marker", false, 3);
    assert_eq!(kitchen.publishes_until(own), []);
    assert_eq!(kitchen.subscribe(3, &[("weather/#", 0)]), [raw::REFUSED]);
}

/// `pifleet-broker device add NAME --secret-stdin` with `secret`.
fn add_with_secret(creds: &Creds, name: &str, secret: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(bin("pifleet-broker"))
        .arg("--credentials")
        .arg(&creds.path)
        .args(["device", "add", name, "--secret-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{secret}").unwrap();
    assert!(child.wait().unwrap().success(), "device add {name} failed");
}

/// The hash stored for `name` in the credentials file.
fn stored_hash(path: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let block = text
        .split("[[")
        .find(|b| b.contains(&format!("name = \"{name}\"")))
        .unwrap_or_else(|| panic!("no entry for {name} in {text}"));
    let line = block.lines().find(|l| l.starts_with("hash = ")).unwrap();
    line.trim_start_matches("hash = ")
        .trim_matches(['"', '\''])
        .to_string()
}

/// A file from before the fast hash held argon2id for generated secrets too, with no mark to
/// tell them from chosen ones. The first login with a secret of the generated shape moves that
/// entry to the fast hash in the file (so the next restart lets it in in microseconds), and the
/// broker's reload of its own write keeps the connection; an entry marked `chosen` stays
/// argon2id even with a secret of that shape.
#[test]
fn an_old_argon2_entry_of_a_generated_secret_moves_to_the_fast_hash_and_keeps_its_connection() {
    let creds = Creds::new();
    // The shape `device add` generates: 32 characters of A-Z a-z 0-9 - _.
    let old = "q7Xk-2mZ_Rb9sLw4TnV0cYhJ8dPa3GfE";
    let chosen = "Zt5_Hw0Lq-Kp8NbR2vXs6YmCj1DgF4Ue";
    add_with_secret(&creds, "kitchen", old);
    add_with_secret(&creds, "garage", chosen);
    let text = std::fs::read_to_string(&creds.path).unwrap();
    assert_eq!(text.matches("chosen = true").count(), 2, "{text}");
    // kitchen as an older pifleet-broker wrote it: no mark.
    let kitchen_block = text.find("name = \"kitchen\"").unwrap();
    let mark = kitchen_block + text[kitchen_block..].find("chosen = true\n").unwrap();
    let older = format!(
        "{}{}",
        &text[..mark],
        &text[mark + "chosen = true\n".len()..]
    );
    write_atomically(&creds.path, &older);
    let argon2 = stored_hash(&creds.path, "kitchen");
    assert!(argon2.starts_with("$argon2id$"), "{argon2}");

    let broker = creds.broker();
    let addr = broker.mqtt.as_str();
    let mut kitchen = Client::accepted(
        addr,
        &Connect::new("kitchen").persistent().login("kitchen", old),
    );
    assert_eq!(
        kitchen.subscribe(1, &[("pifleet/dev/kitchen/cmnd", 1)]),
        [1]
    );
    let mut garage = Client::accepted(addr, &Connect::new("garage").login("garage", chosen));

    wait_until("kitchen's entry moved to the fast hash", NOTICE, || {
        stored_hash(&creds.path, "kitchen").starts_with("$pifleet-blake2b$")
    });
    wait_until("the broker re-read its own write", NOTICE, || {
        let log = broker.proc.stderr.since(0);
        log.iter()
            .position(|l| l.contains("moved from argon2id to the fast hash"))
            .is_some_and(|i| log[i..].iter().any(|l| l.contains("credentials re-read")))
    });
    // Neither connection was closed by the reload.
    assert!(kitchen.ping().is_empty());
    assert!(garage.ping().is_empty());
    // The persistent session is the same one, resumed with the fast hash.
    drop(kitchen);
    let (_, session_present, code) = Client::connect(
        addr,
        &Connect::new("kitchen").persistent().login("kitchen", old),
    );
    assert_eq!((session_present, code), (true, 0));
    assert_eq!(
        login_code(addr, "kitchen", "q7Xk-2mZ_Rb9sLw4TnV0cYhJ8dPa3GfF"),
        4
    );
    assert!(stored_hash(&creds.path, "garage").starts_with("$argon2id$"));
    let text = std::fs::read_to_string(&creds.path).unwrap();
    assert_eq!(text.matches("chosen = true").count(), 1, "{text}");
}
