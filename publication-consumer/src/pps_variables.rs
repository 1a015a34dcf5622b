//! The Prompt Publication Service's environment (`PROMPTPUB_*`), read with PPS's meaning, so
//! that the settings of a PPS deployment start this consumer unchanged.
//!
//! Each variable stands for one of ours and is turned into that setting's flag, put after
//! `serve` on the command line clap parses (flags win over variables, so this is also the
//! order of precedence: a flag given on the command line wins over both). A PPS variable and ours
//! set to different values is a configuration error rather than a silent choice.
//!
//! - `PROMPTPUB_EMBARGO_REPO_PATH`: `BUTLER_REPOSITORY`; `PROMPTPUB_EMBARGO_BATCH_FILE_DIRECTORY`:
//!   `OUTPUT_DATASET_LIST_DIRECTORY`;
//! - `PROMPTPUB_KAFKA_SERVER`, `_TOPIC`, `_GROUP_ID`, `_USERNAME`, `_PASSWORD`: `KAFKA_CLUSTER`,
//!   `KAFKA_TOPIC`, `KAFKA_GROUP_ID`, `KAFKA_USERNAME`, `KAFKA_PASSWORD` (PPS always logs in with
//!   SCRAM-SHA-512 over `SASL_PLAINTEXT`, which is our default with a username);
//! - `PROMPTPUB_STATE_DATABASE_URI`: `PUBLICATION_DATABASE_URL`, SQLAlchemy's driver suffix
//!   (`postgresql+asyncpg://`) dropped; `PROMPTPUB_STATE_DATABASE_PASSWORD`, when set, replaces
//!   the URI's password, as PPS does.
//!
//! - `PROMPTPUB_PROMPT_PREP_REPO_PATH`: `PUBLICATION_PROMPT_PREP_REPOSITORY`;
//!   `PROMPTPUB_MAIN_REPO_PATH`: `PUBLICATION_REPO_MAIN_REPOSITORY`;
//!   `PROMPTPUB_GOOGLE_INT_REPO_PATH`: `PUBLICATION_GOOGLE_INT_REPOSITORY` (the transfer tasks).

use std::ffi::OsString;

use service_kit::ConfigError;

/// A PPS variable, the variable of ours it stands for, and our flag.
const SAME_MEANING: &[(&str, &str, &str)] = &[
    (
        "PROMPTPUB_EMBARGO_REPO_PATH",
        "BUTLER_REPOSITORY",
        "--butler-repository",
    ),
    (
        "PROMPTPUB_EMBARGO_BATCH_FILE_DIRECTORY",
        "OUTPUT_DATASET_LIST_DIRECTORY",
        "--batch-directory",
    ),
    ("PROMPTPUB_KAFKA_SERVER", "KAFKA_CLUSTER", "--kafka-cluster"),
    ("PROMPTPUB_KAFKA_TOPIC", "KAFKA_TOPIC", "--kafka-topic"),
    (
        "PROMPTPUB_KAFKA_GROUP_ID",
        "KAFKA_GROUP_ID",
        "--kafka-group-id",
    ),
    (
        "PROMPTPUB_KAFKA_USERNAME",
        "KAFKA_USERNAME",
        "--kafka-username",
    ),
    (
        "PROMPTPUB_KAFKA_PASSWORD",
        "KAFKA_PASSWORD",
        "--kafka-password",
    ),
    (
        "PROMPTPUB_PROMPT_PREP_REPO_PATH",
        "PUBLICATION_PROMPT_PREP_REPOSITORY",
        "--prompt-prep-repository",
    ),
    (
        "PROMPTPUB_MAIN_REPO_PATH",
        "PUBLICATION_REPO_MAIN_REPOSITORY",
        "--repo-main-repository",
    ),
    (
        "PROMPTPUB_GOOGLE_INT_REPO_PATH",
        "PUBLICATION_GOOGLE_INT_REPOSITORY",
        "--google-int-repository",
    ),
];

/// PPS's state database URI and its password.
const STATE_URI: &str = "PROMPTPUB_STATE_DATABASE_URI";
const STATE_PASSWORD: &str = "PROMPTPUB_STATE_DATABASE_PASSWORD";
const OUR_STATE_URL: (&str, &str) = ("PUBLICATION_DATABASE_URL", "--database-url");

/// Every `PROMPTPUB_*` variable read.
pub const VARIABLES: &[&str] = &[
    "PROMPTPUB_EMBARGO_REPO_PATH",
    "PROMPTPUB_EMBARGO_BATCH_FILE_DIRECTORY",
    "PROMPTPUB_KAFKA_SERVER",
    "PROMPTPUB_KAFKA_TOPIC",
    "PROMPTPUB_KAFKA_GROUP_ID",
    "PROMPTPUB_KAFKA_USERNAME",
    "PROMPTPUB_KAFKA_PASSWORD",
    STATE_URI,
    STATE_PASSWORD,
    "PROMPTPUB_MAIN_REPO_PATH",
    "PROMPTPUB_PROMPT_PREP_REPO_PATH",
    "PROMPTPUB_GOOGLE_INT_REPO_PATH",
];

/// Adds to `args` (program name first) a flag for each PPS variable `env` has, after the
/// `serve` subcommand; anything but `serve` is left alone.
pub fn translate(
    args: Vec<OsString>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<OsString>, ConfigError> {
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let Some(serve_at) = args.iter().position(|a| a == "serve") else {
        return Ok(args);
    };
    let given = |flag: &str| {
        args[serve_at + 1..].iter().any(|a| {
            a.to_str()
                .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
        })
    };
    let mut flags: Vec<OsString> = Vec::new();
    let mut add = |pps: &str, ours: &str, flag: &str, value: String| {
        if given(flag) {
            return Ok(());
        }
        if let Some(our_value) = set(ours)
            && our_value.trim() != value.trim()
        {
            return Err(ConfigError::new(format!(
                "{pps} and {ours} are both set, to different values: set one"
            )));
        }
        flags.push(format!("{flag}={value}").into());
        Ok(())
    };
    for (pps, ours, flag) in SAME_MEANING {
        if let Some(value) = set(pps) {
            add(pps, ours, flag, value)?;
        }
    }
    if let Some(uri) = set(STATE_URI) {
        let url = state_url(&uri, set(STATE_PASSWORD).as_deref())?;
        add(STATE_URI, OUR_STATE_URL.0, OUR_STATE_URL.1, url)?;
    } else if set(STATE_PASSWORD).is_some() {
        return Err(ConfigError::new(format!(
            "{STATE_PASSWORD} is set without {STATE_URI}"
        )));
    }
    let mut args = args;
    args.splice(serve_at + 1..serve_at + 1, flags);
    Ok(args)
}

/// PPS's SQLAlchemy URI as a Postgres URL: the driver suffix dropped, the password replaced
/// (and percent-encoded) when one is given.
fn state_url(uri: &str, password: Option<&str>) -> Result<String, ConfigError> {
    let refuse = || {
        ConfigError::new(format!(
            "{STATE_URI} is not a postgresql:// URI (postgresql[+driver]://user@host[:port]/database)"
        ))
    };
    let (scheme, rest) = uri.split_once("://").ok_or_else(refuse)?;
    let base = scheme.split_once('+').map_or(scheme, |(base, _)| base);
    if !["postgresql", "postgres"].contains(&base) {
        return Err(refuse());
    }
    let mut url = url::Url::parse(&format!("postgresql://{rest}")).map_err(|_| refuse())?;
    if let Some(password) = password {
        if url.username().is_empty() {
            return Err(ConfigError::new(format!(
                "{STATE_URI} names no user, so {STATE_PASSWORD} has no one to be the password of"
            )));
        }
        url.set_password(Some(password)).map_err(|()| refuse())?;
    }
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Vec<OsString>, String> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        translate(args.iter().map(OsString::from).collect(), |k| {
            env.get(k).cloned()
        })
        .map_err(|e| e.to_string())
    }

    fn args(t: &[OsString]) -> Vec<String> {
        t.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    /// The variables of PPS's production deployment.
    const PROD: &[(&str, &str)] = &[
        (
            "PROMPTPUB_STATE_DATABASE_URI",
            "postgresql+asyncpg://prompt_pub@db.example.org/promptpub",
        ),
        ("PROMPTPUB_STATE_DATABASE_PASSWORD", "p@ss:w/rd"),
        (
            "PROMPTPUB_EMBARGO_REPO_PATH",
            "s3://embargo@rubin-summit-users/butler.yaml",
        ),
        (
            "PROMPTPUB_MAIN_REPO_PATH",
            "/sdf/data/rubin/repo/main/butler.yaml",
        ),
        (
            "PROMPTPUB_PROMPT_PREP_REPO_PATH",
            "/sdf/data/rubin/repo/prompt_prep/butler.yaml",
        ),
        (
            "PROMPTPUB_GOOGLE_INT_REPO_PATH",
            "/opt/lsst/configs/gcp-repo-path/gcp-int-repo.yaml",
        ),
        (
            "PROMPTPUB_KAFKA_SERVER",
            "prompt-kafka-kafka-bootstrap.prompt-kafka:9092",
        ),
        ("PROMPTPUB_KAFKA_TOPIC", "butler-writer-ingestion-events"),
        ("PROMPTPUB_KAFKA_GROUP_ID", "prompt-publication"),
        ("PROMPTPUB_KAFKA_USERNAME", "prompt-publication-consumer"),
        ("PROMPTPUB_KAFKA_PASSWORD", "secret"),
        (
            "PROMPTPUB_EMBARGO_BATCH_FILE_DIRECTORY",
            "s3://embargo@rubin-summit-users/publication/prompt_processing/",
        ),
    ];

    #[test]
    fn a_pps_deployment_becomes_our_flags() {
        let t = run(&["publication-consumer", "serve"], PROD).expect("valid");
        let args = args(&t);
        assert_eq!(&args[..2], ["publication-consumer", "serve"]);
        for expected in [
            "--butler-repository=s3://embargo@rubin-summit-users/butler.yaml",
            "--batch-directory=s3://embargo@rubin-summit-users/publication/prompt_processing/",
            "--kafka-cluster=prompt-kafka-kafka-bootstrap.prompt-kafka:9092",
            "--kafka-topic=butler-writer-ingestion-events",
            "--kafka-group-id=prompt-publication",
            "--kafka-username=prompt-publication-consumer",
            "--kafka-password=secret",
            "--database-url=postgresql://prompt_pub:p%40ss%3Aw%2Frd@db.example.org/promptpub",
            "--prompt-prep-repository=/sdf/data/rubin/repo/prompt_prep/butler.yaml",
            "--repo-main-repository=/sdf/data/rubin/repo/main/butler.yaml",
            "--google-int-repository=/opt/lsst/configs/gcp-repo-path/gcp-int-repo.yaml",
        ] {
            assert!(
                args.contains(&expected.to_owned()),
                "{expected} in {args:?}"
            );
        }
    }

    #[test]
    fn flags_win_ours_agreeing_is_fine_and_disagreeing_is_refused() {
        let env = [
            ("PROMPTPUB_KAFKA_TOPIC", "pps-topic"),
            ("KAFKA_TOPIC", "pps-topic"),
        ];
        let t = run(&["pc", "serve"], &env).expect("the same value");
        assert!(args(&t).contains(&"--kafka-topic=pps-topic".to_owned()));
        let t = run(&["pc", "serve", "--kafka-topic", "mine"], &env).expect("a flag");
        assert_eq!(args(&t), ["pc", "serve", "--kafka-topic", "mine"]);
        let e = run(
            &["pc", "serve"],
            &[("PROMPTPUB_KAFKA_TOPIC", "a"), ("KAFKA_TOPIC", "b")],
        )
        .expect_err("different");
        assert!(
            e.contains("PROMPTPUB_KAFKA_TOPIC and KAFKA_TOPIC are both set"),
            "{e}"
        );
    }

    #[test]
    fn the_state_uri_keeps_its_password_without_one_and_refuses_other_schemes() {
        let t = run(
            &["pc", "serve"],
            &[("PROMPTPUB_STATE_DATABASE_URI", "postgresql://u:x@h:5433/d")],
        )
        .expect("valid");
        assert!(args(&t).contains(&"--database-url=postgresql://u:x@h:5433/d".to_owned()));
        let e = run(
            &["pc", "serve"],
            &[(
                "PROMPTPUB_STATE_DATABASE_URI",
                "sqlite+aiosqlite:///state.db",
            )],
        )
        .expect_err("sqlite");
        assert!(e.contains("not a postgresql:// URI"), "{e}");
        let e = run(
            &["pc", "serve"],
            &[
                ("PROMPTPUB_STATE_DATABASE_URI", "postgresql://h/d"),
                ("PROMPTPUB_STATE_DATABASE_PASSWORD", "x"),
            ],
        )
        .expect_err("no user");
        assert!(e.contains("names no user"), "{e}");
        let e = run(
            &["pc", "serve"],
            &[("PROMPTPUB_STATE_DATABASE_PASSWORD", "x")],
        )
        .expect_err("no URI");
        assert!(e.contains("without PROMPTPUB_STATE_DATABASE_URI"), "{e}");
    }

    #[test]
    fn other_commands_and_no_pps_variables_change_nothing() {
        let t = run(&["pc", "--help"], PROD).expect("valid");
        assert_eq!(args(&t), ["pc", "--help"]);
        let t = run(&["pc", "serve", "--schema", "s"], &[]).expect("valid");
        assert_eq!(args(&t), ["pc", "serve", "--schema", "s"]);
    }
}
