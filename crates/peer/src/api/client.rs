//! The API's client: typed calls over one short HTTP/1 connection each (the API is local and
//! polled a few times a second at most, so a connection per call costs nothing worth pooling,
//! and a node restarted in between is simply reached again). Every call has a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use super::types::{DownloadList, DownloadRequest, ErrorBody, FileEntry, FileList, Started, Status, Summary};

/// How often [`ApiClient::wait`] asks for a download's status.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Default deadline of one call: connecting, sending and reading the whole answer. (Cancelling a
/// download waits for it to stop, up to 10 s on the server.)
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest answer read: a finished batch of many files lists every one.
const MAX_RESPONSE: usize = 256 << 20;

/// A client of a node's HTTP API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    addr: SocketAddr,
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The token cannot be sent in a header.
    #[error("the API token must be visible ASCII")]
    BadToken,
    /// The TCP connection failed.
    #[error("cannot connect to the peer's API at {addr}: {source}")]
    Connect {
        /// The API's address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The call did not complete within its deadline.
    #[error("the peer's API at {addr} did not answer within {timeout:?}")]
    Timeout {
        /// The API's address.
        addr: SocketAddr,
        /// The deadline.
        timeout: Duration,
    },
    /// HTTP failed (the connection was lost, or the answer was not HTTP).
    #[error("HTTP error talking to the peer's API: {0}")]
    Http(#[from] hyper::Error),
    /// The answer's body could not be read (or was over the size limit).
    #[error("cannot read the API's answer: {0}")]
    Body(String),
    /// The server refused or failed the request, saying why.
    #[error("{message} (HTTP {status}, {code})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error's code: `not_found`, `bad_request`, `unauthorized`, ...
        code: String,
        /// The server's message.
        message: String,
    },
    /// An answer that is not what the API sends.
    #[error("unexpected answer from the peer's API (HTTP {status}): {detail}")]
    Unexpected {
        /// The HTTP status.
        status: u16,
        /// What was wrong, with the start of the body.
        detail: String,
    },
}

impl ClientError {
    /// The server's error code, for an error the server answered with.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, for an error the server answered with.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl ApiClient {
    /// A client of the API at `addr`, sending `token` with every call when given. Checks that
    /// the API answers and accepts the token (a cheap list call), so a wrong address or token
    /// is an error here rather than at the first real call.
    pub async fn connect(addr: SocketAddr, token: Option<String>) -> Result<ApiClient, ClientError> {
        let client = ApiClient::new(addr, token)?;
        client.list().await?;
        Ok(client)
    }

    /// Like [`ApiClient::connect`], without the check: nothing is sent until the first call.
    pub fn new(addr: SocketAddr, token: Option<String>) -> Result<ApiClient, ClientError> {
        let authorization = match token {
            Some(t) => Some(HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| ClientError::BadToken)?),
            None => None,
        };
        Ok(ApiClient { addr, authorization, timeout: DEFAULT_TIMEOUT })
    }

    /// The same client with another deadline per call.
    pub fn with_timeout(mut self, timeout: Duration) -> ApiClient {
        self.timeout = timeout;
        self
    }

    /// The API's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts a download: `POST /v1/downloads`. Everything asked for is resolved first, so an
    /// error here means nothing was started.
    pub async fn start(&self, request: &DownloadRequest) -> Result<Started, ClientError> {
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Body(e.to_string()))?;
        self.call(Method::POST, "/v1/downloads", Some(body)).await
    }

    /// One download in detail: `GET /v1/downloads/{id}`.
    pub async fn status(&self, id: &str) -> Result<Status, ClientError> {
        self.call(Method::GET, &format!("/v1/downloads/{}", encode(id)), None).await
    }

    /// Every download the API knows: `GET /v1/downloads`.
    pub async fn list(&self) -> Result<Vec<Summary>, ClientError> {
        let list: DownloadList = self.call(Method::GET, "/v1/downloads", None).await?;
        Ok(list.downloads)
    }

    /// Cancels a download, keeping its partial files: `DELETE /v1/downloads/{id}`. Returns once
    /// it has stopped, with its final status.
    pub async fn cancel(&self, id: &str) -> Result<Status, ClientError> {
        self.call(Method::DELETE, &format!("/v1/downloads/{}", encode(id)), None).await
    }

    /// What the node serves: `GET /v1/files`.
    pub async fn files(&self) -> Result<Vec<FileEntry>, ClientError> {
        let list: FileList = self.call(Method::GET, "/v1/files", None).await?;
        Ok(list.files)
    }

    /// Polls a download every [`POLL_INTERVAL`], calling `on_progress` with each status, until
    /// it ends; returns its final status (done, failed or cancelled: see its state).
    pub async fn wait(&self, id: &str, mut on_progress: impl FnMut(&Status)) -> Result<Status, ClientError> {
        loop {
            let status = self.status(id).await?;
            on_progress(&status);
            if status.summary.state.is_finished() {
                return Ok(status);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = tokio::time::timeout(self.timeout, self.exchange(method, path, body))
            .await
            .map_err(|_| ClientError::Timeout { addr: self.addr, timeout: self.timeout })??;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| unexpected(status, &bytes, &e.to_string()));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => Err(ClientError::Api { status: status.as_u16(), code: e.error.code, message: e.error.message }),
            Err(e) => Err(unexpected(status, &bytes, &e.to_string())),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let stream =
            TcpStream::connect(self.addr).await.map_err(|source| ClientError::Connect { addr: self.addr, source })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The connection is driven beside the request; it ends when `sender` is dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut request = Request::builder().method(method).uri(path).header(header::HOST, self.addr.to_string());
        if let Some(auth) = &self.authorization {
            request = request.header(header::AUTHORIZATION, auth.clone());
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Body(e.to_string()))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| ClientError::Body(e.to_string()))?
            .to_bytes();
        Ok((status, bytes))
    }
}

fn unexpected(status: StatusCode, body: &[u8], why: &str) -> ClientError {
    let start = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    ClientError::Unexpected { status: status.as_u16(), detail: format!("{why}: {start}") }
}

/// A path segment, percent-encoded: ids are plain, but nothing a caller passes may change the
/// path.
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_change_the_path() {
        assert_eq!(encode("12"), "12");
        assert_eq!(encode("../files"), "..%2Ffiles");
        assert_eq!(encode("a b?c"), "a%20b%3Fc");
    }
}
