//! Every kind of bad input gets an error at the offending value, naming the
//! field and saying what to change.

mod common;

use std::path::Path;

use isolate_policy::{Errors, PolicyError, parse_str};

const SOURCE: &str = "/etc/isolate/instances/web.toml";

fn errors(text: &str) -> Errors {
    match parse_str(text, Path::new(SOURCE)) {
        Ok(policy) => panic!("accepted:\n{text}\nas {policy:?}"),
        Err(errors) => errors,
    }
}

/// The only error of `text`.
fn one(text: &str) -> PolicyError {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors}");
    errors.0[0].clone()
}

/// Assert position and field, and that `needle` is in the displayed error (message or help).
#[track_caller]
fn assert_error(error: &PolicyError, line: usize, col: usize, field: &str, needle: &str) {
    common::assert_error(error, Path::new(SOURCE), line, col, field, needle);
}

/// Text of a policy with `user` on line 1 and `[network]` on line 2: line 3
/// is the `allow` line.
fn allow(entries: &str) -> String {
    format!("user = \"svc\"\n[network]\nallow = [{entries}]\n")
}

#[test]
fn toml_syntax_error() {
    let e = one("user = \"svc\"\n[network\nallow = []\n");
    assert_error(&e, 2, 9, "syntax", "unclosed table");
    let e = one("user = \"svc\"\nname = \n");
    assert_error(&e, 2, 8, "syntax", "expected");
}

#[test]
fn unknown_top_level_key() {
    let e = one("user = \"svc\"\nbogus = 1\n");
    assert_error(
        &e,
        2,
        1,
        "bogus",
        "unknown field `bogus`, expected one of `name`, `user`",
    );
}

#[test]
fn unknown_nested_key() {
    let e = one("user = \"svc\"\n[network]\nalow = []\n");
    assert_error(
        &e,
        3,
        1,
        "network.alow",
        "unknown field `alow`, expected one of `allow`",
    );
    let e = one(&allow("{ cidr = \"10.0.0.0/8\", prot = \"tcp\" }"));
    assert_error(
        &e,
        3,
        33,
        "network.allow[0].prot",
        "expected one of `cidr`, `host`, `ports`, `protocol`",
    );
    let e = one("user = \"svc\"\n[network]\nlog = { rate = \"1/second\", burst = 5 }\n");
    assert_error(
        &e,
        3,
        28,
        "network.log.burst",
        "unknown field `burst`, expected `rate`",
    );
    let e = one("user = \"svc\"\n[landlock]\nabi = 2\n");
    assert_error(&e, 3, 1, "landlock.abi", "expected `minimum_abi`");
}

#[test]
fn unknown_key_after_other_tables() {
    let text = "user = \"svc\"\n[network]\nallow = [\"10.0.0.0/8\"]\n[network.log]\nrate = \"1/hour\"\n\
                [filesystem]\nexec = [\"/usr\"]\n[landlock]\nminimum_abi = 2\nextra = 1\n";
    let e = one(text);
    assert_error(&e, 10, 1, "landlock.extra", "unknown field `extra`");
}

#[test]
fn errors_come_in_file_order() {
    let text = "[landlock]\nminimum_abi = 0\n[network]\nallow = [\"x:0\"]\n";
    let errors = errors(&format!("user = \"svc\"\n{text}"));
    let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [3, 5]);
}

#[test]
fn wrong_type() {
    let e = one("user = \"svc\"\n[landlock]\nminimum_abi = \"3\"\n");
    assert_error(
        &e,
        3,
        15,
        "landlock.minimum_abi",
        "invalid type: string \"3\", expected an integer",
    );
    let e = one("user = \"svc\"\nnetwork = 5\n");
    assert_error(&e, 2, 11, "network", "expected a table");
    let e = one(&allow("\"10.0.0.0/8\", 5"));
    assert_error(&e, 3, 24, "network.allow[1]", "expected an allow entry");
    let e = one(&allow("{ cidr = \"10.0.0.0/8\", ports = true }"));
    assert_error(
        &e,
        3,
        41,
        "network.allow[0].ports",
        "expected a port number",
    );
    let e = one("user = \"svc\"\n[filesystem]\nexec = \"/usr\"\n");
    assert_error(&e, 3, 8, "filesystem.exec", "expected a sequence");
    let e = one("user = 7\n");
    assert_error(&e, 1, 8, "user", "invalid type: integer `7`");
}

#[test]
fn missing_user() {
    let e = one("name = \"web\"\n[network]\nallow = []\n");
    assert_error(&e, 1, 1, "user", "missing field `user`");
    assert_eq!(
        e.help.as_deref(),
        Some("add `user = \"NAME\"`, or `user = \"dynamic\"` to allocate one")
    );
}

#[test]
fn bad_user_name() {
    let e = one("user = \"Web Server\"\n");
    assert_error(&e, 1, 8, "user", "`Web Server` is not a valid user name");
    let e = one("user = \"root\"\n");
    assert_error(&e, 1, 8, "user", "must not run as root");
    let e = one("user = \"nobody\"\n");
    assert_error(
        &e,
        1,
        8,
        "user",
        "`nobody` is shared with unrelated services",
    );
    assert!(
        e.help.as_deref().unwrap().contains("useradd --system"),
        "{e}"
    );
    let e = one(&format!("user = \"{}\"\n", "a".repeat(33)));
    assert_error(&e, 1, 8, "user", "not a valid user name");
}

#[test]
fn bad_cidr() {
    let e = one(&allow("\"10.0.0.300/8\""));
    assert_error(
        &e,
        3,
        10,
        "network.allow[0]",
        "`10.0.0.300` is not a valid IPv4 address",
    );
    let e = one(&allow("\"10.0.0.0/8\", { cidr = \"example.com\" }"));
    assert_error(
        &e,
        3,
        33,
        "network.allow[1].cidr",
        "in the table form it goes in `host = ...`",
    );
    let e = one(&allow("\"10.0.0.0/abc\""));
    assert_error(&e, 3, 10, "network.allow[0]", "unknown protocol `abc`");
    let e = one(&allow("\"10.0.0.0/\""));
    assert_error(&e, 3, 10, "network.allow[0]", "`/` is not a prefix length");
}

#[test]
fn host_bits_set() {
    let e = one(&allow("\"10.0.0.0/8\", \"10.0.0.1/8:443\""));
    assert_error(
        &e,
        3,
        24,
        "network.allow[1]",
        "`10.0.0.1/8` has host bits set",
    );
    assert!(e.help.unwrap().starts_with("did you mean 10.0.0.0/8?"));
    let e = one(&allow("{ cidr = \"2001:db8::1/32\" }"));
    assert_error(
        &e,
        3,
        19,
        "network.allow[0].cidr",
        "did you mean 2001:db8::/32?",
    );
}

#[test]
fn prefix_too_long() {
    let e = one(&allow("\"10.0.0.0/33\""));
    assert_error(&e, 3, 10, "network.allow[0]", "prefix /33 is too long");
    let e = one(&allow("\"[2001:db8::/129]:443\""));
    assert_error(
        &e,
        3,
        10,
        "network.allow[0]",
        "the prefix length is at most /128",
    );
}

#[test]
fn mapped_prefix_too_short() {
    let e = one(&allow("\"::ffff:10.0.0.0/64\""));
    assert_error(&e, 3, 10, "network.allow[0]", "shorter than /96");
}

#[test]
fn ipv6_port_without_brackets() {
    let e = one(&allow("\"2001:db8::/32:443\""));
    assert_error(
        &e,
        3,
        10,
        "network.allow[0]",
        "needs brackets: \"[2001:db8::/32]:443\"",
    );
}

#[test]
fn bad_port() {
    let e = one(&allow("\"10.0.0.0/8:0\""));
    assert_error(&e, 3, 10, "network.allow[0]", "0 is not a valid port");
    let e = one(&allow("{ host = \"a.example\", ports = 70000 }"));
    assert_error(
        &e,
        3,
        40,
        "network.allow[0].ports",
        "ports run from 1 to 65535",
    );
    let e = one(&allow("\"10.0.0.0/8:https\""));
    assert_error(
        &e,
        3,
        10,
        "network.allow[0]",
        "`https` is not a port number",
    );
}

#[test]
fn reversed_port_range() {
    let e = one(&allow("\"10.0.0.0/8:900-100\""));
    assert_error(
        &e,
        3,
        10,
        "network.allow[0]",
        "port range `900-100` is reversed",
    );
    assert_eq!(e.help.as_deref(), Some("did you mean 100-900?"));
    let e = one(&allow("{ cidr = \"10.0.0.0/8\", ports = \"9000-8000\" }"));
    assert_error(
        &e,
        3,
        41,
        "network.allow[0].ports",
        "did you mean 8000-9000?",
    );
}

#[test]
fn unknown_protocol() {
    let e = one(&allow("\"10.0.0.0/8:53/icmp\""));
    assert_error(&e, 3, 10, "network.allow[0]", "unknown protocol `icmp`");
    assert!(e.help.unwrap().contains("/tcp or /udp"));
    let e = one(&allow("{ cidr = \"10.0.0.0/8\", protocol = \"sctp\" }"));
    assert_error(
        &e,
        3,
        44,
        "network.allow[0].protocol",
        "use \"tcp\", \"udp\" or \"any\"",
    );
}

#[test]
fn bad_hostname() {
    let e = one(&allow("\"bad_host.example.com:443\""));
    assert_error(&e, 3, 10, "network.allow[0]", "`_` is not allowed");
    let e = one(&allow("\"api.*.example.com\""));
    assert_error(
        &e,
        3,
        10,
        "network.allow[0]",
        "only a whole leading label can be a wildcard",
    );
    let e = one(&allow("{ host = \"-x.example\" }"));
    assert_error(
        &e,
        3,
        19,
        "network.allow[0].host",
        "starts or ends with `-`",
    );
}

#[test]
fn allow_table_needs_exactly_one_target() {
    let e = one(&allow("{ ports = 443 }"));
    assert_error(&e, 3, 10, "network.allow[0]", "neither `cidr` nor `host`");
    let e = one(&allow("{ cidr = \"10.0.0.0/8\", host = \"a.example\" }"));
    assert_error(
        &e,
        3,
        40,
        "network.allow[0].host",
        "either `cidr` or `host`, not both",
    );
}

#[test]
fn relative_filesystem_path() {
    let e = one("user = \"svc\"\n[filesystem]\nread_only = [\"/usr\", \"etc/ssl\"]\n");
    assert_error(
        &e,
        3,
        22,
        "filesystem.read_only[1]",
        "`etc/ssl` is a relative path",
    );
    assert!(e.help.unwrap().contains("(/etc/ssl)"));
    let e = one("user = \"svc\"\n[filesystem]\nexec = [\"\"]\n");
    assert_error(&e, 3, 9, "filesystem.exec[0]", "the path is empty");
    let e = one("user = \"svc\"\n[filesystem]\nread_write = [\"~/a/../../etc\"]\n");
    assert_error(
        &e,
        3,
        15,
        "filesystem.read_write[0]",
        "contains a `..` component",
    );
    let e = one("user = \"svc\"\n[filesystem]\nread_write = [\"~bob/x\"]\n");
    assert_error(
        &e,
        3,
        15,
        "filesystem.read_write[0]",
        "write ~/... or an absolute path",
    );
    let e = one("user = \"svc\"\ndirectory = \"srv\"\n");
    assert_error(&e, 2, 13, "directory", "`srv` is a relative path");
}

#[test]
fn relative_unix_socket() {
    let e = one("user = \"svc\"\n[network]\nunix_sockets = [\"run/x.sock\"]\n");
    assert_error(
        &e,
        3,
        17,
        "network.unix_sockets[0]",
        "`run/x.sock` is not an absolute path",
    );
    let long = format!("/{}", "s".repeat(107));
    let e = one(&format!(
        "user = \"svc\"\n[network]\nunix_sockets = [\"{long}\"]\n"
    ));
    assert_error(&e, 3, 17, "network.unix_sockets[0]", "at most 107 bytes");
}

#[test]
fn bad_name() {
    let e = one("name = \"My Project\"\nuser = \"svc\"\n");
    assert_error(
        &e,
        1,
        8,
        "name",
        "`My Project` is not a valid instance name",
    );
    let e = one(&format!("name = \"{}\"\nuser = \"svc\"\n", "a".repeat(33)));
    assert_error(&e, 1, 8, "name", "1 to 32 characters");
    // Without `name`, the file stem must be a valid name.
    let errors = parse_str("user = \"svc\"\n", Path::new("/x/My Project.toml")).unwrap_err();
    assert_eq!(errors.len(), 1);
    let e = &errors.0[0];
    assert_eq!((e.line, e.col, e.field.as_str()), (1, 1, "name"));
    assert!(
        e.message
            .contains("file name `My Project` is not a valid instance name")
    );
}

#[test]
fn bad_rate() {
    let e = one("user = \"svc\"\n[network]\nlog = { rate = \"10/fortnight\" }\n");
    assert_error(
        &e,
        3,
        16,
        "network.log.rate",
        "`10/fortnight` is not a rate",
    );
    let e = one("user = \"svc\"\n[network.log]\nrate = \"0/second\"\n");
    assert_error(&e, 3, 8, "network.log.rate", "COUNT at least 1");
}

#[test]
fn bad_dns() {
    let e = one("user = \"svc\"\n[network]\ndns = \"google\"\n");
    assert_error(&e, 3, 7, "network.dns", "unknown dns setting `google`");
    let e = one("user = \"svc\"\n[network]\ndns = [\"10.0.0.53\", \"ns1.example\"]\n");
    assert_error(
        &e,
        3,
        21,
        "network.dns[1]",
        "`ns1.example` is not an IP address",
    );
    let e = one("user = \"svc\"\n[network]\ndns = []\n");
    assert_error(&e, 3, 7, "network.dns", "use dns = \"none\"");
}

#[test]
fn minimum_abi_out_of_range() {
    let e = one("user = \"svc\"\n[landlock]\nminimum_abi = 8\n");
    assert_error(
        &e,
        3,
        15,
        "landlock.minimum_abi",
        "minimum_abi 8 is out of range",
    );
    let e = one("user = \"svc\"\n[landlock]\nminimum_abi = 0\n");
    assert_error(&e, 3, 15, "landlock.minimum_abi", "from 1 to 7");
}

#[test]
fn collects_every_error_in_file_order() {
    let text = "name = \"Bad\"\nuser = \"svc\"\n[network]\n\
                allow = [\"10.0.0.1/8\", \"ok.example\", \"x:0\"]\n\
                [filesystem]\nexec = [\"bin\"]\n[landlock]\nminimum_abi = 9\n";
    let errors = errors(text);
    let found: Vec<(usize, usize, &str)> = errors
        .iter()
        .map(|e| (e.line, e.col, e.field.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![
            (1, 8, "name"),
            (4, 10, "network.allow[0]"),
            (4, 38, "network.allow[2]"),
            (6, 9, "filesystem.exec[0]"),
            (8, 15, "landlock.minimum_abi"),
        ]
    );
}

#[test]
fn display_format() {
    let e = one(&allow("\"10.0.0.1/8\""));
    assert_eq!(
        e.to_string(),
        "/etc/isolate/instances/web.toml:3:10: network.allow[0]: `10.0.0.1/8` has host bits set\n  \
         help: did you mean 10.0.0.0/8? (or 10.0.0.1/32 for the single address)"
    );
    let e = one("user = \"svc\"\n[network]\ndns = 5\n");
    assert_eq!(
        e.to_string(),
        "/etc/isolate/instances/web.toml:3:7: network.dns: invalid type: integer `5`, \
         expected \"system\", \"none\" or a list of resolver addresses"
    );
    let two = errors("user = \"svc\"\n[landlock]\nminimum_abi = 0\n[filesystem]\n");
    assert_eq!(two.to_string(), two.0[0].to_string());
}

#[test]
fn columns_count_characters_not_bytes() {
    let e = one("user = \"svc\" # é\ndirectory = \"é/x\"\n");
    assert_error(&e, 2, 13, "directory", "relative path");
    let e = one("name = \"é\" \nuser = \"svc\"\n");
    assert_error(&e, 1, 8, "name", "not a valid instance name");
    let two = errors("user = \"svc\"\n[network]\nallow = [\"é\", \"10.0.0.1/8\"]\n");
    assert_error(&two.0[0], 3, 10, "network.allow[0]", "not ASCII");
    assert_error(&two.0[1], 3, 15, "network.allow[1]", "host bits set");
}

#[test]
fn environment_names_and_the_file_path_are_checked() {
    let e = one("user = \"a\"\nenvironment = { \"1X\" = \"v\" }\n");
    assert_error(&e, 2, 15, "environment", "`1X` is not a variable name");
    let e = one("user = \"a\"\nenvironment = { HOME = \"/tmp\" }\n");
    assert_error(&e, 2, 15, "environment", "`HOME` is set by isolate");
    let e = one("user = \"a\"\nenvironment_file = \"~/keys.env\"\n");
    assert_error(&e, 2, 20, "environment_file", "must be an absolute path");
    let e = one("user = \"a\"\nenvironment_file = \"keys.env\"\n");
    assert_error(&e, 2, 20, "environment_file", "is a relative path");
}

#[test]
fn listen_entries_are_addresses_not_names() {
    let error = one("user = \"a\"\n[network]\nlisten = [\"localhost:8787\"]\n");
    assert_error(&error, 3, 11, "network.listen[0]", "`localhost` is a name");
    assert!(
        error
            .help
            .as_deref()
            .unwrap_or("")
            .contains("127.0.0.1:8787/tcp"),
        "{error:?}"
    );
    let error = one("user = \"a\"\n[network]\nlisten = [\"127.0.0.1:99999/tcp\"]\n");
    assert_error(&error, 3, 11, "network.listen[0]", "99999");
}

#[test]
fn resource_limits_are_checked() {
    for (value, field, needle) in [
        ("pids_max = 0", "resources.pids_max", "out of range"),
        (
            "pids_max = \"lots\"",
            "resources.pids_max",
            "not a number of tasks",
        ),
        ("memory_max = \"4X\"", "resources.memory_max", "not a size"),
        ("memory_max = 1000", "resources.memory_max", "below 1M"),
    ] {
        let error = one(&format!("user = \"a\"\n[resources]\n{value}\n"));
        let col = value.find('=').unwrap() + 3;
        assert_error(&error, 3, col, field, needle);
        assert!(error.help.is_some(), "{error:?}");
    }
}
