//! argon2id password hashing (m = 19 MiB, t = 2, p = 1, the OWASP baseline).
//!
//! Hashing costs tens of milliseconds of CPU by design, so it runs on the
//! blocking pool and never stalls the async workers that carry messages.

use std::sync::OnceLock;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::error::{AppError, AppResult};

fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Rejects passwords too short to be worth hashing.
pub fn validate(password: &str) -> AppResult<()> {
    let n = password.chars().count();
    if !(8..=256).contains(&n) {
        return Err(AppError::bad_request(
            "password must be 8 to 256 characters",
        ));
    }
    Ok(())
}

/// A PHC-format argon2id hash of the password.
pub async fn hash(password: &str) -> AppResult<String> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        hasher()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AppError::internal(format!("hashing password: {e}")))
    })
    .await
    .map_err(|e| AppError::internal(format!("hashing task: {e}")))?
}

/// Whether the password matches the hash. With no hash (unknown user) it
/// verifies against a fixed dummy hash so the answer takes the same time.
pub async fn verify(password: &str, hash: Option<&str>) -> AppResult<bool> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let known = hash.is_some();
    let hash = match hash {
        Some(h) => h.to_owned(),
        None => DUMMY
            .get_or_init(|| {
                let salt = SaltString::generate(&mut OsRng);
                hasher()
                    .hash_password(b"dummy password", &salt)
                    .map(|h| h.to_string())
                    .unwrap_or_default()
            })
            .clone(),
    };
    let password = password.to_owned();
    let ok = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                hasher()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .map_err(|e| AppError::internal(format!("verifying task: {e}")))?;
    Ok(ok && known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_verifies_and_uses_the_pinned_parameters() {
        let h = hash("correct horse").await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify("correct horse", Some(&h)).await.unwrap());
        assert!(!verify("wrong horse", Some(&h)).await.unwrap());
        assert!(!verify("correct horse", None).await.unwrap());
    }

    #[test]
    fn short_passwords_are_rejected() {
        assert!(validate("short").is_err());
        assert!(validate("long enough").is_ok());
    }
}
