//! convoy: a GitHub App that turns a merged pull request into an orchestrated
//! rollout across a fleet of environments.
//!
//! Data flows one way: webhook → inbox → worker → typed event → planner and
//! engine (pure) → effects executed by the runtime (drivers, reporter, store).

pub mod app;
pub mod cli_freeze;
pub mod commands;
pub mod config;
pub mod demo;
pub mod domain;
pub mod drift;
pub mod drivers;
pub mod duration;
pub mod engine;
pub mod git;
pub mod github;
pub mod metrics;
pub mod plan;
pub mod report;
pub mod runtime;
pub mod spec;
pub mod store;
pub mod suggest;
pub mod testkit;
pub mod web;
pub mod webhook;
