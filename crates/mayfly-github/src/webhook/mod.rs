//! Webhook deliveries from GitHub: signature verification (always first) and typed payloads.

mod signature;

pub use signature::{
    signature_header, SignatureError, WebhookSecret, WebhookVerifier, SIGNATURE_HEADER,
};
