//! Webhook deliveries from GitHub: signature verification (always first) and typed payloads.

mod payload;
mod signature;

pub use payload::{
    Account, Hook, Installation, InstallationAction, InstallationEvent, InstallationRef,
    InstallationRepositoriesAction, InstallationRepositoriesEvent, PayloadError, PingEvent,
    Repository, RepositoryRef, WebhookEvent, WorkflowJob, WorkflowJobAction, WorkflowJobEvent,
};
pub use signature::{
    signature_header, SignatureError, WebhookSecret, WebhookVerifier, SIGNATURE_HEADER,
};
