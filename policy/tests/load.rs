//! Loading files and directories, and the checks across files.

use std::fs;
use std::path::{Path, PathBuf};

mod common;

use common::assert_error;
use isolate_policy::{UserSpec, load_dir, load_dir_partly, load_file, load_paths};

/// A fresh, empty directory for one test, with the given files.
fn dir_with(test: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("isolate-policy-load")
        .join(test);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    for (name, text) in files {
        fs::write(dir.join(name), text).unwrap();
    }
    dir
}

#[test]
fn loads_a_directory_in_name_order_ignoring_other_files() {
    let dir = dir_with(
        "ok",
        &[
            ("web.toml", "user = \"web\"\n"),
            ("api.toml", "name = \"api\"\nuser = \"dynamic\"\n"),
            ("worker.toml", "user = \"dynamic\"\n"),
            ("README.md", "not a policy"),
            ("web.toml.bak", "garbage ="),
            (".#web.toml", "garbage ="),
        ],
    );
    fs::create_dir_all(dir.join("sub.toml")).unwrap();
    let policies = load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["api", "web", "worker"]);
    assert_eq!(policies[1].source, dir.join("web.toml"));
    // Dynamic users never conflict.
    assert_eq!(policies[0].user, UserSpec::Dynamic);
    assert_eq!(policies[2].user, UserSpec::Dynamic);
}

#[test]
fn name_must_match_file_stem_in_a_directory() {
    let dir = dir_with("stem", &[("web.toml", "user = \"web\"\nname = \"api\"\n")]);
    let errors = load_dir(&dir).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors}");
    let e = &errors.0[0];
    assert_error(
        e,
        &dir.join("web.toml"),
        2,
        8,
        "name",
        "name `api` differs from the file name `web.toml`",
    );
    assert!(
        e.help
            .as_deref()
            .unwrap()
            .contains("rename the file to `api.toml`")
    );
    // A file named explicitly may carry another name.
    assert_eq!(load_file(&dir.join("web.toml")).unwrap().name, "api");
}

#[test]
fn duplicate_users_across_files() {
    let dir = dir_with(
        "users",
        &[
            ("a.toml", "user = \"svc\"\n"),
            ("b.toml", "# second\nuser = \"svc\"\n"),
            ("c.toml", "user = \"other\"\n"),
        ],
    );
    let errors = load_dir(&dir).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors}");
    let e = &errors.0[0];
    let first = dir.join("a.toml");
    let needle = format!(
        "user `svc` is also used by instance `a` ({})",
        first.display()
    );
    assert_error(e, &dir.join("b.toml"), 2, 8, "user", &needle);
    assert!(e.help.as_deref().unwrap().contains("user = \"dynamic\""));
}

#[test]
fn duplicate_names_across_paths() {
    let one = dir_with("names1", &[("web.toml", "user = \"dynamic\"\n")]);
    let two = dir_with("names2", &[("web.toml", "user = \"dynamic\"\n")]);
    let errors = load_paths(&[one.clone(), two.clone()]).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors}");
    let needle = format!(
        "instance name `web` is also used by {}",
        one.join("web.toml").display()
    );
    assert_error(&errors.0[0], &two.join("web.toml"), 1, 1, "name", &needle);

    let three = dir_with(
        "names3",
        &[("x.toml", "user = \"dynamic\"\n\nname = \"web\"\n")],
    );
    let errors = load_paths(&[one.clone(), three.join("x.toml")]).unwrap_err();
    assert_error(
        &errors.0[0],
        &three.join("x.toml"),
        3,
        8,
        "name",
        "is also used by",
    );
}

#[test]
fn load_paths_mixes_files_and_directories() {
    let dir = dir_with(
        "mixed",
        &[("a.toml", "user = \"a\"\n"), ("b.toml", "user = \"b\"\n")],
    );
    let other = dir_with("mixed-other", &[("c.toml", "user = \"c\"\n")]);
    let policies = load_paths(&[dir, other.join("c.toml")]).unwrap();
    let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
}

#[test]
fn reports_errors_of_every_file() {
    let dir = dir_with(
        "many",
        &[
            (
                "a.toml",
                "user = \"a\"\n[network]\nallow = [\"10.0.0.1/8\"]\n",
            ),
            ("b.toml", "user = \"b\"\nbogus = true\n"),
            ("c.toml", "user = \"c\"\n"),
        ],
    );
    let errors = load_dir(&dir).unwrap_err();
    let found: Vec<(PathBuf, usize, usize)> = errors
        .iter()
        .map(|e| (e.path.clone(), e.line, e.col))
        .collect();
    assert_eq!(
        found,
        [(dir.join("a.toml"), 3, 10), (dir.join("b.toml"), 2, 1)]
    );
}

#[test]
fn io_errors_name_the_path() {
    let dir = dir_with("io", &[]);
    let missing = dir.join("missing.toml");
    let errors = load_file(&missing).unwrap_err();
    let e = &errors.0[0];
    assert_eq!((e.line, e.col, e.field.as_str()), (0, 0, "file"));
    assert_eq!(e.path, missing);
    assert!(e.to_string().starts_with(&format!(
        "{}: file: cannot read the file: ",
        missing.display()
    )));

    let errors = load_dir(&dir.join("nope")).unwrap_err();
    assert!(errors.0[0].message.starts_with("cannot list the directory"));

    fs::write(dir.join("latin1.toml"), b"user = \"\xe9\"\n").unwrap();
    let errors = load_file(&dir.join("latin1.toml")).unwrap_err();
    assert!(errors.0[0].message.contains("UTF-8"), "{errors}");
}

#[test]
fn empty_directory_is_no_instances() {
    let dir = dir_with("empty", &[]);
    assert!(load_dir(&dir).unwrap().is_empty());
}

#[test]
fn a_partly_broken_directory_keeps_the_rules_of_a_clean_one() {
    let dir = dir_with(
        "partly",
        &[
            ("a.toml", "user = \"svc\"\n"),
            // An editor's backup: never an instance, broken or not.
            (".hidden.toml", "user = \"hidden\"\n"),
            ("b.toml", "user = \"b\"\nbogus = true\n"),
            ("c.toml", "user = \"c\"\nname = \"other\"\n"),
            ("d.toml", "user = \"svc\"\n"),
            ("e.toml", "user = \"e\"\n"),
        ],
    );
    let loaded = load_dir_partly(&dir).unwrap();
    let names: Vec<&str> = loaded.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a", "e"], "{loaded:?}");
    let failed: Vec<PathBuf> = loaded.failed.keys().cloned().collect();
    assert_eq!(
        failed,
        [dir.join("b.toml"), dir.join("c.toml"), dir.join("d.toml")]
    );
    let d = &loaded.failed[&dir.join("d.toml")];
    assert!(d.to_string().contains("user `svc` is also used"), "{d}");
    // The clean loader reports exactly these errors.
    let all = load_dir(&dir).unwrap_err();
    let count: usize = loaded
        .failed
        .values()
        .map(isolate_policy::Errors::len)
        .sum();
    assert_eq!(all.len(), count, "{all}");
}

#[test]
fn files_and_directories_others_may_write_are_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = dir_with(
        "modes",
        &[("a.toml", "user = \"a\"\n"), ("b.toml", "user = \"b\"\n")],
    );
    fs::set_permissions(dir.join("a.toml"), fs::Permissions::from_mode(0o664)).unwrap();
    let errors = load_dir(&dir).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors}");
    let e = &errors.0[0];
    assert_eq!(
        (e.path.clone(), e.field.as_str()),
        (dir.join("a.toml"), "file")
    );
    assert!(
        e.message.contains("writable by group or others (mode 664)"),
        "{e}"
    );
    assert_eq!(
        e.help.as_deref(),
        Some(format!("chmod go-w {}", dir.join("a.toml").display()).as_str())
    );
    // The daemon goes on with the trusted file.
    let loaded = load_dir_partly(&dir).unwrap();
    assert_eq!(loaded.policies.len(), 1);
    assert!(load_file(&dir.join("a.toml")).is_err());

    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let errors = load_dir_partly(&dir).unwrap_err();
    assert!(errors.0[0].message.contains("mode 777"), "{errors}");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn an_unlistable_directory_is_an_error_not_an_empty_one() {
    let dir = dir_with("partly-missing", &[]);
    let errors = load_dir_partly(&dir.join("nope")).unwrap_err();
    assert!(errors.0[0].message.starts_with("cannot list the directory"));
    assert!(load_dir_partly(&dir).unwrap().policies.is_empty());
}
