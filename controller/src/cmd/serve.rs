//! `pifleet serve`: the web dashboard as a standalone process, an MQTT client of `--broker`
//! with the CLI's login and TLS options. Off loopback, people log in with a controller identity,
//! checked by the broker (see `pifleet_web::auth::BrokerLogins`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use pifleet_proto::Topics;
use pifleet_web::auth::BrokerLogins;
use pifleet_web::{BrokerLogin, Logins, Options};

use crate::cli::Global;
use crate::error::CliError;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to serve the dashboard on (loopback by default; any other requires logins).
    #[arg(long, default_value = pifleet_web::DEFAULT_LISTEN, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The recorder's history directory (default: PIFLEET_HISTORY_DIR, else where a recorder
    /// on this machine writes by default, as for `pifleet history`).
    #[arg(long, value_name = "DIR")]
    pub history_dir: Option<PathBuf>,
    /// On a non-loopback address, serve without logins (a trusted network only).
    #[arg(long)]
    pub allow_anonymous: bool,
}

pub async fn exec(g: &Global, topics: Topics, a: &ServeArgs) -> Result<u8, CliError> {
    let security = g.security()?;
    let logins: Option<Arc<dyn Logins>> = (!a.allow_anonymous).then(|| {
        Arc::new(BrokerLogins {
            url: g.broker.clone(),
            ca_file: g.ca_file.clone(),
        }) as Arc<dyn Logins>
    });
    let options = Options {
        history_dir: a
            .history_dir
            .clone()
            .unwrap_or_else(pifleet_web::default_history_dir),
        logins,
        allow_anonymous: a.allow_anonymous,
        // Plain HTTP: off loopback, serve it behind a TLS proxy (docs/protocol.md).
        secure_cookie: false,
        tls: None,
    };
    let login = BrokerLogin {
        url: g.broker.clone(),
        client_id: crate::session::client_id(&security),
        security,
    };
    let running = pifleet_web::start(a.listen, login, topics, options)
        .await
        .map_err(|e| match e {
            pifleet_web::Error::Exposed(_) => CliError::Usage(e.to_string()),
            e => CliError::Broker(e.to_string()),
        })?;
    println!("pifleet: dashboard on http://{}/", running.addr);
    use std::io::Write;
    let _ = std::io::stdout().flush();
    pifleet_client::signal::shutdown().await;
    Ok(crate::error::EXIT_OK)
}
