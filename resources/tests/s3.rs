//! Reads, writes and checks on a real S3 server: moto on loopback (test-support starts one per
//! test, with its own bucket and a user whose credentials moto enforces).

// Helpers outside #[test] functions unwrap too: a test that cannot set up should fail loudly.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Write;

use resources::{ErrorKind, Resolver, ResourcePath};
use test_support::TestS3;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A batch file as the writer writes it: a batch id and 1000 dataset ids (about 40 kB).
fn batch_file() -> Vec<u8> {
    let ids: Vec<String> = (0..1000)
        .map(|i| format!("\"{:08x}-2ea3-5a15-8009-a3056e49c379\"", i))
        .collect();
    format!(
        "{{\"batch_id\":\"5f0c1d7e-3b2a-4c51-9a8e-0d1f2e3a4b5c\",\"datasets\":[{}]}}",
        ids.join(",")
    )
    .into_bytes()
}

fn parse(text: &str) -> ResourcePath {
    ResourcePath::parse(text).unwrap()
}

async fn moto() -> TestS3 {
    TestS3::start().await.unwrap()
}

#[tokio::test]
async fn profile_variable_names_endpoint_and_credentials() {
    let s3 = moto().await;
    let resolver = Resolver::from_vars(s3.profile_env("test"));
    let dir = parse(&s3.uri(Some("test"), "publication/prompt_processing/"));
    let file = dir
        .join("5f0c1d7e-3b2a-4c51-9a8e-0d1f2e3a4b5c.json")
        .unwrap();

    assert!(!file.exists_with(&resolver).await.unwrap());
    assert!(!dir.exists_with(&resolver).await.unwrap());
    file.write_with(&resolver, batch_file()).await.unwrap();
    assert_eq!(file.read_with(&resolver).await.unwrap(), batch_file());
    assert!(file.exists_with(&resolver).await.unwrap());
    // The prefix now has something under it; the bucket root exists.
    assert!(dir.exists_with(&resolver).await.unwrap());
    assert!(dir.parent().exists_with(&resolver).await.unwrap());
    assert!(
        parse(&s3.uri(Some("test"), ""))
            .exists_with(&resolver)
            .await
            .unwrap()
    );
    assert!(
        !parse(&s3.uri(Some("test"), "elsewhere/"))
            .exists_with(&resolver)
            .await
            .unwrap()
    );

    // Overwriting replaces the object whole.
    file.write_with(&resolver, b"{}".as_slice()).await.unwrap();
    assert_eq!(file.read_with(&resolver).await.unwrap(), b"{}");
}

#[tokio::test]
async fn endpoint_url_with_the_shared_credentials_file() {
    let s3 = moto().await;
    let mut credentials = tempfile::NamedTempFile::new().unwrap();
    write!(
        credentials,
        "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n{}\n{}",
        s3.credentials_section("test"),
        s3.credentials_section("dev")
    )
    .unwrap();
    let mut env: BTreeMap<String, String> = s3.endpoint_env();
    env.insert(
        "AWS_SHARED_CREDENTIALS_FILE".into(),
        credentials.path().to_str().unwrap().into(),
    );
    // As in production: the URI names the profile, which only picks the file's section here,
    // and AWS_PROFILE (set by the chart) does not override it.
    env.insert("AWS_PROFILE".into(), "dev".into());
    let resolver = Resolver::from_vars(env.clone());
    let with_profile = parse(&s3.uri(Some("test"), "a/batch.json"));
    with_profile
        .write_with(&resolver, batch_file())
        .await
        .unwrap();
    assert_eq!(
        with_profile.read_with(&resolver).await.unwrap(),
        batch_file()
    );

    // Without a profile in the URI, AWS_PROFILE picks the section.
    let plain = parse(&s3.uri(None, "a/batch.json"));
    assert_eq!(plain.read_with(&resolver).await.unwrap(), batch_file());

    // And without AWS_PROFILE, [default], whose key moto does not know.
    env.remove("AWS_PROFILE");
    let resolver = Resolver::from_vars(env);
    let err = plain.read_with(&resolver).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
}

#[tokio::test]
async fn missing_keys_and_buckets() {
    let s3 = moto().await;
    let resolver = Resolver::from_vars(s3.profile_env("test"));
    let missing = parse(&s3.uri(Some("test"), "no/such/key.json"));
    let err = missing.read_with(&resolver).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.is_not_found() && !err.is_transient());
    assert!(
        err.to_string()
            .starts_with(&format!("reading {missing}: not found")),
        "{err}"
    );

    let no_bucket = parse("s3://test@no-such-bucket/key.json");
    let err = no_bucket.read_with(&resolver).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(!no_bucket.exists_with(&resolver).await.unwrap());
    assert!(
        !parse("s3://test@no-such-bucket/")
            .exists_with(&resolver)
            .await
            .unwrap()
    );
    // Writing into a bucket that does not exist is a deployment error, not a missing file.
    let err = no_bucket
        .write_with(&resolver, b"x".as_slice())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
}

/// moto checks keys and SigV4 signatures once its authentication is on (test-support turns it
/// on), as Ceph RGW does: a wrong secret and an unknown key are both refused with 403.
#[tokio::test]
async fn wrong_credentials_are_not_transient() {
    let s3 = moto().await;
    let good = Resolver::from_vars(s3.profile_env("test"));
    let file = parse(&s3.uri(Some("test"), "k.json"));
    file.write_with(&good, b"{}".as_slice()).await.unwrap();

    let endpoint = s3.endpoint().replace("http://", "");
    let cases = [
        (
            "wrong secret",
            format!("http://{}:wrong-secret@{endpoint}", s3.access_key_id()),
        ),
        (
            "unknown key",
            format!("http://AKIAUNKNOWN0000000000:{}@{endpoint}", "x"),
        ),
    ];
    for (case, url) in cases {
        let resolver = Resolver::from_vars([("LSST_RESOURCES_S3_PROFILE_test", url)]);
        for err in [
            file.read_with(&resolver).await.unwrap_err(),
            file.write_with(&resolver, b"{}".as_slice())
                .await
                .unwrap_err(),
            file.exists_with(&resolver).await.unwrap_err(),
        ] {
            assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{case}: {err}");
            assert!(!err.is_transient());
            let message = format!("{err} {err:?}");
            assert!(!message.contains("wrong-secret"), "{case}: {message}");
        }
    }
    // The object is untouched.
    assert_eq!(file.read_with(&good).await.unwrap(), b"{}");
}

#[tokio::test]
async fn a_stopped_server_is_transient() {
    let mut s3 = moto().await;
    let resolver = Resolver::from_vars(s3.profile_env("test"));
    let file = parse(&s3.uri(Some("test"), "k.json"));
    file.write_with(&resolver, b"{}".as_slice()).await.unwrap();
    s3.stop();
    let read = file.read_with(&resolver).await.unwrap_err();
    let write = file
        .write_with(&resolver, b"{}".as_slice())
        .await
        .unwrap_err();
    let exists = file.exists_with(&resolver).await.unwrap_err();
    for err in [read, write, exists] {
        assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
        assert!(err.to_string().contains("cannot connect"), "{err}");
    }
}

/// A loopback server answering every request with `status`, to show how S3 statuses that moto
/// cannot be made to return are classified. Returns its endpoint.
async fn answering(status: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0_u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "<Error><Code>Test</Code><Message>test</Message></Error>";
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    endpoint
}

#[tokio::test]
async fn server_errors_and_throttling_are_transient_other_statuses_fatal() {
    for (status, kind) in [
        ("503 Service Unavailable", ErrorKind::Transient),
        ("500 Internal Server Error", ErrorKind::Transient),
        ("429 Too Many Requests", ErrorKind::Transient),
        ("400 Bad Request", ErrorKind::Fatal),
        ("405 Method Not Allowed", ErrorKind::Fatal),
    ] {
        let endpoint = answering(status).await;
        let resolver = Resolver::from_vars([
            ("S3_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "K"),
            ("AWS_SECRET_ACCESS_KEY", "S"),
        ]);
        let err = parse("s3://bucket/k.json")
            .read_with(&resolver)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), kind, "{status}: {err}");
        let code = &status[..3];
        assert!(
            err.to_string().contains(&format!("S3 answered {code}")),
            "{err}"
        );
    }
}

#[tokio::test]
async fn listing_statuses_are_classified_too() {
    // object_store maps statuses of object requests, not of listings: `exists` on a prefix.
    for (status, expected) in [
        ("404 Not Found", Ok(false)),
        ("403 Forbidden", Err(ErrorKind::PermissionDenied)),
        ("503 Service Unavailable", Err(ErrorKind::Transient)),
    ] {
        let endpoint = answering(status).await;
        let resolver = Resolver::from_vars([
            ("S3_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "K"),
            ("AWS_SECRET_ACCESS_KEY", "S"),
        ]);
        let outcome = parse("s3://bucket/prefix/")
            .exists_with(&resolver)
            .await
            .map_err(|e| e.kind());
        assert_eq!(outcome, expected, "{status}");
    }
}
