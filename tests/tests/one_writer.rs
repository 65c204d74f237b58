//! One writer per database: a second control plane started on the database another one
//! writes to exits at once, non-zero, naming the first (its pid and host) and without
//! listening; once the first is killed with SIGKILL, the second one starts.

use std::time::Duration;

use diplo_tests::postgres::TestDatabase;
use diplo_tests::{ControlPlane, ControlPlaneOptions};

/// How long a refused control plane may take to exit.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(20);

fn second_is_refused_until_the_first_dies(database_url: &str) {
    let options = ControlPlaneOptions { database_url: Some(database_url.to_owned()), ..Default::default() };
    let mut first = ControlPlane::start(options.clone());
    let first_pid = first.process().pid();

    let mut second = ControlPlane::spawn(options.clone());
    let status = second
        .process()
        .wait_exit(REFUSAL_TIMEOUT)
        .unwrap_or_else(|| panic!("a second control plane on the same database still runs:\n{}", second.logs()));
    assert!(!status.success(), "the second control plane must fail:\n{}", second.logs());
    let stderr = second.stderr();
    let named = format!("another control plane (pid {first_pid} on host ");
    assert!(stderr.contains(&named), "the refusal should name the first control plane ({named}…):\n{stderr}");
    assert!(
        stderr.contains("is the writer for this database; stop it first or point this one at another database"),
        "the refusal should say what to do:\n{stderr}"
    );
    assert!(!second.stdout().contains("Diplo control plane is up."), "the second must not come up:\n{}", second.logs());
    // The first one is untouched.
    assert_eq!(first.rest_get("/healthz", None).status, 200, "{}", first.logs());

    // A crash frees the database at once: the lock dies with the process, and the
    // second one, started again, becomes the writer.
    first.process().kill();
    second.crash_and_restart();
    assert_eq!(second.nodes(), Vec::<serde_json::Value>::new(), "the second one serves");
}

#[test]
fn postgres_second_control_plane_is_refused_until_the_first_dies() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let Some(database) = runtime.block_on(TestDatabase::create()) else {
        return;
    };
    let outcome = std::panic::catch_unwind(|| second_is_refused_until_the_first_dies(&database.url));
    runtime.block_on(database.drop_best_effort());
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn sqlite_second_control_plane_is_refused_until_the_first_dies() {
    let dir = tempfile::tempdir().expect("temporary directory");
    second_is_refused_until_the_first_dies(&format!("sqlite://{}", dir.path().join("shared.db").display()));
}
