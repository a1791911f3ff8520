//! `pifleet-agent`: parse flags, set up logging, call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pifleet_agent::config::{Config, GpioChoice, EXAMPLE};
use pifleet_agent::{console, gpio, Agent, AgentError};
use pifleet_client::mqtt::{Password, Security};
use pifleet_client::{say, tell, BrokerUrl};
use pifleet_proto::Name;

/// Runs on a Raspberry Pi: dials out to an MQTT broker, switches outputs (LEDs, relays) on
/// command, and publishes inputs (buttons) and sensors.
///
/// The MQTT password comes from --password-file (PIFLEET_PASSWORD_FILE), else PIFLEET_PASSWORD,
/// else the config's password_file or password; the user name is the config's username, else the
/// device name. There is no --password flag: command lines are visible to every user of the
/// machine.
///
/// Exit codes: 0 clean stop; 1 runtime failure (GPIO, legacy port); 2 bad configuration or usage
/// (including an unreadable password or CA file). A refused login is not an exit: the agent logs
/// it as an error and retries with backoff.
#[derive(Parser)]
#[command(name = "pifleet-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Connect and serve (the default when no subcommand is given).
    Run,
    /// Print a commented example configuration.
    PrintConfig,
    /// Load and validate the configuration, print the result, and exit.
    CheckConfig,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Configuration file (TOML); see `pifleet-agent print-config`.
    #[arg(long, short, env = "PIFLEET_AGENT_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// This device's name in the fleet (default: the config's, else the hostname).
    #[arg(long, env = "PIFLEET_DEVICE", global = true)]
    device: Option<Name>,
    /// Broker URL: mqtt://host:port, mqtts://host:port (TLS, default port 8883),
    /// ws://host:port/path or wss://host:port/path (TLS, default port 8084).
    #[arg(long, env = "PIFLEET_BROKER", global = true)]
    broker: Option<BrokerUrl>,
    /// File holding the MQTT password (trailing newline ignored); beats PIFLEET_PASSWORD and the
    /// config's password settings.
    #[arg(
        long,
        env = "PIFLEET_PASSWORD_FILE",
        value_name = "PATH",
        global = true
    )]
    password_file: Option<PathBuf>,
    /// PEM file with the CA certificate(s) to check the broker's TLS certificate against
    /// (default: the config's ca_file, else the system's trusted roots).
    #[arg(long, env = "PIFLEET_CA_FILE", value_name = "PATH", global = true)]
    ca_file: Option<PathBuf>,
    /// Group membership (repeatable); replaces the config's groups.
    #[arg(long = "group", global = true)]
    groups: Vec<Name>,
    /// GPIO backend: auto, rppal or sim.
    #[arg(long, env = "PIFLEET_GPIO", global = true)]
    gpio: Option<GpioChoice>,
    /// Where `initial = "restore"` outputs keep their state.
    #[arg(long, global = true)]
    state_file: Option<PathBuf>,
    /// Topic prefix.
    #[arg(long, env = "PIFLEET_PREFIX", global = true)]
    prefix: Option<String>,
    /// MQTT keep-alive in seconds (offline detection takes 1.5 times this).
    #[arg(long, global = true)]
    keep_alive: Option<u64>,
}

/// Exit codes: 0 clean stop, 1 runtime failure (GPIO), 2 bad configuration or usage.
const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn exit_code(e: &AgentError) -> u8 {
    match e {
        AgentError::Config(_) => EXIT_CONFIG,
        _ => EXIT_RUNTIME,
    }
}

fn load(args: &RunArgs) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if let Some(d) = &args.device {
        config.device = d.clone();
    }
    if let Some(b) = &args.broker {
        config.broker = b.clone();
    }
    // Read here rather than through clap so that no --password flag exists. Empty counts as
    // unset, as in most env files.
    let env_password = std::env::var("PIFLEET_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty())
        .map(Password::new);
    config.override_password(env_password, args.password_file.clone());
    if let Some(c) = &args.ca_file {
        config.ca_file = Some(c.clone());
    }
    if !args.groups.is_empty() {
        config.groups = args.groups.clone();
    }
    if let Some(g) = args.gpio {
        config.gpio = g;
    }
    if let Some(s) = &args.state_file {
        config.state_file = Some(s.clone());
    }
    if let Some(p) = &args.prefix {
        config.prefix = p.clone();
    }
    if let Some(k) = args.keep_alive {
        config.keep_alive_secs = k;
    }
    config.validate().map_err(|e| e.to_string())?;
    // Reads the password file and checks the CA file now: a bad one is a configuration error
    // (exit 2), not a reconnect loop. The agent resolves it again when it starts.
    config.security().map_err(|e| e.to_string())?;
    Ok(config)
}

/// The resolved login in one line for `check-config`: the Debug dump above it shows the
/// settings, this shows what they add up to (never the password).
fn login_summary(config: &Config, security: &Security) -> String {
    let login = match (security.user(), &security.password) {
        (Some(user), Some(_)) => format!("user {user:?} with a password"),
        (Some(user), None) => format!("user {user:?} without a password"),
        _ => "none".to_string(),
    };
    let tls = match (config.broker.scheme.is_tls(), &security.ca_file) {
        (false, _) => "off".to_string(),
        (true, Some(ca)) => format!("on, trusting {}", ca.display()),
        (true, None) => "on, trusting the system's roots".to_string(),
    };
    format!("login: {login}; TLS: {tls}")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    pifleet_client::logging::init("info,rumqttc=warn");

    match cli.command {
        Some(Cmd::PrintConfig) => {
            use std::io::Write;
            // `print!` would panic on a closed stdout (`print-config | head`).
            let _ = std::io::stdout().write_all(EXAMPLE.as_bytes());
            return ExitCode::SUCCESS;
        }
        Some(Cmd::CheckConfig) => {
            return match load(&cli.run) {
                Ok(c) => {
                    say!("{c:#?}");
                    match c.security() {
                        Ok(s) => say!("{}", login_summary(&c, &s)),
                        Err(e) => {
                            tell!("pifleet-agent: {e}");
                            return ExitCode::from(EXIT_CONFIG);
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tell!("pifleet-agent: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            };
        }
        Some(Cmd::Run) | None => {}
    }
    let config = match load(&cli.run) {
        Ok(c) => c,
        Err(e) => {
            tell!("pifleet-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async move {
        let (mut backend, sim) = match gpio::open(config.gpio) {
            Ok(b) => b,
            Err(e) => {
                tell!("pifleet-agent: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        if sim.is_some() && config.gpio == GpioChoice::Auto {
            tracing::info!("no Raspberry Pi GPIO found: using the simulated backend");
        }
        let (agent, handle) = match Agent::new(config, backend.as_mut(), sim.clone()) {
            Ok(a) => a,
            Err(e) => {
                tell!("pifleet-agent: {e}");
                return ExitCode::from(exit_code(&e));
            }
        };
        if sim.is_some() {
            tracing::info!("simulator console on stdin: {}", console::HELP);
            tokio::spawn(console::run_stdin(handle.clone()));
        }
        match agent.run(pifleet_client::signal::shutdown()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tell!("pifleet-agent: {e}");
                ExitCode::from(exit_code(&e))
            }
        }
    });
    // The console's stdin read sits on a blocking thread that never returns by itself; do not
    // wait for it.
    runtime.shutdown_background();
    code
}
