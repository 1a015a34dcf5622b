//! The `publication-consumer` binary: its help, its one-line configuration errors, and a run
//! from environment variables alone that records a batch and stops cleanly on SIGTERM.

// Test code: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{announce, fixture, ingest};
use sqlx::Connection;

const BIN: &str = env!("CARGO_BIN_EXE_publication-consumer");

/// Every variable the main job script sets, and the consumer's own.
const VARIABLES: &[&str] = &[
    "BUTLER_REPOSITORY",
    "KAFKA_CLUSTER",
    "KAFKA_TOPIC",
    "KAFKA_GROUP_ID",
    "KAFKA_USERNAME",
    "KAFKA_PASSWORD",
    "OUTPUT_DATASET_LIST_DIRECTORY",
    "PUBLICATION_DATABASE_URL",
    "PUBLICATION_SCHEMA",
    "PUBLICATION_POLICY_FILE",
    "PUBLICATION_RELEASE_EXPOSURE_ONLY",
    "PUBLICATION_HTTP_ADDRESS",
    "PUBLICATION_LOG_FORMAT",
    "PUBLICATION_LOG_LEVEL",
    "PUBLICATION_ORIGINS",
    "PUBLICATION_BATCH_FILE_WAIT_SECONDS",
    "PUBLICATION_KAFKA_SECURITY_PROTOCOL",
    "PUBLICATION_KAFKA_CA_FILE",
    "PUBLICATION_DB_MAX_CONNECTIONS",
    "PUBLICATION_RETRY_INITIAL_MS",
    "PUBLICATION_RETRY_MAX_MS",
    "PUBLICATION_SHUTDOWN_GRACE_SECONDS",
    "PUBLICATION_PROMPT_PREP_REPOSITORY",
    "PUBLICATION_REPO_MAIN_REPOSITORY",
    "PUBLICATION_GOOGLE_INT_REPOSITORY",
    "PUBLICATION_GOOGLE_TAGGED_COLLECTION",
    "PUBLICATION_UNEMBARGO_CHUNK",
    "PUBLICATION_TRANSFER_IDLE_SECONDS",
    "PUBLICATION_QUIET_WINDOW",
    "LSST_DB_AUTH",
];

#[test]
fn help_lists_every_variable_and_hides_the_password() {
    let output = Command::new(BIN)
        .args(["serve", "--help"])
        .env("KAFKA_PASSWORD", "hunter2")
        .env("PUBLICATION_DATABASE_URL", "postgresql://u:sesame@h/d")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for variable in VARIABLES {
        assert!(
            help.contains(&format!("env: {variable}"))
                || help.contains(&format!("env: {variable}=")),
            "{variable} in\n{help}"
        );
    }
    // The Prompt Publication Service's variables, read as ours, are named too.
    for variable in publication_consumer::pps_variables::VARIABLES {
        assert!(help.contains(variable), "{variable} in\n{help}");
    }
    assert!(!help.contains("hunter2"));
    assert!(!help.contains("sesame"));
}

/// `serve` with nothing in its environment but the three required settings (a repository that
/// does not exist, an unreachable broker) and `variables`: its exit status and its stderr, which
/// must be one line.
fn serve_with(variables: &[(&str, &std::ffi::OsStr)]) -> (Option<i32>, String) {
    let output = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("BUTLER_REPOSITORY", "/nonexistent/butler.yaml")
        .env("KAFKA_CLUSTER", "127.0.0.1:1")
        .env("OUTPUT_DATASET_LIST_DIRECTORY", "/tmp/")
        .envs(variables.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    (output.status.code(), stderr)
}

#[test]
fn a_configuration_error_stops_at_start_up_with_one_line() {
    let os = std::ffi::OsStr::new;
    let (status, stderr) = serve_with(&[("PUBLICATION_SCHEMA", os("Not-A-Schema"))]);
    assert_eq!(status, Some(2));
    assert!(stderr.contains("PUBLICATION_SCHEMA"), "{stderr}");

    // A PPS variable and ours disagreeing: one line naming both.
    let (status, stderr) =
        serve_with(&[("PROMPTPUB_KAFKA_TOPIC", os("a")), ("KAFKA_TOPIC", os("b"))]);
    assert_eq!(status, Some(2));
    assert!(
        stderr.contains("PROMPTPUB_KAFKA_TOPIC and KAFKA_TOPIC"),
        "{stderr}"
    );

    // The former EMBARGO_HOURS is refused, not ignored: the policy has the embargo now.
    let (status, stderr) = serve_with(&[("EMBARGO_HOURS", os("80"))]);
    assert_eq!(status, Some(2));
    assert!(stderr.contains("PUBLICATION_POLICY_FILE"), "{stderr}");

    // A policy file with a mistake: one line naming the file and the mistake.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "profiles:\n  - {name: p, origin: prompt_processing, embargo_hours: 80, \
         publish_to_public: yes_please, retention_days: null, dataset_types: [a]}\n",
    )
    .unwrap();
    let (status, stderr) = serve_with(&[("PUBLICATION_POLICY_FILE", policy.as_os_str())]);
    assert_eq!(status, Some(2));
    assert!(
        stderr.contains("policy.yaml") && stderr.contains("publish_to_public"),
        "{stderr}"
    );

    // A repository that does not exist is fatal too, not retried for ever.
    let (status, stderr) = serve_with(&[("PUBLICATION_LOG_LEVEL", os("off"))]);
    assert_eq!(status, Some(1));
    assert!(stderr.contains("/nonexistent/butler.yaml"), "{stderr}");
}

#[tokio::test]
async fn the_binary_records_a_batch_and_stops_on_sigterm() {
    let f = fixture(1).await;
    let batches = ingest(&f, 7_000_900, 1, 15).await;
    announce(&f, &batches).await;
    let address = free_address();
    let command = consumer_command(
        address,
        &[
            (
                "BUTLER_REPOSITORY",
                f.registry.butler_config.display().to_string(),
            ),
            ("KAFKA_CLUSTER", f.env.kafka_bootstrap().to_owned()),
            ("KAFKA_TOPIC", f.topics.events.clone()),
            ("KAFKA_GROUP_ID", test_support::unique_name("pps")),
            (
                "OUTPUT_DATASET_LIST_DIRECTORY",
                f.dir.path().display().to_string(),
            ),
            ("PUBLICATION_SCHEMA", test_support::unique_name("pps")),
        ],
    );
    let stderr = record_then_sigterm(command, address, 15).await;
    // JSON lines, one of which says the batch was recorded.
    assert!(
        json_lines(&stderr).any(|l| l["message"] == "batch recorded"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_prompt_publication_services_variables_run_the_consumer() {
    let f = fixture(1).await;
    let batches = ingest(&f, 7_001_400, 1, 6).await;
    announce(&f, &batches).await;
    // PPS's state database URI (SQLAlchemy's driver in the scheme, no password in it) and its
    // password apart, as PPS's deployment gives them.
    let state_db = f.env.fresh_database("pps_vars").await.unwrap();
    let (scheme_less, password) = split_password(&state_db.url);
    let address = free_address();
    let mut variables = vec![
        (
            "PROMPTPUB_EMBARGO_REPO_PATH",
            f.registry.butler_config.display().to_string(),
        ),
        ("PROMPTPUB_KAFKA_SERVER", f.env.kafka_bootstrap().to_owned()),
        ("PROMPTPUB_KAFKA_TOPIC", f.topics.events.clone()),
        ("PROMPTPUB_KAFKA_GROUP_ID", test_support::unique_name("pps")),
        (
            "PROMPTPUB_EMBARGO_BATCH_FILE_DIRECTORY",
            format!("{}/", f.dir.path().display()),
        ),
        (
            "PROMPTPUB_STATE_DATABASE_URI",
            format!("postgresql+asyncpg://{scheme_less}"),
        ),
    ];
    if let Some(password) = password {
        variables.push(("PROMPTPUB_STATE_DATABASE_PASSWORD", password));
    }
    let command = consumer_command(address, &variables);
    let stderr = record_then_sigterm(command, address, 6).await;
    // The state went to PPS's database.
    let mut state = sqlx::PgConnection::connect(&state_db.url).await.unwrap();
    let datasets: i64 = sqlx::query_scalar("SELECT count(*) FROM publication_consumer.dataset")
        .fetch_one(&mut state)
        .await
        .unwrap();
    assert_eq!(datasets, 6);
    assert!(
        json_lines(&stderr).any(|l| l["message"] == "batch recorded"),
        "{stderr}"
    );
}

/// An operator command of the binary against the fixture's registry, batch directory and the
/// state schema `schema`, with nothing of the consumer's own from the test's environment.
fn operator_command(f: &test_support::Fixture, schema: &str, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args);
    for variable in VARIABLES
        .iter()
        .chain(publication_consumer::pps_variables::VARIABLES)
    {
        command.env_remove(variable);
    }
    command
        .env("BUTLER_REPOSITORY", &f.registry.butler_config)
        .env("OUTPUT_DATASET_LIST_DIRECTORY", f.dir.path())
        .env("PUBLICATION_SCHEMA", schema);
    command
}

/// A free loopback address for the consumer's HTTP server.
fn free_address() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `publication-consumer serve` with `variables` (and nothing of the consumer's own from the
/// test's environment), JSON logs on stderr, HTTP on `address`.
fn consumer_command(
    address: std::net::SocketAddr,
    variables: &[(&str, String)],
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(BIN);
    command.arg("serve");
    for name in VARIABLES
        .iter()
        .chain(publication_consumer::pps_variables::VARIABLES)
    {
        command.env_remove(name);
    }
    command
        .envs(variables.iter().map(|(k, v)| (*k, v.as_str())))
        .env("PUBLICATION_HTTP_ADDRESS", address.to_string())
        .env("PUBLICATION_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Starts `command`, waits until its API counts `datasets` datasets, stops it with SIGTERM,
/// checks it exits cleanly, and returns its stderr.
async fn record_then_sigterm(
    mut command: tokio::process::Command,
    address: std::net::SocketAddr,
    datasets: i64,
) -> String {
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            let counts = common::counts(address).await;
            if counts.datasets == datasets {
                break;
            }
        }
        if Instant::now() >= deadline {
            child.kill().await.unwrap();
            let mut stderr = String::new();
            tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
                .await
                .unwrap();
            panic!("the binary did not record {datasets} datasets:\n{stderr}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the binary stops within 30 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    stderr
}

/// The JSON lines of a log.
fn json_lines(log: &str) -> impl Iterator<Item = serde_json::Value> + '_ {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
}

/// A `postgresql://user[:password]@rest` URL as `user@rest` and the password, if any.
fn split_password(url: &str) -> (String, Option<String>) {
    let rest = url.split_once("://").unwrap().1;
    let (userinfo, host) = rest.split_once('@').unwrap();
    match userinfo.split_once(':') {
        Some((user, password)) => (format!("{user}@{host}"), Some(password.to_owned())),
        None => (format!("{userinfo}@{host}"), None),
    }
}

#[tokio::test]
async fn the_binary_reads_batch_files_from_s3() {
    let f = fixture(1).await;
    let batches = ingest(&f, 7_001_200, 1, 9).await;
    let s3 = test_support::s3::TestS3::start().await.expect("moto");
    let directory = s3.uri(Some("embargo"), "publication/prompt_processing/");
    let name = common::batch_file_name(batches[0].batch_id);
    let resolver = resources::Resolver::from_vars(s3.profile_env("embargo"));
    resources::ResourcePath::parse(&format!("{directory}{name}"))
        .unwrap()
        .write_with(&resolver, batches[0].to_json())
        .await
        .unwrap();
    common::produce(
        f.env.kafka_bootstrap(),
        &f.topics.events,
        &[common::event(batches[0].batch_id, &name)],
        Some(0),
    )
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .arg("serve")
        .env("BUTLER_REPOSITORY", &f.registry.butler_config)
        .env("KAFKA_CLUSTER", f.env.kafka_bootstrap())
        .env("KAFKA_TOPIC", &f.topics.events)
        .env("KAFKA_GROUP_ID", test_support::unique_name("pps"))
        .env("OUTPUT_DATASET_LIST_DIRECTORY", &directory)
        .env("PUBLICATION_SCHEMA", test_support::unique_name("pps"))
        .env("PUBLICATION_HTTP_ADDRESS", address.to_string())
        .envs(s3.profile_env("embargo"))
        .env_remove("PUBLICATION_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(address).await.is_ok()
            && common::counts(address).await.datasets == 9
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the batch file on S3 was not read"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn register_batch_re_drives_an_event_given_up_on_once_its_file_is_there() {
    let f = fixture(1).await;
    let batches = ingest(&f, 7_001_500, 1, 6).await;
    // The event comes, its batch file does not: the consumer waits, then records it as failed.
    let name = common::batch_file_name(batches[0].batch_id);
    let file = f.dir.path().join(&name);
    common::produce(
        f.env.kafka_bootstrap(),
        &f.topics.events,
        &[common::event(batches[0].batch_id, &name)],
        Some(0),
    )
    .await;
    let mut settings = common::settings(&f);
    settings.batch_file_wait = Duration::from_secs(1);
    let schema = settings.schema.clone();
    let consumer = common::start(settings).await;
    let address = service_kit::ServiceHandle::http_address(&consumer);
    common::wait_for_counts(address, Duration::from_secs(60), |c| c.failed_events == 1).await;

    // The operator lists it.
    let operator = |args: &[&str]| operator_command(&f, &schema, args).output().unwrap();
    let listed = String::from_utf8(operator(&["failed-events"]).stdout).unwrap();
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(
        listed.starts_with(&format!(
            "{}:0:0 batch_file_missing batch={}",
            f.topics.events, batches[0].batch_id
        )),
        "{listed}"
    );

    // The file turns up; the operator registers it, twice.
    std::fs::write(&file, batches[0].to_json()).unwrap();
    let register = || operator(&["register-batch", &name]);
    let output = register();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stdout.trim(),
        format!(
            "{name}: batch {} recorded, 6 datasets and 0 unknown ids added, 1 failed events resolved",
            batches[0].batch_id
        )
    );
    let counts = common::counts(address).await;
    assert_eq!((counts.datasets, counts.failed_events), (6, 0));
    let (_, failed) = common::get_json(address, "/api/v1/failed-events").await;
    assert_eq!(failed["failed_events"].as_array().unwrap().len(), 0);
    assert_eq!(operator(&["failed-events"]).stdout, b"");
    let all = String::from_utf8(operator(&["failed-events", "--all"]).stdout).unwrap();
    assert!(
        all.contains("[resolved ") && all.contains("registered by register-batch"),
        "{all}"
    );
    let output = register();
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(
            "already recorded, 0 datasets and 0 unknown ids added, 0 failed events resolved"
        ),
        "{output:?}"
    );

    // An event no one can use: the operator leaves it, explicitly, once.
    common::produce(
        f.env.kafka_bootstrap(),
        &f.topics.events,
        &[b"not an event".to_vec()],
        Some(0),
    )
    .await;
    common::wait_for_counts(address, Duration::from_secs(60), |c| c.failed_events == 1).await;
    let listed = String::from_utf8(operator(&["failed-events"]).stdout).unwrap();
    let place = listed.split(' ').next().unwrap().to_owned();
    assert_eq!(place, format!("{}:0:1", f.topics.events), "{listed}");
    let output = operator(&["resolve-failed", &place, "--reason", "a test event"]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("{place}: resolved")
    );
    assert_eq!(common::counts(address).await.failed_events, 0);
    let output = operator(&["resolve-failed", &place, "--reason", "again"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no unresolved failed event"), "{stderr}");

    // A file that is not there: one line, exit status 1.
    let output = operator(&["register-batch", "nonexistent.json"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("nonexistent.json"), "{stderr}");
    common::stop(consumer).await;
}

#[tokio::test]
async fn register_collections_backfills_a_run_by_type_once_and_asks_first() {
    let f = fixture(1).await;
    ingest(&f, 7_001_600, 1, 9).await;
    let run = output_run(&f).await;
    let schema = test_support::unique_name("pps");
    let backfill = |args: &[&str], stdin: &str| {
        let mut child = operator_command(&f, &schema, &[&["register-collections"], args].concat())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), stdin.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // Asked, and answered no: nothing recorded.
    let (status, stdout, _) = backfill(&[&run], "n\n");
    assert_eq!(status, Some(0));
    assert!(
        stdout.contains("total: 9") && stdout.contains("nothing recorded"),
        "{stdout}"
    );
    // One type, without asking.
    let (_, stdout, _) = backfill(
        &[&run, "--dataset-type", "preliminary_visit_image", "--yes"],
        "",
    );
    assert!(
        stdout.contains("preliminary_visit_image: 3\ntotal: 3\nrecorded: 3 datasets added"),
        "{stdout}"
    );
    // All of them: the other six; then nothing new.
    let (_, stdout, _) = backfill(&[&run, "--yes"], "");
    assert!(stdout.contains("recorded: 6 datasets added"), "{stdout}");
    let (_, stdout, _) = backfill(&[&run, "--yes"], "");
    assert!(
        stdout.contains("recorded: 0 datasets added, 0 new batches"),
        "{stdout}"
    );
    // A collection the registry does not have: one line, exit status 1.
    let (status, _, stderr) = backfill(&["no/such/run", "--yes"], "");
    assert_eq!(status, Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no collection \"no/such/run\""), "{stderr}");
}

/// The RUN collection of the fixture's datasets.
async fn output_run(f: &test_support::Fixture) -> String {
    let mut registry = sqlx::PgConnection::connect(&f.registry.database_url)
        .await
        .unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT DISTINCT c.name FROM {ns}.dataset d JOIN {ns}.collection c ON c.collection_id = d.run_id",
        ns = f.registry.namespace
    )))
    .fetch_one(&mut registry)
    .await
    .unwrap()
}

/// How many datasets the state has in prompt_prep, and how many the policy has released.
async fn unembargoed(state: &sqlx::PgPool, schema: &str) -> (i64, i64) {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT (SELECT count(*) FROM {schema}.dataset WHERE prompt_prep_status = 1),
                (SELECT count(*) FROM {schema}.dataset_release WHERE release_at <= now())"
    )))
    .fetch_one(state)
    .await
    .unwrap_or((0, -1))
}

/// The fault the transfers must survive: the consumer killed (SIGKILL) in the middle of the
/// unembargo task, between chunks or inside one, then started again, leaves prompt_prep's
/// registry (every table and sequence) and files exactly as an uninterrupted consumer leaves a
/// twin repository.
#[tokio::test]
async fn a_consumer_killed_mid_transfer_ends_where_an_uninterrupted_one_does() {
    let f = fixture(1).await;
    let batches = ingest(&f, 7_001_100, 1, 600).await;
    let paths = common::daf_butler::datastore_paths(&f.registry).await;
    common::daf_butler::write_files(&f.registry, &paths, |path| format!("{path}\n").into_bytes());
    announce(&f, &batches).await;
    let options = test_support::registry::RegistryOptions {
        without_output_run: true,
        ..Default::default()
    };
    let twin = f.env.fresh_registry_with(options.clone()).await.unwrap();
    let killed = f.env.fresh_registry_with(options).await.unwrap();
    let state = sqlx::PgPool::connect(&f.registry.database_url)
        .await
        .unwrap();
    let run = |prep: &test_support::TestRegistry, schema: &str, address| {
        consumer_command(
            address,
            &[
                (
                    "BUTLER_REPOSITORY",
                    f.registry.butler_config.display().to_string(),
                ),
                ("KAFKA_CLUSTER", f.env.kafka_bootstrap().to_owned()),
                ("KAFKA_TOPIC", f.topics.events.clone()),
                ("KAFKA_GROUP_ID", schema.to_owned()),
                (
                    "OUTPUT_DATASET_LIST_DIRECTORY",
                    f.dir.path().display().to_string(),
                ),
                ("PUBLICATION_SCHEMA", schema.to_owned()),
                (
                    "PUBLICATION_PROMPT_PREP_REPOSITORY",
                    prep.butler_config.display().to_string(),
                ),
                ("PUBLICATION_UNEMBARGO_CHUNK", "5".to_owned()),
                ("PUBLICATION_TRANSFER_IDLE_SECONDS", "0.2".to_owned()),
            ],
        )
    };
    let wait_until = |schema: String, done: fn((i64, i64)) -> bool| {
        let state = state.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let counts = unembargoed(&state, &schema).await;
                if done(counts) {
                    return counts;
                }
                assert!(Instant::now() < deadline, "{schema}: {counts:?}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    // Uninterrupted.
    let schema = test_support::unique_name("whole");
    let mut child = run(&twin, &schema, free_address()).spawn().unwrap();
    let (_, released) = wait_until(schema.clone(), |(n, r)| r > 0 && n == r).await;
    assert!(released >= 100, "{released}");
    child.kill().await.unwrap();

    // Killed once some chunks have landed and others have not, then started again.
    let schema = test_support::unique_name("killed");
    let mut child = run(&killed, &schema, free_address()).spawn().unwrap();
    let (at_kill, _) = wait_until(schema.clone(), |(n, r)| n > 0 && n < r).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let after_kill = unembargoed(&state, &schema).await;
    assert!(
        after_kill.0 < after_kill.1,
        "killed too late: {after_kill:?}"
    );
    let mut child = run(&killed, &schema, free_address()).spawn().unwrap();
    wait_until(schema.clone(), |(n, r)| r > 0 && n == r).await;
    child.kill().await.unwrap();
    eprintln!("killed with {at_kill} of {released} datasets in prompt_prep");

    common::daf_butler::assert_same_registries(&twin, &killed, "a kill mid-transfer").await;
    for path in common::daf_butler::datastore_paths(&twin).await {
        assert_eq!(
            std::fs::read(killed.repo.join(&path)).unwrap(),
            std::fs::read(twin.repo.join(&path)).unwrap(),
            "{path}"
        );
    }
}

/// `run-tasks`, the operator's PPS `run_tasks`: datasets recorded by a backfill under a policy
/// of 0 h embargoes are copied to prompt_prep by one command, which prints a line per task and
/// exits once a pass moves nothing; run again, it moves nothing. Without prompt_prep it is a
/// one-line configuration error.
#[tokio::test]
async fn run_tasks_transfers_until_caught_up_and_exits() {
    let f = fixture(1).await;
    ingest(&f, 7_001_700, 1, 30).await;
    let paths = common::daf_butler::datastore_paths(&f.registry).await;
    common::daf_butler::write_files(&f.registry, &paths, |path| format!("{path}\n").into_bytes());
    let prep = f
        .env
        .fresh_registry_with(test_support::registry::RegistryOptions {
            without_output_run: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let policy = f.dir.path().join("policy.yaml");
    let zero = zero_embargoes(publication_consumer::policy::DEPLOYED_POLICY);
    std::fs::write(&policy, zero).unwrap();
    let schema = test_support::unique_name("pps");
    let command = |args: &[&str], prep: Option<&test_support::TestRegistry>| {
        let mut command = operator_command(&f, &schema, args);
        command.env("PUBLICATION_POLICY_FILE", &policy);
        if let Some(prep) = prep {
            command.env("PUBLICATION_PROMPT_PREP_REPOSITORY", &prep.butler_config);
        }
        let output = command.output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let run = output_run(&f).await;
    let (status, stdout, stderr) = command(&["register-collections", &run, "--yes"], None);
    assert_eq!(status, Some(0), "{stdout}{stderr}");
    let state = sqlx::PgPool::connect(&f.registry.database_url)
        .await
        .unwrap();
    let (_, released) = unembargoed(&state, &schema).await;
    assert!(released > 0, "the 0 h policy releases some of them");

    let (status, stdout, stderr) = command(&["run-tasks"], Some(&prep));
    assert_eq!(status, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("unembargo: {released} transferred, 0 missing")),
        "{stdout}"
    );
    assert_eq!(unembargoed(&state, &schema).await, (released, released));
    let (status, stdout, _) = command(&["run-tasks"], Some(&prep));
    assert_eq!(status, Some(0));
    assert!(stdout.contains("unembargo: 0 transferred"), "{stdout}");

    let (status, _, stderr) = command(&["run-tasks"], None);
    assert_eq!(status, Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--prompt-prep-repository"), "{stderr}");
}

/// The policy with every embargo at 0 h.
fn zero_embargoes(policy: &str) -> String {
    policy
        .lines()
        .map(|line| match line.split_once("embargo_hours:") {
            Some((indent, _)) => format!("{indent}embargo_hours: 0"),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}
