//! `switchboard-loadtest`: the load generator for Switchboard.
//!
//! This is the skeleton: the command line, the scenario names and the rule
//! that only loopback targets may be loaded. The scenarios themselves
//! (`connections`, `group`, `chat`, `storm`, `dispatch`) and the bare
//! `--baseline` server are filled in by the load-test work.
//!
//! Layout:
//! - [`target`]: parsing and checking the target address.

mod target;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Scenario {
    Connections,
    Group,
    Chat,
    Storm,
    Dispatch,
}

#[derive(Parser, Debug)]
#[command(
    name = "switchboard-loadtest",
    about = "Load generator for Switchboard (loopback targets only)"
)]
struct Cli {
    /// Scenario to run.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Server base URL; must resolve to a loopback address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let addr = target::loopback_target(&cli.target)?;
    anyhow::bail!(
        "scenario {:?} against {addr} is not implemented yet in this skeleton",
        cli.scenario
    )
}
