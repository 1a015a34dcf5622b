//! The publication consumer's counts at the end of a run, over its HTTP API (plain HTTP on
//! loopback or inside the cluster).

use std::time::{Duration, Instant};

use service_kit::Chain;
use tracing::warn;

use crate::report::PublicationCounts;

/// Why the counts could not be read this time.
#[derive(Debug, thiserror::Error)]
enum CountsError {
    #[error("requesting the counts")]
    Http(#[from] reqwest::Error),
    #[error("reading the counts")]
    Json(#[from] serde_json::Error),
}

/// The publication consumer's counts once it has caught up with `ingested` datasets (or after a
/// minute, as they stand); `None` when it never answered.
pub(super) async fn publication_counts(url: &str, ingested: u64) -> Option<PublicationCounts> {
    let url = format!("{}/api/v1/counts", url.trim_end_matches('/'));
    let deadline = Instant::now() + Duration::from_secs(60);
    // reqwest is built without a bundled TLS provider (see the workspace manifest); plain HTTP
    // needs none, but the client insists on one being installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    loop {
        let counts = async {
            let body = client
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?;
            Ok::<_, CountsError>(serde_json::from_str::<PublicationCounts>(&body)?)
        }
        .await;
        match counts {
            Ok(c) if c.datasets >= ingested || Instant::now() >= deadline => return Some(c),
            Ok(_) => {}
            Err(e) if Instant::now() >= deadline => {
                warn!(error = %Chain(&e), url, "the publication consumer did not answer");
                return None;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
