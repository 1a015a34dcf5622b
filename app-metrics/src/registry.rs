//! The calls to a Confluent-compatible schema registry that events need: set a subject's
//! compatibility, register a schema under it (getting its id), read a schema back by id.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

/// The registry's content type for requests.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No answer (refused, timed out).
    #[error("schema registry {url}: no answer")]
    Http {
        /// The URL called.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with an error.
    #[error("schema registry {url}: HTTP {status}: {message}")]
    Refused {
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The registry's message.
        message: String,
    },
    /// The answer is not what the API says.
    #[error("schema registry {url}: unexpected answer {body:?}")]
    Unexpected {
        /// The URL called.
        url: String,
        /// What came back.
        body: String,
    },
}

/// A client of one registry.
#[derive(Debug, Clone)]
pub struct SchemaRegistry {
    base: String,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct Id {
    id: u32,
}

#[derive(Deserialize)]
struct SchemaText {
    schema: String,
}

impl SchemaRegistry {
    /// A client of the registry at `url` (`http://host:port`); each call gives up after 10 s.
    pub fn new(url: &str) -> Self {
        // reqwest is built without a bundled TLS provider (see the workspace manifest); plain
        // HTTP needs none, but the client insists on one being installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            base: url.trim_end_matches('/').to_owned(),
            client,
        }
    }

    /// Registers `schema` (Avro JSON) under `subject` with compatibility NONE, as Sasquatch's
    /// convention has it, and returns its id. Registering the same schema again returns the same
    /// id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        self.call(
            reqwest::Method::PUT,
            &format!("/config/{subject}"),
            Some(json!({ "compatibility": "NONE" })),
        )
        .await?;
        let (url, body) = self
            .call(
                reqwest::Method::POST,
                &format!("/subjects/{subject}/versions"),
                Some(json!({ "schema": schema })),
            )
            .await?;
        serde_json::from_str::<Id>(&body)
            .map(|id| id.id)
            .map_err(|_| RegistryError::Unexpected { url, body })
    }

    /// The schema (Avro JSON) registered with `id`.
    pub async fn schema(&self, id: u32) -> Result<String, RegistryError> {
        let (url, body) = self
            .call(reqwest::Method::GET, &format!("/schemas/ids/{id}"), None)
            .await?;
        serde_json::from_str::<SchemaText>(&body)
            .map(|s| s.schema)
            .map_err(|_| RegistryError::Unexpected { url, body })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(String, String), RegistryError> {
        let url = format!("{}{path}", self.base);
        let http = |source| RegistryError::Http {
            url: url.clone(),
            source,
        };
        let mut request = self
            .client
            .request(method, &url)
            .header("Accept", CONTENT_TYPE);
        if let Some(body) = body {
            request = request
                .header("Content-Type", CONTENT_TYPE)
                .body(body.to_string());
        }
        let response = request.send().await.map_err(http)?;
        let status = response.status();
        let text = response.text().await.map_err(http)?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
                .unwrap_or(text);
            return Err(RegistryError::Refused {
                url,
                status: status.as_u16(),
                message,
            });
        }
        Ok((url, text))
    }
}
