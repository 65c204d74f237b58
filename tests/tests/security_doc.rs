//! SECURITY.md names, for every claim, the tests that prove it. A claim without a test, or
//! a test name that no longer exists (renamed, deleted), fails here.

use std::collections::BTreeSet;
use std::path::Path;

/// Every `fn NAME` and `mod NAME` in the Rust sources of the repository (tests included).
fn function_names(dir: &Path, names: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let file_name = entry.file_name();
        if path.is_dir() {
            if file_name != "target" && file_name != ".git" && file_name != "node_modules" {
                function_names(&path, names);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for keyword in ["fn ", "mod "] {
                for piece in text.split(keyword).skip(1) {
                    let name: String = piece.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    if !name.is_empty() {
                        names.insert(name);
                    }
                }
            }
        }
    }
}

/// The test names a line cites: backquoted `path::to::function` items.
fn cited_tests(line: &str) -> Vec<String> {
    line.split('`')
        .skip(1)
        .step_by(2)
        .filter(|item| item.contains("::") && !item.contains(' '))
        .filter_map(|item| item.rsplit("::").next().map(str::to_owned))
        .filter(|name| name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .collect()
}

#[test]
fn every_claim_cites_tests_that_exist() {
    let text = std::fs::read_to_string(diplo_tests::repository_root().join("SECURITY.md")).expect("SECURITY.md");
    let mut names = BTreeSet::new();
    function_names(&diplo_tests::repository_root(), &mut names);
    assert!(names.contains("every_claim_cites_tests_that_exist"), "the source walk finds this very test");

    // A claim is a bullet with its continuation lines, under a `##` heading other than Parties.
    let mut claims: Vec<String> = Vec::new();
    let mut in_claims = false;
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            in_claims = heading != "Parties";
            continue;
        }
        if !in_claims {
            continue;
        }
        if let Some(bullet) = line.strip_prefix("* ") {
            claims.push(bullet.to_owned());
        } else if line.starts_with("  ")
            && let Some(last) = claims.last_mut()
        {
            last.push(' ');
            last.push_str(line.trim());
        }
    }
    assert!(claims.len() >= 20, "SECURITY.md lost its claims: {claims:?}");
    for claim in &claims {
        let cited = cited_tests(claim);
        assert!(!cited.is_empty(), "a claim of SECURITY.md cites no test: {claim}");
        for name in cited {
            assert!(names.contains(&name), "SECURITY.md cites `{name}`, which no source file defines: {claim}");
        }
    }
}

#[test]
fn cited_tests_are_the_last_path_segment() {
    assert_eq!(
        cited_tests("x — `authz::every_rpc`, `rootfs::tests`, `--allow-host-path DIR`, `(hidden)`, `a::B`"),
        vec!["every_rpc".to_owned(), "tests".to_owned()]
    );
}
