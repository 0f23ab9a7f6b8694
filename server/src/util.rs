//! Small helpers shared by every module: ids, time, random tokens, hashing,
//! periodic ticks.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A new opaque id with a type prefix (`u_`, `cv_`, `m_`…). Time-ordered
/// (UUIDv7) so that ids of one table land near each other in indexes.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())
}

/// Milliseconds since the Unix epoch, UTC.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The clock of a node's periodic background task (idle sweep, job
/// scheduler, WAL checkpoints): ticks every `period` until stopped. A tick
/// missed while the task was busy is not caught up: the next one comes a
/// full period later.
pub struct Every {
    interval: tokio::time::Interval,
}

impl Every {
    pub fn new(period: std::time::Duration) -> Every {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Every { interval }
    }

    /// Waits for the next tick: `true`, or `false` once `stop` is cancelled.
    pub async fn tick(&mut self, stop: &tokio_util::sync::CancellationToken) -> bool {
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = self.interval.tick() => true,
        }
    }
}

/// 32 random bytes, URL-safe base64: refresh tokens, quick-link tokens, secrets.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Hex SHA-256: tokens are stored hashed so a database leak does not leak sessions.
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_unique_and_ordered() {
        let a = new_id("m_");
        let b = new_id("m_");
        assert!(a.starts_with("m_") && a.len() == 34);
        assert_ne!(a, b);
        assert!(a < b, "UUIDv7 ids sort by creation");
    }

    #[test]
    fn tokens_are_long_and_distinct() {
        let a = random_token();
        assert_eq!(a.len(), 43);
        assert_ne!(a, random_token());
        assert_eq!(sha256_hex("abc").len(), 64);
    }
}
