//! The GitHub side of mayfly: App authentication (RS256 JWT, installation tokens), the REST
//! client, webhook verification and typed webhook payloads.

pub mod webhook;
