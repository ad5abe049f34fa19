//! Integration tests of the GitHub simulator: a real server on 127.0.0.1:0, real HTTP clients,
//! and every REST answer and webhook checked against GitHub's published contract.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod contract;
mod support;

mod auth;
mod broker;
mod control;
mod faults;
mod git;
mod github_client;
mod jit;
mod oauth;
mod oauth_client;
mod tls;
mod webhooks;
