//! How `GitHubClient` talks HTTP: URL building, authentication headers, the retry loop for
//! rate limits and server errors, pagination (same origin only), and mapping statuses to
//! [`GitHubError`]s.

use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, LINK, USER_AGENT};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use url::Url;

use mayfly_core::RepoFullName;

use super::client::{Auth, Exchange, GitHubClient};
use super::error::GitHubError;
use super::retry::Verdict;
use super::types::ErrorBody;

impl GitHubClient {
    pub(super) fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.api_url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    pub(super) fn repo_endpoint(&self, repo: &RepoFullName, rest: &[&str]) -> Url {
        let mut segments = vec!["repos", repo.owner(), repo.name()];
        segments.extend_from_slice(rest);
        self.endpoint(&segments)
    }

    pub(super) async fn paginate<T: DeserializeOwned>(
        &self,
        first: Url,
        auth: Auth<'_>,
    ) -> Result<Vec<T>, GitHubError> {
        let mut pages = Vec::new();
        let mut next = Some(first);
        // GitHub caps filtered listings at 1,000 results; 100 pages is far beyond any real need.
        let mut budget = 100;
        while let Some(mut url) = next.take() {
            if !url.query_pairs().any(|(k, _)| k == "per_page") {
                url.query_pairs_mut().append_pair("per_page", "100");
            }
            let path = url.path().to_owned();
            let (status, headers, body) = self.send(Method::GET, url, auth, None).await?;
            if status != StatusCode::OK {
                return Err(status_error(&path, status, &body));
            }
            pages.push(decode(&path, &body)?);
            next = next_link(&headers)
                .map(|link| self.same_origin(link))
                .transpose()?;
            budget -= 1;
            if budget == 0 {
                break;
            }
        }
        Ok(pages)
    }

    fn same_origin(&self, link: Url) -> Result<Url, GitHubError> {
        if link.origin() == self.api_url.origin() && link.path().starts_with(self.api_url.path()) {
            Ok(link)
        } else {
            Err(GitHubError::ForeignLink)
        }
    }

    pub(super) async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        auth: Auth<'_>,
        body: Option<&serde_json::Value>,
        ok: &[StatusCode],
    ) -> Result<T, GitHubError> {
        let path = url.path().to_owned();
        let (status, _, bytes) = self.send(method, url, auth, body).await?;
        if ok.contains(&status) {
            decode(&path, &bytes)
        } else {
            Err(status_error(&path, status, &bytes))
        }
    }

    /// Sends one request, retrying rate limits and server errors within the policy. Returns the
    /// final status, headers and body; maps only rate limits and exhausted 5xx to errors.
    pub(super) async fn send(
        &self,
        method: Method,
        url: Url,
        auth: Auth<'_>,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, HeaderMap, bytes::Bytes), GitHubError> {
        let path = url.path().to_owned();
        let idempotent = method == Method::GET || method == Method::DELETE;
        let mut attempt = 0;
        let mut refreshed_token = false;
        loop {
            attempt += 1;
            let bearer = match auth {
                Auth::App => self.credentials.jwt(self.clock.now())?.expose().to_owned(),
                // Boxed: fetching a token goes through `send` itself (with App auth).
                Auth::Installation(id, scope) => Box::pin(self.installation_token(id, scope))
                    .await?
                    .expose()
                    .to_owned(),
            };
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .header(ACCEPT, "application/vnd.github+json")
                .header("x-github-api-version", "2022-11-28")
                .header(USER_AGENT, concat!("mayfly/", env!("CARGO_PKG_VERSION")))
                .header(AUTHORIZATION, format!("Bearer {bearer}"));
            if let Some(body) = body {
                request = request.json(body);
            }
            let installation = match auth {
                Auth::App => None,
                Auth::Installation(id, _) => Some(id),
            };
            let response = match request.send().await {
                Ok(response) => response,
                Err(source) => {
                    self.observe(&Exchange {
                        method: method_name(&method),
                        status: None,
                        installation,
                        rate_limit_remaining: None,
                        rate_limit_limit: None,
                    });
                    return Err(GitHubError::Transport {
                        url: redact_query(&url),
                        source,
                    });
                }
            };
            let status = response.status();
            let headers = response.headers().clone();
            self.observe(&Exchange {
                method: method_name(&method),
                status: Some(status.as_u16()),
                installation,
                rate_limit_remaining: header_u64(&headers, "x-ratelimit-remaining"),
                rate_limit_limit: header_u64(&headers, "x-ratelimit-limit"),
            });
            let bytes = response
                .bytes()
                .await
                .map_err(|source| GitHubError::Transport {
                    url: redact_query(&url),
                    source,
                })?;

            if status == StatusCode::UNAUTHORIZED && !refreshed_token {
                if let Auth::Installation(id, scope) = auth {
                    // The cached token may have been revoked: drop it and try once more.
                    self.tokens.lock().await.remove(&scope.key(id));
                    refreshed_token = true;
                    attempt -= 1;
                    continue;
                }
            }
            match self
                .retry
                .verdict(status, &headers, attempt, self.clock.now(), idempotent)
            {
                Verdict::Done => {
                    if status.is_server_error() {
                        return Err(GitHubError::Server { path, status });
                    }
                    return Ok((status, headers, bytes));
                }
                Verdict::RateLimited(None) => return Err(GitHubError::RateLimited { path }),
                Verdict::RateLimited(Some(wait)) => {
                    tracing::warn!(%path, wait_ms = wait.as_millis() as u64, "GitHub rate limit; waiting");
                    tokio::time::sleep(wait).await;
                }
                Verdict::ServerError(wait) => {
                    tracing::warn!(%path, %status, wait_ms = wait.as_millis() as u64, "GitHub server error; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

pub(super) fn decode<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, GitHubError> {
    serde_json::from_slice(body).map_err(|source| GitHubError::Decode {
        path: path.to_owned(),
        source,
    })
}

fn status_error(path: &str, status: StatusCode, body: &[u8]) -> GitHubError {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let mut message = parsed.message.unwrap_or_default();
    if let Some(errors) = parsed.errors {
        message = format!("{message} {errors}");
    }
    message.truncate(500);
    let path = path.to_owned();
    match status {
        StatusCode::UNAUTHORIZED => GitHubError::Unauthorized { path },
        StatusCode::FORBIDDEN => GitHubError::Forbidden { path, message },
        StatusCode::NOT_FOUND => GitHubError::NotFound { path },
        StatusCode::CONFLICT => GitHubError::Conflict { path, message },
        StatusCode::UNPROCESSABLE_ENTITY => GitHubError::Validation { path, message },
        status if status.is_server_error() => GitHubError::Server { path, status },
        status => GitHubError::Unexpected { path, status },
    }
}

pub(super) fn not_found_is_none<T>(
    result: Result<T, GitHubError>,
) -> Result<Option<T>, GitHubError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(GitHubError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The `rel="next"` target of a `Link` header.
pub(crate) fn next_link(headers: &HeaderMap) -> Option<Url> {
    let link = headers.get(LINK)?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| target.trim().trim_start_matches('<').trim_end_matches('>'))
            .and_then(|t| Url::parse(t).ok())
    })
}

/// The methods mayfly uses, as static names (anything else is `OTHER`).
fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn redact_query(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn finds_the_next_link() {
        let mut headers = HeaderMap::new();
        headers.insert(
            LINK,
            HeaderValue::from_static(
                "<https://api.github.com/x?page=2>; rel=\"next\", <https://api.github.com/x?page=5>; rel=\"last\"",
            ),
        );
        assert_eq!(
            next_link(&headers).map(|u| u.to_string()).as_deref(),
            Some("https://api.github.com/x?page=2")
        );
        headers.insert(
            LINK,
            HeaderValue::from_static("<https://api.github.com/x?page=5>; rel=\"last\""),
        );
        assert!(next_link(&headers).is_none());
    }

    #[test]
    fn error_statuses_map_to_typed_errors() {
        let body = br#"{"message":"Conflict","documentation_url":"x"}"#;
        assert!(
            matches!(status_error("/p", StatusCode::CONFLICT, body), GitHubError::Conflict { message, .. } if message == "Conflict")
        );
        assert!(matches!(
            status_error("/p", StatusCode::NOT_FOUND, b"garbage"),
            GitHubError::NotFound { .. }
        ));
        assert!(
            matches!(status_error("/p", StatusCode::UNPROCESSABLE_ENTITY, br#"{"message":"Invalid","errors":["labels"]}"#), GitHubError::Validation { message, .. } if message.contains("labels"))
        );
    }
}
