//! The webhook path as an attacker reaches it: a signature header and a body, verified, then
//! (when the signature is valid) parsed as each event mayfly handles. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mayfly_github::webhook::{signature_header, WebhookEvent, WebhookSecret, WebhookVerifier};

const EVENTS: [&str; 5] = ["workflow_job", "ping", "installation", "installation_repositories", "push"];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let secret = WebhookSecret::new(b"fuzz-secret".to_vec());
    let verifier = WebhookVerifier::new(vec![secret.clone()]);
    // The fuzzer's bytes as a forged header (split at the first newline) over the rest.
    let (header, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&rest[..0], rest),
    };
    let _ = verifier.verify(Some(header), body);
    // And a correctly signed delivery, so the parser sees every input too.
    let signed = signature_header(&secret, rest);
    if verifier.verify(Some(signed.as_bytes()), rest).is_ok() {
        let event = EVENTS[usize::from(selector) % EVENTS.len()];
        let _ = WebhookEvent::parse(event, rest);
    }
});
