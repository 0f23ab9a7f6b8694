//! `switchboard-loadtest`: the load generator for Switchboard.
//!
//! `switchboard-loadtest <scenario> [--target URL] [--admin-user U
//! --admin-password P] [--json] [--source-ips 127.0.0.1,127.0.0.2,...]
//! [--server-pid PID] [scenario options]`. Scenarios: `connections`,
//! `group`, `chat`, `storm`, `dispatch`; `group` and `connections` can also
//! measure a bare tokio-tungstenite server (`--baseline`, `--compare`).
//! Only loopback targets and source addresses are accepted. Each run prints
//! a live progress line on stderr and a summary (or, with `--json`, one JSON
//! object) on stdout; the exit status is 0 when every check passed, 1 when
//! one failed or the run could not be done, 3 when the server does not offer
//! the feature the scenario measures.
//!
//! Layout:
//! - [`target`]: the loopback rule for targets and source addresses.
//! - [`net`]: opening WebSocket connections (source binding, buffer sizes).
//! - [`setup`]: REST: admin login, customers, groups, staff users.
//! - [`client`]: the protocol client shared by the scenarios.
//! - [`body`]: tagged message bodies and fast reading of `message` events.
//! - [`stats`]: counters and latency histograms shared by connections.
//! - [`procfs`]: memory, CPU and file limits from `/proc`.
//! - [`progress`]: the live progress line.
//! - [`report`]: human summary, JSON, baseline comparison.
//! - [`baseline`]: the bare fan-out server.
//! - [`scenarios`]: one module per scenario.

mod baseline;
mod body;
mod client;
mod net;
mod procfs;
mod progress;
mod report;
mod scenarios;
mod setup;
mod stats;
mod target;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use scenarios::{Ctx, FeatureUnavailable, Outcome, UNAVAILABLE_EXIT};

#[derive(Parser, Debug)]
#[command(
    name = "switchboard-loadtest",
    about = "Load generator for Switchboard (loopback targets only)",
    after_help = "Exit status: 0 all checks passed; 1 a check failed or the run could not be \
                  done; 2 bad usage; 3 the server answered `unavailable` for the feature the \
                  scenario measures (dispatch before the dispatch release).\n\
                  Load runs need the server's rate limit raised: \
                  SWITCHBOARD_RATE_PER_SEC=1000000 SWITCHBOARD_RATE_BURST=1000000."
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Server base URL; must be a loopback address.
    #[arg(
        long,
        global = true,
        env = "LOADTEST_TARGET",
        default_value = "http://127.0.0.1:8080"
    )]
    target: String,
    /// Administrator used to make users and groups over REST.
    #[arg(
        long,
        global = true,
        env = "LOADTEST_ADMIN_USER",
        default_value = "admin"
    )]
    admin_user: String,
    /// The administrator's password.
    #[arg(
        long,
        global = true,
        env = "LOADTEST_ADMIN_PASSWORD",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true
    )]
    admin_password: String,
    /// Print one JSON object on stdout instead of the human summary.
    #[arg(long, global = true)]
    json: bool,
    /// Loopback addresses to bind outgoing sockets to, in turn (to pass the
    /// ~28k ephemeral ports of one source address), e.g. 127.0.0.1,127.0.0.2.
    #[arg(long, global = true, value_delimiter = ',')]
    source_ips: Vec<String>,
    /// The server's process id: its memory and CPU are reported.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// N idle authenticated connections: connects/s and server memory per connection.
    Connections(scenarios::connections::ConnectionsArgs),
    /// One group of N members, M messages: deliveries/s, latency, delivered vs expected.
    Group(scenarios::group::GroupArgs),
    /// C two-member conversations sending R msgs/s each: ack and delivery latency, seq checks.
    Chat(scenarios::chat::ChatArgs),
    /// N clients dropping and reconnecting with auth and sync: reconnects/s, no gaps.
    Storm(scenarios::storm::StormArgs),
    /// Customers consult, agents take what they are assigned: assignments/s.
    Dispatch(scenarios::dispatch::DispatchArgs),
    /// The bare fan-out server used by --baseline (started by the tool itself).
    #[command(hide = true)]
    BaselineServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::Connections(_) => "connections",
            Scenario::Group(_) => "group",
            Scenario::Chat(_) => "chat",
            Scenario::Storm(_) => "storm",
            Scenario::Dispatch(_) => "dispatch",
            Scenario::BaselineServer { .. } => "baseline-server",
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Scenario::BaselineServer { listen } = &cli.scenario {
        return match baseline::serve(*listen).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("baseline server: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let name = cli.scenario.name();
    match run(&cli).await {
        Ok(outcome) => print_outcome(&outcome, cli.json),
        Err(e) => {
            let unavailable = e.downcast_ref::<FeatureUnavailable>().is_some();
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "scenario": name,
                        "ok": false,
                        "unavailable": unavailable,
                        "error": format!("{e:#}"),
                    })
                );
            }
            if unavailable {
                eprintln!("{name}: {e}");
                ExitCode::from(UNAVAILABLE_EXIT)
            } else {
                eprintln!("{name}: error: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(cli: &Cli) -> anyhow::Result<Outcome> {
    let server = target::loopback_target(&cli.target)?;
    let sources = target::loopback_sources(&cli.source_ips, server)?;
    let (http_base, ws_url) = target::urls(server);
    let ctx = Ctx {
        http_base,
        admin_user: cli.admin_user.clone(),
        admin_password: cli.admin_password.clone(),
        connector: Arc::new(net::Connector::new(server, ws_url, sources)),
        server: cli.server_pid.map(procfs::Watched::new),
        run_id: run_id(),
    };
    if let Some(pid) = cli.server_pid {
        if procfs::rss_kib(pid).is_none() {
            anyhow::bail!("--server-pid {pid}: no such process (or /proc is not readable)");
        }
    }
    match &cli.scenario {
        Scenario::Connections(args) => scenarios::connections::run(&ctx, args).await,
        Scenario::Group(args) => scenarios::group::run(&ctx, args).await,
        Scenario::Chat(args) => scenarios::chat::run(&ctx, args).await,
        Scenario::Storm(args) => scenarios::storm::run(&ctx, args).await,
        Scenario::Dispatch(args) => scenarios::dispatch::run(&ctx, args).await,
        Scenario::BaselineServer { .. } => unreachable!("handled in main"),
    }
}

fn print_outcome(outcome: &Outcome, json: bool) -> ExitCode {
    let ok = match outcome {
        Outcome::Single(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.human());
            }
            report.ok()
        }
        Outcome::Compared {
            baseline,
            switchboard,
            comparison,
        } => {
            if json {
                println!("{}", comparison.json(baseline, switchboard));
            } else {
                print!("{}", comparison.human(baseline, switchboard));
            }
            baseline.ok() && switchboard.ok()
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A short id unique to this run: users, groups and message ids carry it so
/// that runs against the same database never collide.
fn run_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    format!("{}{}", base36(ms), base36(u64::from(std::process::id())))
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII digits")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn options_parse_anywhere() {
        let cli = Cli::try_parse_from([
            "switchboard-loadtest",
            "group",
            "--members",
            "20",
            "--target",
            "http://127.0.0.1:18090",
            "--source-ips",
            "127.0.0.1,127.0.0.2",
            "--json",
        ])
        .unwrap();
        assert_eq!(cli.source_ips, ["127.0.0.1", "127.0.0.2"]);
        assert!(cli.json);
        assert_eq!(cli.target, "http://127.0.0.1:18090");
        assert!(Cli::try_parse_from(["switchboard-loadtest", "group", "--compare"]).is_err());
        assert!(
            Cli::try_parse_from(["switchboard-loadtest", "group", "--members", "20000"]).is_err()
        );
    }

    #[test]
    fn run_ids_are_short_and_plain() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        let id = run_id();
        assert!(id.len() < 16 && id.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
