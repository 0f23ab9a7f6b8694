//! The `switchboard` binary as an operator uses it: `config print`,
//! `migrate`, `user create`, `serve`, and SIGTERM closing every client with
//! 1012 and exiting within the drain timeout.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn switchboard(dir: &std::path::Path, port: u16) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SWITCHBOARD_DATA_DIR", dir)
        .env("SWITCHBOARD_ADDR", format!("127.0.0.1:{port}"))
        .env("SWITCHBOARD_SHUTDOWN_DRAIN_S", "3")
        .env("RUST_LOG", "warn");
    cmd
}

#[test]
fn config_print_shows_the_commented_defaults() {
    let out = Command::new(BIN)
        .args(["config", "print"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("addr = \"0.0.0.0:8080\""), "{text}");
    assert!(text.contains("max_frame_bytes = 65536"), "{text}");
    assert!(text.lines().any(|l| l.starts_with('#')));
}

#[test]
fn invalid_configuration_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = switchboard(dir.path(), 1)
        .env("SWITCHBOARD_ADDR", "not-an-address")
        .arg("migrate")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SWITCHBOARD_ADDR"), "{err}");
}

#[tokio::test]
async fn sigterm_closes_clients_with_1012_and_exits_within_the_drain_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let status = switchboard(dir.path(), port)
        .arg("migrate")
        .status()
        .unwrap();
    assert!(status.success());
    let out = switchboard(dir.path(), port)
        .args([
            "user",
            "create",
            "--username",
            "root",
            "--password",
            "root-password",
            "--role",
            "admin",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("created admin u_"));
    // A customer role is refused on the command line.
    let out = switchboard(dir.path(), port)
        .args([
            "user",
            "create",
            "--username",
            "c1",
            "--password",
            "c1-password",
            "--role",
            "customer",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());

    let mut child = switchboard(dir.path(), port)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tokens: serde_json::Value = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": "root", "password": "root-password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = tokens["access_token"]
        .as_str()
        .expect("login works")
        .to_string();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = common::Client::connect(&format!("ws://127.0.0.1:{port}/ws")).await;
        c.auth(&token).await;
        clients.push(c);
    }

    let sent = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    for c in clients.iter_mut() {
        assert_eq!(c.expect_close().await, 1012);
    }
    // Exit within the 3 s drain timeout (plus process start-up slack).
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if sent.elapsed() > Duration::from_secs(6) {
            let _ = child.kill();
            panic!("server did not exit within the drain timeout");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(exit.success(), "exit status {exit:?}");
}
