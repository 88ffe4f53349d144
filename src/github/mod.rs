//! The one place through which convoy talks to GitHub: App authentication,
//! typed API calls, retries and rate limits.
