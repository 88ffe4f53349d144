//! GitHub App authentication: a short-lived RS256 JWT signed with the App's
//! key, exchanged for an installation access token per installation, which
//! is cached and renewed shortly before it expires.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use super::api::GitHubError;
use super::types::InstallationTokenResponse;
use crate::config::Secret;
use crate::domain::InstallationId;

/// Wall-clock time, injectable so token expiry is tested without waiting.
pub trait WallClock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock tests move by hand.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock(Mutex::new(start))
    }
    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::zero());
    }
}

impl WallClock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The App JWT's claims. GitHub: `iat` 60 s in the past (clock drift),
/// `exp` at most 10 minutes in the future, `iss` the App id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtClaims {
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
}

/// JWT lifetime: 9 minutes from now keeps `exp` under GitHub's 10-minute
/// limit even with a little clock drift.
const JWT_LIFETIME_SECS: i64 = 9 * 60;

impl JwtClaims {
    pub fn at(app_id: u64, now: DateTime<Utc>) -> Self {
        let now = now.timestamp();
        JwtClaims {
            iat: now - 60,
            exp: now + JWT_LIFETIME_SECS,
            iss: app_id.to_string(),
        }
    }
}

#[derive(Clone)]
struct CachedToken {
    token: Secret,
    expires_at: DateTime<Utc>,
}

/// The App's identity and its installation-token cache.
pub struct AppAuth {
    app_id: u64,
    key: EncodingKey,
    clock: Arc<dyn WallClock>,
    /// Renew this long before `expires_at` (tokens live one hour).
    renew_margin: Duration,
    /// One async lock per installation, so a burst of calls after expiry
    /// fetches one token, not one each.
    cache: Mutex<HashMap<InstallationId, Arc<tokio::sync::Mutex<Option<CachedToken>>>>>,
}

impl std::fmt::Debug for AppAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppAuth")
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

impl AppAuth {
    /// `pem` is the App's private key (PKCS#1 as GitHub issues it, or PKCS#8).
    pub fn new(app_id: u64, pem: &Secret, clock: Arc<dyn WallClock>) -> Result<Self, GitHubError> {
        let key = EncodingKey::from_rsa_pem(pem.expose().as_bytes()).map_err(|e| {
            GitHubError::Request(format!(
                "the GitHub App private key is not an RSA PEM key: {e}"
            ))
        })?;
        Ok(AppAuth {
            app_id,
            key,
            clock,
            renew_margin: Duration::from_secs(5 * 60),
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn with_renew_margin(mut self, margin: Duration) -> Self {
        self.renew_margin = margin;
        self
    }

    pub fn app_id(&self) -> u64 {
        self.app_id
    }

    /// A fresh App JWT (for `/app/...` endpoints and the token exchange).
    pub fn jwt(&self) -> Result<Secret, GitHubError> {
        let claims = JwtClaims::at(self.app_id, self.clock.now());
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map(Secret::new)
            .map_err(|e| GitHubError::Request(format!("cannot sign the App JWT: {e}")))
    }

    fn slot(&self, inst: InstallationId) -> Arc<tokio::sync::Mutex<Option<CachedToken>>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.entry(inst).or_default().clone()
    }

    fn fresh(&self, cached: &CachedToken) -> bool {
        let margin =
            chrono::Duration::from_std(self.renew_margin).unwrap_or(chrono::Duration::zero());
        self.clock.now() + margin < cached.expires_at
    }

    /// The installation's token: the cached one while it has more than the
    /// renew margin left, else one obtained with `fetch(jwt)`.
    pub async fn installation_token<F, Fut>(
        &self,
        inst: InstallationId,
        fetch: F,
    ) -> Result<Secret, GitHubError>
    where
        F: FnOnce(Secret) -> Fut,
        Fut: Future<Output = Result<InstallationTokenResponse, GitHubError>>,
    {
        let slot = self.slot(inst);
        let mut guard = slot.lock().await;
        if let Some(cached) = guard.as_ref()
            && self.fresh(cached)
        {
            return Ok(cached.token.clone());
        }
        let jwt = self.jwt()?;
        let answer = fetch(jwt).await?;
        let token = Secret::new(answer.token);
        *guard = Some(CachedToken {
            token: token.clone(),
            expires_at: answer.expires_at,
        });
        Ok(token)
    }

    /// Forgets the installation's token (after GitHub answered 401 to it).
    pub async fn invalidate(&self, inst: InstallationId) {
        let slot = self.slot(inst);
        *slot.lock().await = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const KEY: &str = include_str!("../../tests/fixtures/test-app-key.pem");

    #[tokio::test]
    async fn token_is_cached_until_the_renew_margin_then_renewed() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let auth =
            AppAuth::new(7, &Secret::new(KEY), clock.clone()).unwrap_or_else(|e| panic!("{e}"));
        let fetches = AtomicUsize::new(0);
        let get = || async {
            auth.installation_token(InstallationId(1), |_jwt| async {
                let n = fetches.fetch_add(1, Ordering::SeqCst);
                Ok(InstallationTokenResponse {
                    token: format!("tok-{n}"),
                    expires_at: clock.now() + chrono::Duration::hours(1),
                })
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .expose()
            .to_owned()
        };
        assert_eq!(get().await, "tok-0");
        clock.advance(Duration::from_secs(54 * 60 + 59));
        assert_eq!(get().await, "tok-0", "still more than 5 minutes left");
        clock.advance(Duration::from_secs(2));
        assert_eq!(get().await, "tok-1", "renewed shortly before expiry");
        assert_eq!(get().await, "tok-1");
        auth.invalidate(InstallationId(1)).await;
        assert_eq!(get().await, "tok-2", "a 401 forces a new token");
        assert_eq!(fetches.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn claims_follow_github_rules() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_default();
        let c = JwtClaims::at(42, now);
        assert_eq!(c.iat, now.timestamp() - 60);
        assert!(c.exp > now.timestamp());
        assert!(c.exp - c.iat <= 600);
        assert_eq!(c.iss, "42");
    }
}
