//! The application error: every failure maps to a stable [`ErrorCode`], an HTTP
//! status and a public message. Internal detail (database text, I/O errors) is
//! logged once where the error is turned into a reply and never sent to clients.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use switchboard_protocol::ErrorCode;

/// A failure of a request, WebSocket or REST.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A failure the client caused or may see: the message is written for people.
    #[error("{code:?}: {message}")]
    Public { code: ErrorCode, message: String },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("internal: {0}")]
    Internal(String),
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        AppError::Public {
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::TooLarge, message)
    }
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::RateLimited, message)
    }
    pub fn internal(detail: impl Into<String>) -> Self {
        AppError::Internal(detail.into())
    }

    /// The stable code clients see.
    pub fn code(&self) -> ErrorCode {
        match self {
            AppError::Public { code, .. } => *code,
            AppError::Db(e) if is_unreachable(e) => ErrorCode::Unavailable,
            AppError::Db(_) | AppError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The text clients see; never internal detail.
    pub fn public_message(&self) -> String {
        match self {
            AppError::Public { message, .. } => message.clone(),
            AppError::Db(e) if is_unreachable(e) => {
                "the database is not reachable; try again shortly".into()
            }
            AppError::Db(_) | AppError::Internal(_) => "internal error; it has been logged".into(),
        }
    }

    /// Logs internal detail once; public errors are the client's business.
    pub fn log(&self) {
        match self {
            AppError::Public { .. } => {}
            other => tracing::error!(error = %other, "request failed"),
        }
    }
}

fn is_unreachable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
    )
}

/// Whether a database error is a unique-constraint violation, on either engine.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.is_unique_violation(),
        _ => false,
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        self.log();
        let code = self.code();
        let status =
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({"code": code, "message": self.public_message()});
        (status, axum::Json(body)).into_response()
    }
}
