//! Reads, writes and checks on the local filesystem.

// Helpers outside #[test] functions unwrap too: a test that cannot set up should fail loudly.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use resources::{ErrorKind, ResourcePath};

fn dir_uri(dir: &Path) -> ResourcePath {
    ResourcePath::parse(&format!("file://{}/", dir.display())).unwrap()
}

#[tokio::test]
async fn write_creates_directories_and_leaves_no_temporary_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = dir_uri(tmp.path())
        .join("publication/prompt_processing/")
        .unwrap();
    assert!(!out.exists().await.unwrap());
    let file = out.join("batch.json").unwrap();
    file.write(b"{\"a\":1}".as_slice()).await.unwrap();
    assert!(out.exists().await.unwrap());
    assert!(file.exists().await.unwrap());
    assert_eq!(file.read().await.unwrap(), b"{\"a\":1}");
    file.write(b"{}".as_slice()).await.unwrap();
    assert_eq!(file.read().await.unwrap(), b"{}");

    let names: Vec<String> = std::fs::read_dir(out.local_path().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["batch.json"]);
    // The same file through a plain path.
    let plain = ResourcePath::parse(file.local_path().unwrap().to_str().unwrap()).unwrap();
    assert_eq!(plain, file);
    assert_eq!(plain.read().await.unwrap(), b"{}");
}

/// A reader racing a writer sees one whole version or the other, never a mix or a truncation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_partial_write() {
    let tmp = tempfile::tempdir().unwrap();
    let file = dir_uri(tmp.path()).join("batch.json").unwrap();
    let a = vec![b'a'; 1 << 20];
    let b = vec![b'b'; 1 << 19];
    file.write(a.clone()).await.unwrap();

    let writer = {
        let (file, a, b) = (file.clone(), a.clone(), b.clone());
        tokio::spawn(async move {
            for i in 0..30 {
                file.write(if i % 2 == 0 { b.clone() } else { a.clone() })
                    .await
                    .unwrap();
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() && reads < 1000 {
        let content = file.read().await.unwrap();
        assert!(
            content == a || content == b,
            "read {} bytes of a mix",
            content.len()
        );
        reads += 1;
    }
    writer.await.unwrap();
    println!("{reads} reads raced 30 writes");
}

#[tokio::test]
async fn missing_files_and_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = dir_uri(tmp.path());
    let missing = dir.join("nope.json").unwrap();
    let err = missing.read().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(err.to_string(), format!("reading {missing}: not found"));
    assert!(!missing.exists().await.unwrap());
    assert!(dir.exists().await.unwrap());

    // A file spelled as a directory is not that directory.
    std::fs::write(tmp.path().join("f"), b"x").unwrap();
    assert!(!dir.join("f/").unwrap().exists().await.unwrap());
    assert!(dir.join("f").unwrap().exists().await.unwrap());

    // Directories cannot be read or written.
    let err = dir.read().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidUri);
    let err = dir.write(b"x".as_slice()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidUri);
    // Writing below a file cannot work, and retrying will not help.
    let err = dir
        .join("f/x.json")
        .unwrap()
        .write(b"x".as_slice())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fatal, "{err}");
}

#[tokio::test]
async fn relative_paths_resolve_against_the_current_directory() {
    let cwd = std::env::current_dir().unwrap();
    let rel = ResourcePath::parse("target-x/").unwrap();
    assert_eq!(rel.local_path().unwrap(), cwd.join("target-x"));
    assert_eq!(rel.to_string(), format!("{}/target-x/", cwd.display()));
}
