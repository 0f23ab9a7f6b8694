//! The `switchboard` command: parses the command line, starts tracing, and
//! runs the server or one of the administrative commands.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchboard_protocol::Role;
use switchboard_server::auth;
use switchboard_server::config::{Config, LogFormat, DEFAULT_TOML};
use switchboard_server::store::Store;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Real-time messaging and customer-service server"
)]
struct Cli {
    /// TOML configuration file; environment variables override it.
    #[arg(long, global = true, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a staff user (the first administrator is made this way).
    Create {
        #[arg(long)]
        username: String,
        #[arg(long)]
        password: String,
        /// admin, supervisor or agent.
        #[arg(long)]
        role: String,
        /// Display name (defaults to the username).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the commented default configuration.
    Print,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Config {
        command: ConfigCommand::Print,
    }) = &cli.command
    {
        print!("{DEFAULT_TOML}");
        return Ok(());
    }
    let config = Config::load(cli.config.as_deref())?;
    init_tracing(config.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            let store = Store::open(&config).await.context("opening the database")?;
            store.migrate().await.context("applying migrations")?;
            println!("migrations applied");
            Ok(())
        }
        Command::User {
            command:
                UserCommand::Create {
                    username,
                    password,
                    role,
                    name,
                },
        } => create_user(config, username, password, role, name).await,
        Command::Config { .. } => Ok(()),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received; shutting down");
            shutdown.cancel();
        });
    }
    switchboard_server::run(config, listener, shutdown).await?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn create_user(
    config: Config,
    username: String,
    password: String,
    role: String,
    name: Option<String>,
) -> anyhow::Result<()> {
    let role = Role::parse(&role)
        .filter(|r| r.is_staff())
        .context("--role must be admin, supervisor or agent")?;
    let store = Store::open(&config).await.context("opening the database")?;
    store.migrate().await.context("applying migrations")?;
    let user = auth::create_staff(
        &store,
        auth::NewStaff {
            username,
            password,
            name,
            role,
            skills: Vec::new(),
            max_concurrency: None,
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!(e.public_message()))?;
    println!("created {} {} ({})", user.role.as_str(), user.id, user.name);
    store.close().await;
    Ok(())
}
