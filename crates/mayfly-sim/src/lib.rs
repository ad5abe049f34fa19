//! mayfly-sim: a GitHub simulator held to GitHub's published REST and webhook contract
//! (`testdata/github/CONTRACTS.md`). It serves App auth, installation tokens, JIT runner configs,
//! runners, jobs and runs, delivers signed webhooks, brokers jobs to JIT runners, and serves each
//! simulated repository over git's dumb HTTP protocol; users sign in with GitHub (the OAuth web
//! flow of the App) and list the installations they can reach.
//! Invariant: every REST answer has a status and body shape GitHub's OpenAPI description allows.
#![forbid(unsafe_code)]
// `json!` of a full repository object (80 keys) needs a deeper macro recursion.
#![recursion_limit = "256"]

mod auth;
mod broker;
mod clock;
mod config;
mod control;
mod events;
mod faults;
mod git;
mod jitconfig;
mod keys;
mod manifest;
mod oauth;
mod payloads;
mod rest;
pub mod runner_client;
mod server;
mod state;
mod tls;
mod webhooks;

pub use config::{random_client_secret, SimConfig, TlsFiles};
pub use control::{
    ControlError, NewInstallation, NewJob, NewRepo, NewUser, SimControl, SimInstallation, SimJob,
    SimOAuthApp, SimRepo, SimUser, SCRIPT_STEP_NAME,
};
pub use faults::{FaultsError, RateLimitKind, RestFault, RestFaultKind};
pub use git::{GitError, CHECKOUT_MARKER, CHECKOUT_MARKER_CONTENT};
pub use jitconfig::{JitConfig, JitConfigError};
pub use keys::{AppKeyPair, KeysError};
pub use oauth::SIM_USER_PASSWORD;
pub use server::{Exchange, Sim, SimError, SimHandle};
pub use state::{AccountType, Conclusion, JobStatus, JobStep};
pub use tls::TlsError;
pub use webhooks::{Delivery, DeliveryOutcome, WebhooksError};
