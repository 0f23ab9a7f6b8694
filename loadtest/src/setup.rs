//! Preparing a run over the REST API: log in as the administrator, make many
//! customers cheaply (one quick link redeemed N times: no password hashing),
//! make groups, and for dispatch the staff users and a team.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::{stream, StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

/// Quick-link redemptions in flight. Why 64: each is one small transaction
/// on the server; 64 keeps its workers and the database busy without
/// queueing thousands of requests in its accept backlog.
const REDEEM_CONCURRENCY: usize = 64;
/// Group creations in flight. Why 8: each inserts a conversation and its
/// member rows in one transaction; writes serialize in the store anyway.
const GROUP_CONCURRENCY: usize = 8;
/// How long one REST call may take. Why 60 s: creating a group of 10,000
/// members inserts 10,000 rows in one transaction, which takes seconds on a
/// busy two-core machine; anything slower is a failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Lifetime of the quick link, in seconds. Why 1 h: it must outlive the
/// setup of the largest run, and a leftover link expires soon after.
const QUICK_LINK_TTL_S: u64 = 3600;
/// Largest `max_uses` asked of one quick link, so that bigger runs use
/// several links. Why 50,000: far more than any single scenario needs while
/// keeping each link's use count small.
const MAX_USES_PER_LINK: usize = 50_000;

/// A user the tool can connect as.
#[derive(Debug, Clone)]
pub(crate) struct Account {
    pub(crate) id: String,
    pub(crate) token: String,
}

#[derive(Deserialize)]
struct TokenPair {
    access_token: String,
    user: UserId,
}

#[derive(Deserialize)]
struct UserId {
    id: String,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct QuickLink {
    token: String,
}

/// A REST client logged in as the administrator.
pub(crate) struct Rest {
    http: reqwest::Client,
    base: String,
    admin_token: String,
    run_id: String,
}

impl Rest {
    /// Logs in as the administrator at `base` (`http://host:port`).
    pub(crate) async fn login(
        base: &str,
        user: &str,
        password: &str,
        run_id: &str,
    ) -> anyhow::Result<Rest> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            // Every request goes to one loopback host: keep enough idle
            // connections for the concurrent redemptions.
            .pool_max_idle_per_host(REDEEM_CONCURRENCY)
            .no_proxy()
            .build()?;
        let mut rest = Rest {
            http,
            base: base.trim_end_matches('/').to_string(),
            admin_token: String::new(),
            run_id: run_id.to_string(),
        };
        let pair: TokenPair = rest
            .post(
                "/api/v1/auth/login",
                None,
                &json!({"username": user, "password": password}),
            )
            .await
            .context("logging in as the administrator (--admin-user / --admin-password)")?;
        rest.admin_token = pair.access_token;
        Ok(rest)
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: &Value,
    ) -> anyhow::Result<T> {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.with_context(|| format!("POST {path}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            anyhow::bail!("POST {path}: HTTP {status}: {}", crate::body::clip(&text));
        }
        serde_json::from_str(&text).with_context(|| format!("POST {path}: unexpected reply"))
    }

    /// HTTP status of a POST that may not be implemented (dispatch routes).
    pub(crate) async fn try_post(&self, path: &str, body: &Value) -> anyhow::Result<Option<Value>> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.admin_token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = resp.status().as_u16();
        if matches!(status, 404 | 405 | 503) {
            return Ok(None);
        }
        let text = resp.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            anyhow::bail!("POST {path}: HTTP {status}: {}", crate::body::clip(&text));
        }
        Ok(Some(serde_json::from_str(&text)?))
    }

    /// `n` new temporary customers, made `REDEEM_CONCURRENCY` at a time;
    /// `done` counts them for the progress line.
    pub(crate) async fn customers(
        &self,
        n: usize,
        done: Arc<AtomicUsize>,
    ) -> anyhow::Result<Vec<Account>> {
        let mut accounts = Vec::with_capacity(n);
        let mut start = 0;
        while start < n {
            let uses = (n - start).min(MAX_USES_PER_LINK);
            let link: QuickLink = self
                .post(
                    "/api/v1/quick-links",
                    Some(&self.admin_token),
                    &json!({"max_uses": uses, "ttl_s": QUICK_LINK_TTL_S}),
                )
                .await
                .context("making a quick link")?;
            let made: Vec<Account> = stream::iter(start..start + uses)
                .map(|i| {
                    let link = &link.token;
                    let done = &done;
                    async move {
                        let pair: TokenPair = self
                            .post(
                                "/api/v1/auth/quick",
                                None,
                                &json!({"token": link, "name": format!("lt-{}-{i}", self.run_id)}),
                            )
                            .await
                            .context("redeeming the quick link")?;
                        done.fetch_add(1, Ordering::Relaxed);
                        anyhow::Ok(Account {
                            id: pair.user.id,
                            token: pair.access_token,
                        })
                    }
                })
                .buffered(REDEEM_CONCURRENCY)
                .try_collect()
                .await?;
            accounts.extend(made);
            start += uses;
        }
        Ok(accounts)
    }

    /// Creates one group per member list, a few at a time; their ids in order.
    pub(crate) async fn groups(
        &self,
        member_lists: Vec<Vec<String>>,
    ) -> anyhow::Result<Vec<String>> {
        stream::iter(member_lists.into_iter().enumerate())
            .map(|(i, members)| async move {
                let created: Created = self
                    .post(
                        "/api/v1/groups",
                        Some(&self.admin_token),
                        &json!({"title": format!("lt-{}-{i}", self.run_id), "members": members}),
                    )
                    .await
                    .context("creating a group")?;
                anyhow::Ok(created.id)
            })
            .buffered(GROUP_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Creates a staff user with the given max concurrency and logs in as it
    /// (one password hash each, so only for the few agents of `dispatch`).
    pub(crate) async fn staff(
        &self,
        role: &str,
        i: usize,
        capacity: u64,
    ) -> anyhow::Result<Account> {
        let username = format!("lt-{}-{role}-{i}", self.run_id);
        let password = format!("lt-pw-{}-{i}-load", self.run_id);
        let _: Value = self
            .post(
                "/api/v1/users",
                Some(&self.admin_token),
                &json!({"username": username, "password": password, "name": username,
                        "role": role, "max_concurrency": capacity}),
            )
            .await
            .with_context(|| format!("creating {role} {username}"))?;
        let pair: TokenPair = self
            .post(
                "/api/v1/auth/login",
                None,
                &json!({"username": username, "password": password}),
            )
            .await
            .with_context(|| format!("logging in as {username}"))?;
        Ok(Account {
            id: pair.user.id,
            token: pair.access_token,
        })
    }

    pub(crate) fn run_id(&self) -> &str {
        &self.run_id
    }
}
