//! HTTP routes: the webhook intake, health, metrics, pages and the JSON API.
