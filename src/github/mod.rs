//! The one place through which convoy talks to GitHub: App authentication,
//! typed API calls, retries and rate limits.

pub mod api;
pub mod auth;
pub mod client;
pub mod limits;
pub mod retry;
pub mod types;

pub use api::{GitHubApi, GitHubError, GitHubResult};
pub use auth::{AppAuth, JwtClaims, ManualClock, SystemClock, WallClock};
pub use client::{GitHubClient, GitHubClientConfig, RateLimitGauge};
pub use retry::RetryPolicy;
pub use types::*;
