//! `pifleet-broker`: parse flags, set up logging, call the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pifleet_broker::config::DEFAULT_TOML;
#[cfg(feature = "demo")]
use pifleet_broker::demo::Demo;
use pifleet_broker::Config;
use pifleet_client::{say, tell};

/// An MQTT broker for a fleet of Raspberry Pis: per-device identities, topic ACLs, TLS.
#[derive(Parser)]
#[command(name = "pifleet-broker", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Configuration file (TOML); see `pifleet-broker print-config`.
    #[arg(long, short, env = "PIFLEET_BROKER_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// MQTT listener address (port 0 picks a free port).
    #[arg(long, global = true)]
    mqtt: Option<SocketAddr>,
    /// MQTT-over-WebSocket listener address.
    #[arg(long, global = true)]
    ws: Option<SocketAddr>,
    /// Do not start the WebSocket listener.
    #[arg(long, global = true)]
    no_ws: bool,
    /// MQTT-over-TLS listener address (needs `[tls] cert` and `key` in the config).
    #[arg(long, global = true)]
    mqtts: Option<SocketAddr>,
    /// Serve clients without credentials on non-loopback addresses (trusted networks only).
    #[arg(long, global = true)]
    allow_anonymous: bool,
    /// Also run this many simulated Pis in this process (the quickstart uses 3).
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "3", global = true)]
    demo: Option<usize>,
    /// Web dashboard address (default 127.0.0.1:8080, `[dashboard] listen`); `off` disables it.
    #[arg(
        long,
        value_name = "ADDR|off",
        env = "PIFLEET_DASHBOARD",
        global = true
    )]
    dashboard: Option<String>,
    /// Do not start the web dashboard.
    #[arg(long, global = true)]
    no_dashboard: bool,
    /// Credentials file (overrides `[auth] credentials`): required logins when running, the
    /// file `device` and `controller` commands change.
    #[arg(long, value_name = "PATH", env = "PIFLEET_CREDENTIALS", global = true)]
    credentials: Option<PathBuf>,
    /// State directory (overrides `[state] dir`): retained messages and persistent sessions
    /// survive restarts there (docs/broker.md). Refused if another broker holds it.
    #[arg(long, value_name = "PATH", global = true, conflicts_with = "no_state")]
    state_dir: Option<PathBuf>,
    /// Keep all state in memory (`[state] enabled = false`).
    #[arg(long, global = true)]
    no_state: bool,
    /// Record history into this directory (overrides `[history] dir`, and turns it on).
    #[arg(long, value_name = "PATH", global = true)]
    history_dir: Option<PathBuf>,
    /// Do not record history (`[history] enabled = false`).
    #[arg(long, global = true, conflicts_with = "history_dir")]
    no_history: bool,
    /// Publish Home Assistant discovery for the fleet (`[homeassistant] enabled = true`).
    #[arg(long, global = true)]
    homeassistant: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the broker (the default).
    Run,
    /// Print the commented default configuration.
    PrintConfig,
    #[command(flatten)]
    Admin(pifleet_broker::admin::AdminCmd),
}

/// Exit codes: 0 clean stop, 1 cannot listen or start, 2 bad configuration or usage,
/// 70 internal error (a panic; see [`exit_on_panic`]).
const EXIT_START: u8 = 1;
const EXIT_CONFIG: u8 = 2;
const EXIT_INTERNAL: i32 = 70;

/// Waits for SIGINT/SIGTERM on a thread of its own, so that a runtime whose workers are all busy
/// (a reconnect storm) still notices the signal. The thread also bounds the graceful stop: if it
/// has not finished 10 s after the signal, the process exits anyway.
fn stop_signal() -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("signal runtime");
            rt.block_on(pifleet_client::signal::shutdown());
            let _ = tx.send(());
            std::thread::sleep(std::time::Duration::from_secs(10));
            tell!("pifleet-broker: could not stop gracefully within 10 s; exiting");
            std::process::exit(0);
        })
        .expect("spawn the signal thread");
    rx
}

/// SIGHUP re-reads the credentials and ACL files, as a change to them on disk does (the broker
/// also polls them every second); a bad file is logged and the old identities stay.
fn reload_on_hangup(engine: std::sync::Arc<pifleet_broker::engine::Engine>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot handle SIGHUP (credentials reload): {e}");
            return;
        }
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let engine = engine.clone();
            let _ = tokio::task::spawn_blocking(move || engine.reload_access("SIGHUP")).await;
        }
    });
}

/// Turns any panic into a prompt exit with [`EXIT_INTERNAL`].
///
/// Why: a panic in a connection task would otherwise end only that task, and one that happened
/// while routing state was half-updated could leave a broker that runs but misroutes. Exiting
/// lets the supervisor (systemd `Restart=`, Compose `restart:`) bring the broker back in a
/// second, and agents reconnect and republish on their own. The hook writes with `tell!`, never
/// `eprintln!`: a panic inside a panic hook aborts the process (SIGABRT) instead of exiting 70,
/// and `eprintln!` panics when stderr is closed.
fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        tell!(
            "pifleet-broker: internal error; exiting with code {EXIT_INTERNAL} \
             so that a supervisor restarts the broker (clients reconnect by themselves)"
        );
        std::process::exit(EXIT_INTERNAL);
    }));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    exit_on_panic();
    pifleet_client::logging::init("info,rumqttc=warn");
    if let Some(Cmd::PrintConfig) = cli.command {
        use std::io::Write;
        // `print!` would panic on a closed stdout (`print-config | head`).
        let _ = std::io::stdout().write_all(DEFAULT_TOML.as_bytes());
        return ExitCode::SUCCESS;
    }
    let mut config = match &cli.config {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => {
                tell!("pifleet-broker: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => Config::default(),
    };
    if let Some(p) = &cli.credentials {
        config.auth.credentials = Some(p.clone());
    }
    if let Some(Cmd::Admin(cmd)) = cli.command {
        return pifleet_broker::admin::run(cmd, &config, cli.credentials);
    }
    if let Some(a) = cli.mqtt {
        config.mqtt.listen = a;
    }
    if let Some(a) = cli.ws {
        config.websocket.listen = a;
    }
    if cli.no_ws {
        config.websocket.enabled = false;
    }
    if let Some(a) = cli.mqtts {
        config.tls.enabled = true;
        config.tls.listen = a;
    }
    if cli.allow_anonymous {
        config.auth.allow_anonymous = true;
    }
    if let Some(d) = cli.state_dir {
        config.state.enabled = true;
        config.state.dir = Some(d);
    }
    if cli.no_state {
        config.state.enabled = false;
    }
    if let Some(d) = cli.history_dir {
        config.history.enabled = true;
        config.history.dir = Some(d);
    }
    if cli.homeassistant {
        config.homeassistant.enabled = true;
    }
    if cli.no_history {
        config.history.enabled = false;
    }
    let dashboard_explicit = match cli.dashboard.as_deref() {
        Some("off") => {
            config.dashboard.enabled = false;
            false
        }
        Some(a) => match a.parse() {
            Ok(addr) => {
                config.dashboard.enabled = true;
                config.dashboard.listen = addr;
                true
            }
            Err(_) => {
                tell!("pifleet-broker: --dashboard {a:?}: not an address (HOST:PORT) or `off`");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => false,
    };
    if cli.no_dashboard {
        config.dashboard.enabled = false;
    }
    if let Err(e) = config.validate() {
        tell!("pifleet-broker: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if let Some(addr) = config.anonymous_exposure() {
        tell!(
            "pifleet-broker: refusing to serve anonymous clients on {addr}, where other hosts can \
             reach it: anyone could switch your devices. Set up credentials (`pifleet-broker \
             device add NAME`, then [auth] credentials = FILE; see README \"Securing your \
             fleet\"), listen on 127.0.0.1, or pass --allow-anonymous on a trusted network."
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    if config.auth.allow_anonymous && config.auth.credentials.is_none() {
        if let Some(addr) = config
            .listeners()
            .into_iter()
            .map(|(_, a)| a)
            .find(|a| !a.ip().is_loopback())
        {
            tell!(
                "pifleet-broker: WARNING: no authentication on {addr}: anyone who can reach it \
                 can switch every device (allowed by allow_anonymous)"
            );
        }
    }

    let stop = stop_signal();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async move {
        let running = match pifleet_broker::start(&config).await {
            Ok(r) => r,
            Err(e @ pifleet_broker::BrokerError::Setup(_)) => {
                tell!("pifleet-broker: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            Err(e) => {
                tell!("pifleet-broker: {e}");
                return ExitCode::from(EXIT_START);
            }
        };
        // Before the readiness lines, so a SIGHUP sent once they are out never kills the broker.
        reload_on_hangup(running.engine.clone());
        // These lines are the readiness signal scripts and tests wait for.
        say!("pifleet-broker: MQTT on {}", running.mqtt);
        if let Some(ws) = running.websocket {
            say!("pifleet-broker: MQTT over WebSocket on {ws}");
        }
        if let Some(tls) = running.mqtts {
            say!("pifleet-broker: MQTT over TLS on {tls}");
        }
        if running.engine.auth_enabled() {
            say!("pifleet-broker: clients must log in (credentials file)");
        }
        let topics = pifleet_proto::Topics::new(&config.prefix).expect("validated");
        match pifleet_broker::legacy::start(&config.legacy, &running, topics.clone()).await {
            Ok(bound) => {
                for (device, addr) in bound {
                    say!("pifleet-broker: legacy shim for {device} on {addr}");
                }
            }
            Err(e) => {
                tell!("pifleet-broker: {e}");
                return ExitCode::from(EXIT_START);
            }
        }
        let history =
            pifleet_broker::history::start(&config.history, &running, topics.clone()).await;
        if let Some(h) = &history {
            say!("pifleet-broker: history in {}", h.dir().display());
        }
        let homeassistant =
            pifleet_broker::homeassistant::start(&config.homeassistant, &running, topics.clone())
                .await;
        if homeassistant.is_some() {
            say!(
                "pifleet-broker: Home Assistant discovery under {}/",
                config.homeassistant.discovery_prefix
            );
        }
        let listen = config.dashboard.listen;
        match pifleet_broker::dashboard::start(
            &config,
            listen,
            dashboard_explicit,
            &running,
            topics,
        )
        .await
        {
            Ok(Some(url)) => say!("pifleet-broker: dashboard on {url}"),
            Ok(None) => {}
            Err(e @ pifleet_broker::dashboard::DashboardError::Config(_)) => {
                tell!("pifleet-broker: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            Err(e) => {
                tell!("pifleet-broker: {e}");
                return ExitCode::from(EXIT_START);
            }
        }
        let demo = match start_demo(cli.demo, &running, &config.prefix) {
            Ok(d) => d,
            Err(code) => return code,
        };
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = stop.await;
        #[cfg(feature = "demo")]
        if let Some(d) = demo {
            d.stop().await;
        }
        #[cfg(not(feature = "demo"))]
        let () = demo;
        if let Some(h) = history {
            h.stop().await;
        }
        if let Some(h) = homeassistant {
            h.stop().await;
        }
        running.engine.close_store();
        tracing::info!("stopped");
        ExitCode::SUCCESS
    });
    // Connection tasks end with the process, and the console reads stdin on a blocking thread:
    // do not wait for either.
    runtime.shutdown_background();
    code
}

/// Starts `--demo N` simulated Pis in this process, with the hints the quickstart shows.
#[cfg(feature = "demo")]
fn start_demo(
    n: Option<usize>,
    running: &pifleet_broker::Running,
    prefix: &str,
) -> Result<Option<Demo>, ExitCode> {
    Ok(match n {
        Some(n) if n > 0 => match Demo::start(n, running, prefix) {
            Ok(d) => {
                let names: Vec<_> = d.handles.iter().map(|(n, _)| n.to_string()).collect();
                say!(
                    "pifleet-broker: demo fleet of {n} simulated Pis: {}",
                    names.join(", ")
                );
                let port = running.mqtt.port();
                let broker_flag = if port == 1883 {
                    String::new()
                } else {
                    format!(" --broker mqtt://127.0.0.1:{port}")
                };
                say!("  In another terminal try:  pifleet{broker_flag} status      (from the repository: cargo run -q -p pifleet-controller --{broker_flag} status)");
                say!("                            pifleet{broker_flag} on --all");
                say!("                            pifleet{broker_flag} watch");
                say!("  Type here to press a simulated button:  kitchen press   (or: show, kitchen release)");
                tokio::spawn(Demo::console(d.handles.clone()));
                Some(d)
            }
            Err(e) => {
                tell!("pifleet-broker: cannot start the demo fleet: {e}");
                return Err(ExitCode::from(EXIT_START));
            }
        },
        _ => None,
    })
}

/// A broker built without the `demo` feature (no agent, no rppal) refuses `--demo`.
#[cfg(not(feature = "demo"))]
fn start_demo(
    n: Option<usize>,
    _running: &pifleet_broker::Running,
    _prefix: &str,
) -> Result<(), ExitCode> {
    if n.is_some_and(|n| n > 0) {
        tell!("pifleet-broker: --demo: this pifleet-broker was built without the demo fleet (cargo feature `demo`)");
        return Err(ExitCode::from(EXIT_CONFIG));
    }
    Ok(())
}
