//! The JSON fixtures under `protocol/fixtures/` are the canonical examples of the
//! wire protocol; the web client's tests read the same files. These tests keep
//! them honest:
//!
//! - every `client/` and `server/` fixture parses into its frame type and
//!   serializes back to exactly the same JSON value (so the fixtures are in
//!   canonical form and the types lose nothing);
//! - every frame type, and every shape of an `ok` reply, has a fixture;
//! - every `invalid/` fixture is rejected as a `ClientFrame`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use switchboard_protocol::{ClientFrame, OkBody, ServerFrame};

/// Every `type` a client may send. Keep in step with `ClientFrame`.
const CLIENT_TYPES: &[&str] = &[
    "auth", "ping", "send", "sync", "read", "typing", "recall", "consult", "presence", "accept",
    "transfer", "close", "rate", "watch", "assign",
];

/// Every `type` the server may send. Keep in step with `ServerFrame`.
const SERVER_TYPES: &[&str] = &[
    "ok",
    "error",
    "pong",
    "message",
    "receipt",
    "typing",
    "recalled",
    "conversation",
    "queue",
    "queue_update",
    "presence",
    "ticket",
    "sla",
    "rate_request",
    "notice",
];

/// Every shape of an `ok` reply (the variants of `OkBody`).
const OK_SHAPES: &[&str] = &["auth", "sent", "sync", "watch", "consulted", "empty"];

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Every fixture of a directory as (file name, text, JSON value), sorted by name.
/// Fails if the directory is missing or empty, if it holds anything but `.json`
/// files, or if a file is not exactly one JSON object.
fn load(name: &str) -> Vec<(String, String, Value)> {
    let dir = fixture_dir(name);
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read fixture directory {}: {e}", dir.display()));
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.expect("readable directory entry").path();
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or_else(|| panic!("fixture with a non-UTF-8 name in {}", dir.display()))
            .to_owned();
        assert!(
            path.is_file() && file.ends_with(".json"),
            "{}: only .json files belong in {}",
            file,
            dir.display()
        );
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{name}/{file} is not one JSON value: {e}"));
        assert!(value.is_object(), "{name}/{file} must hold a JSON object");
        out.push((file, text, value));
    }
    assert!(
        !out.is_empty(),
        "no fixtures in {}: the fixture files are missing",
        dir.display()
    );
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Parses `text` as `T`, serializes it back and checks that nothing changed.
fn round_trip<T: DeserializeOwned + Serialize>(
    dir: &str,
    file: &str,
    text: &str,
    original: &Value,
) -> T {
    let frame: T =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{dir}/{file} does not parse: {e}"));
    let again = serde_json::to_value(&frame)
        .unwrap_or_else(|e| panic!("{dir}/{file} does not serialize: {e}"));
    assert_eq!(
        &again,
        original,
        "{dir}/{file} is not canonical: re-serialized as\n{}",
        serde_json::to_string_pretty(&again).unwrap_or_default()
    );
    frame
}

/// Fails with the names that `expected` has and `found` lacks, or the other way round.
fn assert_covers(what: &str, expected: &[&str], found: &BTreeSet<String>) {
    let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    let missing: Vec<_> = expected.difference(found).collect();
    let unknown: Vec<_> = found.difference(&expected).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "{what}: no fixture for {missing:?}; not in the expected list: {unknown:?}"
    );
}

#[test]
fn client_fixtures_round_trip_and_cover_every_frame() {
    let mut found = BTreeSet::new();
    for (file, text, value) in load("client") {
        let frame: ClientFrame = round_trip("client", &file, &text, &value);
        assert_eq!(
            value["type"].as_str(),
            Some(frame.type_name()),
            "client/{file}: type_name() disagrees with the JSON"
        );
        found.insert(frame.type_name().to_owned());
    }
    assert_covers("client frame types", CLIENT_TYPES, &found);
}

#[test]
fn server_fixtures_round_trip_and_cover_every_frame() {
    let mut types = BTreeSet::new();
    let mut ok_shapes = BTreeSet::new();
    for (file, text, value) in load("server") {
        let frame: ServerFrame = round_trip("server", &file, &text, &value);
        let ty = value["type"]
            .as_str()
            .unwrap_or_else(|| panic!("server/{file} has no string `type`"));
        types.insert(ty.to_owned());
        if let ServerFrame::Ok { body, .. } = &frame {
            let shape = match body {
                OkBody::Auth(_) => "auth",
                OkBody::Sent { .. } => "sent",
                OkBody::Sync(_) => "sync",
                OkBody::Watch(_) => "watch",
                OkBody::Consulted { .. } => "consulted",
                OkBody::Empty {} => "empty",
            };
            ok_shapes.insert(shape.to_owned());
        }
    }
    assert_covers("server frame types", SERVER_TYPES, &types);
    assert_covers("ok reply shapes", OK_SHAPES, &ok_shapes);
}

#[test]
fn invalid_fixtures_are_rejected() {
    for (file, text, _) in load("invalid") {
        if let Ok(frame) = serde_json::from_str::<ClientFrame>(&text) {
            panic!("invalid/{file} parsed as a client frame: {frame:?}");
        }
    }
}
