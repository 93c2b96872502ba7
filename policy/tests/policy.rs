//! Valid policies: the design's example, defaults, normalisation, printing.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use isolate_policy::{
    Addition, DnsSetting, HostRule, ListField, NetRule, Policy, PortRange, Protocol, Rate,
    RateUnit, UserSpec, expand_home, parse_str,
};

/// The example policy of examples/my-project.toml, as first written.
const DESIGN_EXAMPLE: &str = r#"
name = "my-project"
user = "opencode-my-project"      # or "dynamic": allocate a UID from a reserved range
directory = "/srv/my-project"

[network]
allow = ["10.0.0.0/8", "192.168.0.0/16", "2001:db8::/32", "127.0.0.1/32:8787", "api.anthropic.com:443"]
dns = "system"                    # resolvers that must stay reachable
log = { rate = "10/second" }
unix_sockets = ["/run/postgresql/.s.PGSQL.5432"]

[filesystem]
read_write = ["/srv/my-project", "~/.local/share/opencode"]
read_only = ["/nix/store", "/usr", "/etc/ssl"]
exec = ["/usr/bin", "/usr/lib"]

[landlock]
minimum_abi = 1                   # refuse to run below this; use more when the kernel has it
"#;

fn parse(text: &str) -> Policy {
    parse_str(text, Path::new("/etc/isolate/instances/my-project.toml"))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn v4(net: &str, ports: Option<(u16, u16)>, protocol: Protocol) -> NetRule<Ipv4Net> {
    NetRule {
        net: net.parse().unwrap(),
        ports: ports.map(|(first, last)| PortRange { first, last }),
        protocol,
    }
}

fn v6(net: &str, ports: Option<(u16, u16)>, protocol: Protocol) -> NetRule<Ipv6Net> {
    NetRule {
        net: net.parse().unwrap(),
        ports: ports.map(|(first, last)| PortRange { first, last }),
        protocol,
    }
}

fn paths(items: &[&str]) -> Vec<PathBuf> {
    items.iter().map(PathBuf::from).collect()
}

/// Printing and parsing again gives the same policy (bar `source`).
#[track_caller]
fn assert_round_trips(policy: &Policy) {
    let printed = policy.to_toml();
    let mut again = parse_str(&printed, Path::new("/elsewhere/other.toml"))
        .unwrap_or_else(|e| panic!("{e}\nin:\n{printed}"));
    again.source.clone_from(&policy.source);
    assert_eq!(&again, policy, "printed as:\n{printed}");
    assert_eq!(again.to_toml(), printed);
}

#[test]
fn design_example_parses() {
    let p = parse(DESIGN_EXAMPLE);
    assert_eq!(p.name, "my-project");
    assert_eq!(p.user, UserSpec::Named("opencode-my-project".into()));
    assert_eq!(p.directory, Some(PathBuf::from("/srv/my-project")));
    assert_eq!(
        p.network.allow_v4,
        vec![
            v4("10.0.0.0/8", None, Protocol::Any),
            v4("192.168.0.0/16", None, Protocol::Any),
            v4("127.0.0.1/32", Some((8787, 8787)), Protocol::Any),
        ]
    );
    assert_eq!(
        p.network.allow_v6,
        vec![v6("2001:db8::/32", None, Protocol::Any)]
    );
    assert_eq!(
        p.network.hosts,
        vec![HostRule {
            pattern: "api.anthropic.com".into(),
            ports: Some(PortRange::single(443)),
            protocol: Protocol::Any,
        }]
    );
    assert_eq!(p.network.dns, DnsSetting::System);
    assert_eq!(
        p.network.log.rate,
        Rate {
            count: 10,
            per: RateUnit::Second
        }
    );
    assert_eq!(
        p.network.unix_sockets,
        paths(&["/run/postgresql/.s.PGSQL.5432"])
    );
    assert_eq!(
        p.filesystem.read_write,
        paths(&["/srv/my-project", "~/.local/share/opencode"])
    );
    assert_eq!(
        p.filesystem.read_only,
        paths(&["/nix/store", "/usr", "/etc/ssl"])
    );
    assert_eq!(p.filesystem.exec, paths(&["/usr/bin", "/usr/lib"]));
    assert_eq!(p.landlock.minimum_abi, 1);
    assert_eq!(
        p.source,
        Path::new("/etc/isolate/instances/my-project.toml")
    );
    assert_round_trips(&p);
}

#[test]
fn defaults() {
    let p = parse_str(
        "user = \"dynamic\"\n",
        Path::new("/etc/isolate/instances/agent-1.toml"),
    )
    .unwrap();
    assert_eq!(p.name, "agent-1");
    assert_eq!(p.user, UserSpec::Dynamic);
    assert_eq!(p.directory, None);
    assert!(p.network.allow_v4.is_empty() && p.network.allow_v6.is_empty());
    assert!(p.network.hosts.is_empty() && p.network.unix_sockets.is_empty());
    assert_eq!(p.network.dns, DnsSetting::System);
    assert_eq!(
        p.network.log.rate,
        Rate {
            count: 10,
            per: RateUnit::Second
        }
    );
    assert!(p.filesystem.read_only.is_empty());
    assert_eq!(p.landlock.minimum_abi, 1);
    assert_round_trips(&p);
}

#[test]
fn every_allow_form() {
    let p = parse(
        r#"
user = "svc$"
[network]
allow = [
    "10.0.0.0/8", "127.0.0.1/32:8787", "192.168.1.10:53/udp", "10.1.0.0/16/tcp",
    "api.anthropic.com:443", "*.GitHub.com:443/tcp", "::1", "[::1]:8787",
    "[2001:db8::/32]:443-444/tcp",
    { cidr = "172.16.0.0/12", ports = "8000-8100", protocol = "tcp" },
    { cidr = "fd00::/8", ports = 22 },
    { host = "pypi.org", ports = 443, protocol = "any" },
    { host = "*.example.com" },
]
dns = ["10.0.0.53", "2001:db8::53", "::ffff:10.0.0.54", "10.0.0.53"]
log = { rate = "5/minute" }
[landlock]
minimum_abi = 7
"#,
    );
    assert_eq!(
        p.network.allow_v4,
        vec![
            v4("10.0.0.0/8", None, Protocol::Any),
            v4("127.0.0.1/32", Some((8787, 8787)), Protocol::Any),
            v4("10.1.0.0/16", None, Protocol::Tcp),
            v4("172.16.0.0/12", Some((8000, 8100)), Protocol::Tcp),
            v4("192.168.1.10/32", Some((53, 53)), Protocol::Udp),
        ]
    );
    assert_eq!(
        p.network.allow_v6,
        vec![
            v6("::1/128", None, Protocol::Any),
            v6("fd00::/8", Some((22, 22)), Protocol::Any),
            v6("::1/128", Some((8787, 8787)), Protocol::Any),
            v6("2001:db8::/32", Some((443, 444)), Protocol::Tcp),
        ]
    );
    let hosts: Vec<String> = p.network.hosts.iter().map(ToString::to_string).collect();
    assert_eq!(
        hosts,
        [
            "api.anthropic.com:443",
            "*.github.com:443/tcp",
            "pypi.org:443",
            "*.example.com"
        ]
    );
    let servers: Vec<IpAddr> = ["10.0.0.53", "2001:db8::53", "10.0.0.54"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(p.network.dns, DnsSetting::Servers(servers));
    assert_eq!(
        p.network.log.rate,
        Rate {
            count: 5,
            per: RateUnit::Minute
        }
    );
    assert_eq!(p.user, UserSpec::Named("svc$".into()));
    assert_eq!(p.landlock.minimum_abi, 7);
    assert_round_trips(&p);
}

#[test]
fn normalisation_merges_and_converts() {
    let p = parse(
        r#"
user = "svc"
[network]
allow = [
    "10.128.0.0/9", "10.0.0.0/9",            # adjacent halves -> 10.0.0.0/8
    "192.168.0.0/16", "192.168.4.0/24",      # overlapping -> the /16
    "::ffff:172.16.0.0/108",                 # mapped v6 -> 172.16.0.0/12
    "::ffff:1.2.3.4",                        # mapped address -> 1.2.3.4/32
    "1.2.3.4:443", "1.2.3.5:443", "1.2.3.4:80",  # ports keep groups apart
    "2001:db8:8000::/33", "2001:db8::/33",
    "api.example.com", "API.example.com.",   # same host
]
unix_sockets = ["/run/a.sock", "/run/a.sock", "/run/./b.sock"]
[filesystem]
read_only = ["/usr/", "/usr", "~/", "~", "/etc//ssl"]
"#,
    );
    assert_eq!(
        p.network.allow_v4,
        vec![
            v4("1.2.3.4/32", None, Protocol::Any),
            v4("10.0.0.0/8", None, Protocol::Any),
            v4("172.16.0.0/12", None, Protocol::Any),
            v4("192.168.0.0/16", None, Protocol::Any),
            v4("1.2.3.4/32", Some((80, 80)), Protocol::Any),
            v4("1.2.3.4/31", Some((443, 443)), Protocol::Any),
        ]
    );
    assert_eq!(
        p.network.allow_v6,
        vec![v6("2001:db8::/32", None, Protocol::Any)]
    );
    assert_eq!(p.network.hosts.len(), 1);
    assert_eq!(
        p.network.unix_sockets,
        paths(&["/run/a.sock", "/run/b.sock"])
    );
    assert_eq!(p.filesystem.read_only, paths(&["/usr", "~", "/etc/ssl"]));
    let mut again = p.clone();
    again.normalise();
    assert_eq!(again, p);
    assert_round_trips(&p);
}

#[test]
fn to_toml_prints_the_file_format() {
    let p = parse(DESIGN_EXAMPLE);
    let want = r#"name = "my-project"
user = "opencode-my-project"
directory = "/srv/my-project"

[network]
allow = [
    "10.0.0.0/8",
    "192.168.0.0/16",
    "127.0.0.1/32:8787",
    "2001:db8::/32",
    "api.anthropic.com:443",
]
dns = "system"
log = { rate = "10/second" }
unix_sockets = ["/run/postgresql/.s.PGSQL.5432"]
listen = []

[filesystem]
read_only = [
    "/nix/store",
    "/usr",
    "/etc/ssl",
]
read_write = [
    "/srv/my-project",
    "~/.local/share/opencode",
]
exec = [
    "/usr/bin",
    "/usr/lib",
]

[landlock]
minimum_abi = 1

[resources]
pids_max = 4096
memory_max = "max"
"#;
    assert_eq!(p.to_toml(), want);
}

#[test]
fn strings_needing_escapes_round_trip() {
    let p = parse(
        "user = \"dynamic\"\ndirectory = \"/srv/it's \\\"quoted\\\"\\\\x\"\n[network]\ndns = \"none\"\n",
    );
    assert_eq!(p.directory, Some(PathBuf::from("/srv/it's \"quoted\"\\x")));
    assert_eq!(p.network.dns, DnsSetting::None);
    assert_round_trips(&p);
}

#[test]
fn serialises_in_file_spelling() {
    let p = parse(DESIGN_EXAMPLE);
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["user"], "opencode-my-project");
    assert_eq!(json["network"]["allow_v4"][2]["net"], "127.0.0.1/32");
    assert_eq!(json["network"]["allow_v4"][2]["ports"], "8787");
    assert_eq!(json["network"]["allow_v4"][2]["protocol"], "any");
    assert_eq!(json["network"]["dns"], "system");
    assert_eq!(json["network"]["log"]["rate"], "10/second");
    assert_eq!(
        json["filesystem"]["read_write"][1],
        "~/.local/share/opencode"
    );
}

#[test]
fn home_expansion() {
    let home = Path::new("/var/lib/isolate/home/web");
    assert_eq!(
        expand_home(Path::new("~/.cache"), home),
        home.join(".cache")
    );
    assert_eq!(expand_home(Path::new("~"), home), home);
    assert_eq!(expand_home(Path::new("/usr"), home), Path::new("/usr"));
}

#[test]
fn environment_and_its_file_parse_and_print_back() {
    let policy = parse(
        "user = \"svc\"\nenvironment = { OPENCODE_LOG = \"debug\", _X = \"a \\\"b\\\"\" }\nenvironment_file = \"/etc/isolate/secrets/my-project.env\"\n",
    );
    assert_eq!(policy.environment["OPENCODE_LOG"], "debug");
    assert_eq!(policy.environment["_X"], "a \"b\"");
    assert_eq!(
        policy.environment_file.as_deref(),
        Some(Path::new("/etc/isolate/secrets/my-project.env"))
    );
    assert_round_trips(&policy);
    // Without them, the printed policy is what it was before they existed.
    let plain = parse("user = \"svc\"\n");
    assert!(
        !plain.to_toml().contains("environment"),
        "{}",
        plain.to_toml()
    );
}

#[test]
fn listen_entries_are_local_addresses_and_the_unspecified_one_means_every_address() {
    let p = parse(
        r#"user = "a"
[network]
listen = ["127.0.0.1:8787/tcp", "0.0.0.0:9000-9001", "[::1]:8787/tcp", "[::]:53/udp", "127.0.0.1:8787/tcp"]
"#,
    );
    let v4: Vec<String> = p
        .network
        .listen_v4
        .iter()
        .map(ToString::to_string)
        .collect();
    let v6: Vec<String> = p
        .network
        .listen_v6
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(v4, ["0.0.0.0/0:9000-9001", "127.0.0.1/32:8787/tcp"]);
    assert_eq!(v6, ["[::1/128]:8787/tcp", "[::/0]:53/udp"]);
    assert!(
        p.network.allow_v4.is_empty(),
        "listen entries allow nothing outbound"
    );
    assert_round_trips(&p);
}

#[test]
fn without_listen_nothing_is_served() {
    let p = parse("user = \"a\"\n[network]\nallow = [\"10.0.0.0/8\"]\n");
    assert!(p.network.listen_v4.is_empty() && p.network.listen_v6.is_empty());
    assert!(p.to_toml().contains("\nlisten = []\n"), "{}", p.to_toml());
}

#[test]
fn resources_have_a_finite_pids_default_and_take_sizes() {
    let p = parse("user = \"a\"\n");
    assert_eq!(p.resources.pids_max, Some(4096), "finite by default");
    assert_eq!(p.resources.memory_max, None);
    let p = parse("user = \"a\"\n[resources]\npids_max = 64\nmemory_max = \"2G\"\n");
    assert_eq!(p.resources.pids_max, Some(64));
    assert_eq!(p.resources.memory_max, Some(2 << 30));
    assert_round_trips(&p);
    let p = parse("user = \"a\"\n[resources]\npids_max = \"max\"\nmemory_max = 67108864\n");
    assert_eq!(p.resources.pids_max, None);
    assert_eq!(p.resources.memory_max, Some(64 << 20));
    assert_round_trips(&p);
}

#[test]
fn additions_are_printed_in_their_lists_with_notes_and_read_back() {
    let source = Path::new("/etc/isolate/instances/learn.toml");
    let policy = parse_str(
        "user = \"dynamic\"\n[network]\nallow = [\"10.0.0.0/8\"]\n[filesystem]\nread_only = [\"/etc\"]\n",
        source,
    )
    .unwrap();
    let add = |field, entry: &str| Addition {
        field,
        entry: entry.into(),
        note: format!("learned: {entry}"),
    };
    let additions = [
        add(ListField::Allow, "api.example.com:443/tcp"),
        add(ListField::Allow, "192.0.2.7:53/udp"),
        add(ListField::Listen, "127.0.0.1:4096/tcp"),
        add(ListField::ReadWrite, "/srv/data"),
        add(ListField::Exec, "/usr/bin"),
    ];
    let text = policy.to_toml_with_additions(&additions);
    for wanted in [
        "    \"10.0.0.0/8\",\n",
        "    \"api.example.com:443/tcp\",  # learned: api.example.com:443/tcp\n",
        "    \"127.0.0.1:4096/tcp\",  # learned: 127.0.0.1:4096/tcp\n",
        "    \"/srv/data\",  # learned: /srv/data\n",
    ] {
        assert!(text.contains(wanted), "{wanted:?} in\n{text}");
    }
    let again = parse_str(&text, source).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let allow: Vec<String> = again
        .network
        .allow_v4
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(allow, ["10.0.0.0/8", "192.0.2.7/32:53/udp"]);
    assert_eq!(
        again.network.hosts[0].to_string(),
        "api.example.com:443/tcp"
    );
    assert_eq!(
        again.network.listen_v4[0].to_string(),
        "127.0.0.1/32:4096/tcp"
    );
    assert_eq!(again.filesystem.read_write, [Path::new("/srv/data")]);
    assert_eq!(again.filesystem.exec, [Path::new("/usr/bin")]);
    assert_eq!(again.filesystem.read_only, [Path::new("/etc")]);
    // Without additions, the text is the policy as `isolate check` prints it.
    assert_eq!(
        policy.to_toml_with_additions(&[]),
        policy.to_toml_with_origins()
    );
}
