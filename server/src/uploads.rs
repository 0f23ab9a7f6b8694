//! Attachments: a small file store under the data directory and the `uploads`
//! table. An upload is readable by its uploader and by the members of every
//! conversation it was sent into (`upload_conversations`).
//!
//! Only an allow-list of types is accepted, and images must start with their
//! format's magic bytes, so a script cannot be served as a picture.

use std::path::PathBuf;

use serde::Serialize;
use sqlx::Row;
use switchboard_protocol::{Role, UserRef};

use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::util::{new_id, now_ms};

/// Where attachment bytes live: `<data_dir>/uploads/<id>`. With several nodes
/// this directory must be shared storage (documented in the README).
#[derive(Clone)]
pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    pub fn new(root: PathBuf) -> std::io::Result<FileStore> {
        std::fs::create_dir_all(&root)?;
        Ok(FileStore { root })
    }

    fn path(&self, id: &str) -> AppResult<PathBuf> {
        // Ids are generated here, but never let one escape the directory.
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(AppError::not_found("no such upload"));
        }
        Ok(self.root.join(id))
    }

    /// Writes a file atomically (temp file, then rename).
    pub async fn put(&self, id: &str, bytes: &[u8]) -> AppResult<()> {
        let path = self.path(id)?;
        let tmp = path.with_extension("part");
        tokio::fs::write(&tmp, bytes)
            .await
            .map_err(|e| AppError::internal(format!("writing upload: {e}")))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| AppError::internal(format!("storing upload: {e}")))
    }

    pub async fn get(&self, id: &str) -> AppResult<Vec<u8>> {
        tokio::fs::read(self.path(id)?)
            .await
            .map_err(|e| AppError::internal(format!("reading upload: {e}")))
    }
}

/// Types an upload may have.
pub const ALLOWED_TYPES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "application/pdf",
    "text/plain",
    "application/zip",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
];

fn magic_matches(mime: &str, bytes: &[u8]) -> bool {
    match mime {
        "image/png" => bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "image/jpeg" => bytes.starts_with(&[0xFF, 0xD8, 0xFF]),
        "image/gif" => bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a"),
        "image/webp" => bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP",
        "application/pdf" => bytes.starts_with(b"%PDF-"),
        "application/zip"
        | "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        | "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        | "application/vnd.openxmlformats-officedocument.presentationml.presentation" => {
            bytes.starts_with(b"PK\x03\x04")
        }
        "text/plain" => std::str::from_utf8(bytes).is_ok(),
        _ => false,
    }
}

/// An upload as clients see it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct UploadInfo {
    pub id: String,
    pub url: String,
    pub mime: String,
    pub size: i64,
    pub name: String,
}

fn clean_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control() && *c != '"')
        .take(200)
        .collect();
    if cleaned.trim().is_empty() {
        "file".into()
    } else {
        cleaned
    }
}

/// Checks and stores an upload.
pub async fn save_upload(
    state: &AppState,
    owner: &UserRef,
    name: &str,
    declared_mime: &str,
    bytes: &[u8],
) -> AppResult<UploadInfo> {
    let mime = declared_mime
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if !ALLOWED_TYPES.contains(&mime.as_str()) {
        return Err(AppError::bad_request(format!(
            "file type {mime:?} is not allowed; allowed: images (png, jpeg, gif, webp), pdf, txt, zip, docx, xlsx, pptx"
        )));
    }
    if bytes.is_empty() {
        return Err(AppError::bad_request("the file is empty"));
    }
    let max = state.config().limits.upload_max_bytes;
    if bytes.len() > max {
        return Err(AppError::too_large(format!(
            "the file is larger than {max} bytes"
        )));
    }
    if !magic_matches(&mime, bytes) {
        return Err(AppError::bad_request(format!(
            "the file's content does not match its type {mime}"
        )));
    }
    let id = new_id("up_");
    let name = clean_name(name);
    state.files().put(&id, bytes).await?;
    sqlx::query(
        "INSERT INTO uploads (id, owner_id, name, mime, size, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(&owner.id)
    .bind(&name)
    .bind(&mime)
    .bind(bytes.len() as i64)
    .bind(now_ms())
    .execute(state.store().write())
    .await?;
    Ok(UploadInfo {
        url: format!("/api/v1/uploads/{id}"),
        id,
        mime,
        size: bytes.len() as i64,
        name,
    })
}

/// An upload's metadata and bytes, if the user may read it: the uploader, a
/// member of a conversation it was sent into, a supervisor/admin, or an
/// agent who serves or served the customer of a service conversation it was
/// sent into (that agent may read the conversation, see
/// [`crate::conversations::Access::Served`]).
pub async fn read_upload(
    state: &AppState,
    user: &UserRef,
    id: &str,
) -> AppResult<(UploadInfo, Vec<u8>)> {
    let row = sqlx::query(
        "SELECT u.owner_id, u.name, u.mime, u.size, \
         (SELECT 1 FROM upload_conversations uc JOIN conversation_members m ON m.conv_id = uc.conv_id \
          WHERE uc.upload_id = u.id AND m.user_id = $2 LIMIT 1) AS shared \
         FROM uploads u WHERE u.id = $1",
    )
    .bind(id)
    .bind(&user.id)
    .fetch_optional(state.store().read())
    .await?;
    let not_found = || AppError::not_found("no such upload");
    let row = row.ok_or_else(not_found)?;
    let owner: String = row.try_get("owner_id")?;
    let shared: Option<i64> = row.try_get("shared")?;
    let overseer = matches!(user.role, Role::Supervisor | Role::Admin);
    if owner != user.id
        && shared.is_none()
        && !overseer
        && !(user.role == Role::Agent && served_upload(state, &user.id, id).await?)
    {
        return Err(not_found());
    }
    let info = UploadInfo {
        id: id.to_string(),
        url: format!("/api/v1/uploads/{id}"),
        mime: row.try_get("mime")?,
        size: row.try_get("size")?,
        name: row.try_get("name")?,
    };
    let bytes = state.files().get(id).await?;
    Ok((info, bytes))
}

/// Whether the upload was sent into a service conversation of a customer
/// `agent` serves or has served.
async fn served_upload(state: &AppState, agent: &str, upload: &str) -> AppResult<bool> {
    let rows = sqlx::query(
        "SELECT DISTINCT c.customer_id FROM upload_conversations uc \
         JOIN conversations c ON c.id = uc.conv_id \
         WHERE uc.upload_id = $1 AND c.kind = 'service' AND c.customer_id IS NOT NULL",
    )
    .bind(upload)
    .fetch_all(state.store().read())
    .await?;
    for row in rows {
        let customer: String = row.try_get("customer_id")?;
        if crate::customers::serves(state.store(), agent, &customer).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_of_paths_and_controls() {
        assert_eq!(clean_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_name("C:\\x\\报告.pdf"), "报告.pdf");
        assert_eq!(clean_name("a\"b\n.txt"), "ab.txt");
        assert_eq!(clean_name(""), "file");
    }

    #[test]
    fn content_must_match_the_declared_type() {
        assert!(magic_matches("image/png", b"\x89PNG\r\n\x1a\nrest"));
        assert!(!magic_matches("image/png", b"<script>"));
        assert!(magic_matches("text/plain", "你好".as_bytes()));
        assert!(!magic_matches("text/plain", b"\xff\xfe"));
    }
}
