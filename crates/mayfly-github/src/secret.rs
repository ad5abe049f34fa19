//! Secret values that cross the GitHub boundary. Each prints `[redacted]` in Debug and Display
//! and is zeroized on drop (via `secrecy`); reading one takes an explicit `expose()`.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

macro_rules! secret_string {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(SecretString);

        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
                Self(SecretString::from(value.into()))
            }

            /// The secret itself. Call only where it leaves the process on purpose.
            pub fn expose(&self) -> &str {
                self.0.expose_secret()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "([redacted])"))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[redacted]")
            }
        }
    };
}

secret_string!(
    /// An installation access token (`ghs_…`), opaque and of any length.
    InstallationToken
);
secret_string!(
    /// A runner's `encoded_jit_config`: it carries the runner's private key.
    JitConfig
);
secret_string!(
    /// A signed App JWT.
    AppJwt
);
secret_string!(
    /// The App's private key, PEM.
    AppPrivateKeyPem
);
secret_string!(
    /// The App's OAuth client secret (the web flow's `client_secret`).
    OAuthClientSecret
);
secret_string!(
    /// A user access token of the App (`ghu_…`): acts as the signed-in user.
    UserAccessToken
);
secret_string!(
    /// A user refresh token of the App (`ghr_…`).
    UserRefreshToken
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let token = InstallationToken::new("ghs_supersecret");
        let config = JitConfig::new("eyJydW5uZXIiOiJzZWNyZXQifQ==");
        for shown in [
            format!("{token:?}"),
            format!("{token}"),
            format!("{config:?}"),
            format!("{config}"),
        ] {
            assert!(
                !shown.contains("supersecret") && !shown.contains("eyJ"),
                "{shown}"
            );
            assert!(shown.contains("redacted"), "{shown}");
        }
        assert_eq!(token.expose(), "ghs_supersecret");
    }
}
