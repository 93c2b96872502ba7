//! `isolate exec` end to end, as a user runs it: the child runs as the instance user with no
//! privileges, inside its cgroup, confined by the network layers and Landlock; exit codes and
//! signals propagate; nothing is left behind, after success or failure.
//!
//! Each test runs in its own network namespace (the nftables layer then edits only that
//! namespace's ruleset) with instances named uniquely for this process.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use common::probe::accept_one;
use common::records::{journal_entries, record_messages};
use common::sandbox::unique_name;
use common::users::TestUser;

fn main() -> ExitCode {
    common::run_tests(&[
        ("exit_codes_propagate", exit_codes),
        ("signals_are_forwarded_and_reported", signals),
        (
            "the_child_has_no_privileges_and_cannot_regain_them",
            privileges,
        ),
        (
            "network_policy_confines_the_child_and_its_descendants",
            network,
        ),
        ("landlock_confines_files", files),
        ("the_child_gets_a_private_tmpdir", private_tmpdir),
        ("a_second_run_of_a_running_instance_is_refused", second_run),
        ("nothing_is_left_behind", nothing_left),
        ("dry_run_changes_nothing", dry_run),
        (
            "a_layer_that_fails_leaves_nothing_applied_and_no_child",
            fails_closed,
        ),
        ("a_named_user_is_used", named_user),
        (
            "the_child_has_neither_the_callers_terminal_nor_its_descriptors",
            caller_session_and_descriptors,
        ),
        ("bpffs_mounted_by_isolate_is_for_root_alone", bpffs_mode),
        (
            "the_policy_environment_and_a_root_only_secrets_file_reach_the_child",
            environment,
        ),
        (
            "sockets_of_families_the_layers_do_not_judge_are_refused",
            socket_families,
        ),
        (
            "systemd_socket_activation_passes_on_to_the_command",
            socket_activation,
        ),
        (
            "a_dynamic_instance_keeps_its_uid_outside_systemds_range",
            dynamic_uid_is_kept,
        ),
        (
            "a_link_the_instance_could_have_planted_redirects_no_rule",
            planted_link,
        ),
        (
            "the_instance_cgroup_gets_the_policys_limits_or_says_why_not",
            resource_limits,
        ),
        (
            "a_shared_users_sockets_outside_the_instance_are_not_its_own",
            shared_user_sockets,
        ),
        (
            "host_names_follow_the_instances_own_dns_answers",
            dns_following,
        ),
        (
            "the_nftables_layer_alone_follows_host_names_too",
            dns_following_nftables,
        ),
        (
            "a_flood_of_refusals_is_accounted_for_exactly",
            flood_accounting,
        ),
        (
            "the_fix_a_refusal_names_allows_it_once_applied",
            fix_in_refusal,
        ),
        (
            "learn_mode_writes_a_policy_under_which_the_run_is_refused_nothing",
            learn_mode,
        ),
    ])
}

/// A fresh directory with `mode` (its files get the default 0644).
fn dir_with_mode(mode: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(mode),
    )
    .unwrap();
    dir
}

/// Learn mode: under a policy that allows none of it, a command looks a name up and connects
/// to it, serves on a port, reads one directory and writes another. All of it goes through,
/// and the policy written names each (the host by name with its port, the port served, the
/// two directories) with a note; the same command under that policy is refused nothing.
fn learn_mode() {
    use common::dns_upstream::{
        LOOKUP_SCRIPT, Upstream, assert_lines, make_answers_local, test_zone,
    };
    make_answers_local();
    let listener = TcpListener::bind("[::]:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let serve = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let upstream = Upstream::start("127.0.0.2:53".parse().unwrap(), test_zone(20)).unwrap();
    let instance = Instance::new("", "");
    let policy = std::fs::read_to_string(&instance.policy)
        .unwrap()
        .replace("dns = \"none\"", "dns = [\"127.0.0.2\"]");
    std::fs::write(&instance.policy, policy).unwrap();
    let (read, written) = (dir_with_mode(0o755), dir_with_mode(0o777));
    let input = read.path().join("input");
    std::fs::write(&input, "x").unwrap();
    let output = written.path().join("output");
    let learned = instance.dir.path().join("learned.toml");
    let serve_script = format!(
        "import socket; s = socket.socket(); s.bind(('127.0.0.1', {serve})); s.listen(); print('served', flush=True)"
    );
    let workload = |policy: &Path, learn: Option<&Path>| {
        let _ = std::fs::remove_file(&output);
        let mut cmd = Command::new(common::isolate_binary());
        cmd.arg("exec").arg("--policy").arg(policy);
        if let Some(file) = learn {
            cmd.arg("--learn").arg(file);
        }
        cmd.args(["--", "/bin/sh", "-c"])
            .arg(
                "cat \"$1\" && echo && echo x > \"$2\" && /usr/bin/python3 -c \"$3\" \"$4\" \"look exact api.example.test\" && /usr/bin/python3 -c \"$5\"",
            )
            .arg("sh")
            .arg(&input)
            .arg(&output)
            .arg(LOOKUP_SCRIPT)
            .arg(port.to_string())
            .arg(&serve_script)
            .stdin(Stdio::null())
            .output()
            .expect("run isolate exec")
    };
    let wanted = ["x", "exact 1 192.0.2.10 ok fast", "served"];

    // Without learning, the policy refuses: the name is not listed.
    let out = workload(&instance.policy, None);
    assert!(!out.status.success(), "{}\n{}", stdout(&out), stderr(&out));

    let out = workload(&instance.policy, Some(&learned));
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{text}\n{err}");
    assert_lines(&text, &wanted, &err);
    assert!(err.contains("LEARN MODE"), "{err}");
    assert!(record_messages(&instance.name, &err, 0).is_empty(), "{err}");
    let proposed = std::fs::read_to_string(&learned).unwrap();
    let policy = isolate_policy::load_file(&learned).unwrap_or_else(|e| panic!("{e}\n{proposed}"));
    assert_eq!(
        (
            policy
                .network
                .hosts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            policy
                .network
                .listen_v4
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
        ),
        (
            vec![format!("api.example.test:{port}/tcp")],
            vec![format!("127.0.0.1/32:{serve}/tcp")]
        ),
        "{proposed}"
    );
    let fs = &policy.filesystem;
    assert!(
        fs.read_only.contains(&read.path().to_path_buf())
            && fs.read_write.contains(&written.path().to_path_buf()),
        "{proposed}"
    );
    for note in [
        format!("\"api.example.test:{port}/tcp\",  # learned "),
        "python3 connect api.example.test".to_owned(),
        format!("cat read {}", input.display()),
        format!("wrote {}", output.display()),
    ] {
        assert!(proposed.contains(&note), "{note:?} in\n{proposed}");
    }

    // Under the learned policy, enforced, the same command is refused nothing.
    let out = workload(&learned, None);
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{text}\n{err}");
    assert_lines(&text, &wanted, &err);
    assert!(!err.contains("LEARN MODE"), "{err}");
    assert!(record_messages(&instance.name, &err, 0).is_empty(), "{err}");
    drop((listener, upstream));
    assert_clean(&instance.name);
}

/// A refusal's record names the policy entry that would allow it, in the instance's own file:
/// typed in as it stands, it lets the same connect through on the next run.
fn fix_in_refusal() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let instance = Instance::new("", "");
    let connect = format!("echo > /dev/tcp/127.0.0.1/{port} && echo connected");
    let out = instance.run(&["/bin/bash", "-c", &connect]);
    assert!(!out.status.success(), "refused first: {}", stdout(&out));
    let records = record_messages(&instance.name, &stderr(&out), 1);
    let fix = format!(
        "fix: add \"127.0.0.1:{port}/tcp\" to network.allow in {}",
        instance.policy.display()
    );
    let record = records
        .iter()
        .find(|r| r.contains(&format!("127.0.0.1:{port} ")))
        .unwrap_or_else(|| panic!("no record of the refusal: {records:#?}"));
    assert!(record.ends_with(&fix), "{record}\nshould end with: {fix}");

    // Typed in as the fix says.
    let entry = record
        .rsplit_once("fix: add ")
        .and_then(|(_, rest)| rest.split_once(" to network.allow in "))
        .map(|(entry, _)| entry.to_owned())
        .unwrap();
    let policy = std::fs::read_to_string(&instance.policy).unwrap().replace(
        "dns = \"none\"\n",
        &format!("dns = \"none\"\nallow = [{entry}]\n"),
    );
    std::fs::write(&instance.policy, policy).unwrap();
    let out = instance.run(&["/bin/bash", "-c", &connect]);
    assert!(
        out.status.success() && stdout(&out).contains("connected"),
        "allowed once fixed: {}",
        stderr(&out)
    );
    assert!(accept_one(&listener).is_some());
}

/// Under `isolate exec` alone: a burst of refused connects far beyond the kernel's event
/// budget and the audit log rate leaves records and suppressed counts that together equal the
/// refusals, exactly.
fn flood_accounting() {
    let instance = Instance::new("", "");
    let attempts = 10_000;
    // `:` with a redirection: bash opens the connection without a fork, and goes on when it
    // is refused.
    let script = format!(
        "n=0; for ((i = 0; i < {attempts}; i++)); do : 2>/dev/null <>/dev/tcp/127.0.0.1/9 || n=$((n + 1)); done; echo $n"
    );
    let out = instance.run(&["/bin/bash", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        attempts.to_string(),
        "every connect refused"
    );
    let err = stderr(&out);
    let (records, suppressed) =
        common::records::trail_once_settled(&instance.name, attempts, || err.clone());
    assert!(
        records > 0 && suppressed > 0,
        "{records} records, {suppressed} suppressed"
    );
    assert_eq!(
        records + suppressed,
        attempts,
        "records ({records}) + suppressed ({suppressed}) = refused connects:\n{err}"
    );
}

/// The instance's lookups go to isolate's resolver whatever resolver it asks: a listed name
/// (exact, wildcard, behind a CNAME chain, 30 addresses retried over TCP, IPv6) resolves
/// through the test's upstream and connects at once; a changed answer is followed on the next
/// lookup; an unlisted name is refused without reaching the upstream and recorded by name; an
/// address nobody answered, or an admitted one on another port, is refused.
fn dns_following() {
    use common::dns_upstream::{
        LOOKUP_SCRIPT, Upstream, assert_lines, make_answers_local, test_zone,
    };
    make_answers_local();
    let listener = TcpListener::bind("[::]:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let other_port = TcpListener::bind("[::]:0").unwrap();
    let other = other_port.local_addr().unwrap().port();
    let upstream = Upstream::start("127.0.0.2:53".parse().unwrap(), test_zone(20)).unwrap();
    let hosts = [
        "api.example.test",
        "*.wild.test",
        "alias.example.test",
        "many.example.test",
        "api6.example.test",
        "changing.example.test",
    ];
    let allow: Vec<String> = hosts
        .iter()
        .map(|h| format!("\"{h}:{port}/tcp\""))
        .collect();
    let instance = Instance::new(&format!("allow = [{}]", allow.join(", ")), "");
    let policy = std::fs::read_to_string(&instance.policy)
        .unwrap()
        // Records of glibc's UDP connects (below) must not crowd out the ones looked for.
        .replace(
            "dns = \"none\"",
            "dns = [\"127.0.0.2\"]\nlog = { rate = \"1000/second\" }",
        );
    std::fs::write(&instance.policy, policy).unwrap();
    let (out, changed) = std::thread::scope(|scope| {
        let changer = scope.spawn(|| {
            // Once the instance has the first answer, the name moves.
            let started = Instant::now();
            while !upstream
                .asked()
                .iter()
                .any(|(n, _, _)| n == "changing.example.test")
            {
                if started.elapsed() > Duration::from_mins(2) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            upstream.set_zone(test_zone(21));
            true
        });
        let out = instance.run(&[
            "/usr/bin/python3",
            "-c",
            LOOKUP_SCRIPT,
            &port.to_string(),
            "look refused evil.test",
            "look exact api.example.test",
            "connect unanswered 192.0.2.99",
            &format!("connect other-port 192.0.2.10 {other}"),
            "look wildcard x.wild.test",
            "look cname alias.example.test",
            "look6 v6 api6.example.test",
            // Late: glibc sorts several addresses by connecting a UDP socket to each, and the
            // policy's TCP-only rule refuses (and records) those connects.
            "look many many.example.test",
            "look before changing.example.test",
            "sleep 3",
            "look after changing.example.test",
        ]);
        (out, changer.join().unwrap())
    });
    let text = stdout(&out);
    let err = stderr(&out);
    assert!(out.status.success(), "{text}\n{err}");
    assert!(
        changed,
        "the instance never asked for changing.example.test:\n{text}\n{err}"
    );
    let eperm = format!("errno {}", libc::EPERM);
    let wanted = [
        "exact 1 192.0.2.10 ok fast".to_owned(),
        "wildcard 1 192.0.2.11 ok fast".to_owned(),
        "cname 1 192.0.2.13 ok fast".to_owned(),
        "many 30 192.0.2.100,192.0.2.101 ok fast".to_owned(),
        "v6 1 2001:db8::10 ok fast".to_owned(),
        "refused 0   fast".to_owned(),
        format!("unanswered {eperm}"),
        format!("other-port {eperm}"),
        "before 1 192.0.2.20 ok fast".to_owned(),
        "after 1 192.0.2.21 ok fast".to_owned(),
    ];
    assert_lines(&text, &wanted, &err);
    upstream.assert_never_asked("evil.test");
    let asked = upstream.asked();
    assert!(
        asked
            .iter()
            .any(|(name, _, transport)| name == "many.example.test" && *transport == "tcp"),
        "the truncated answer was retried over TCP: {asked:?}"
    );
    assert_dns_records(&instance.name, &err, port, other);
}

/// With `--layers nftables` (no eBPF layer), the table's NAT chain sends the instance's DNS
/// queries to isolate's resolver, and its host sets take the answers' addresses.
fn dns_following_nftables() {
    use common::dns_upstream::{
        LOOKUP_SCRIPT, Upstream, assert_lines, make_answers_local, make_system_resolvers_local,
        test_zone,
    };
    make_answers_local();
    // Translation happens once a packet is routed: the instance's resolver must be routable.
    make_system_resolvers_local();
    let listener = TcpListener::bind("[::]:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = Upstream::start("127.0.0.2:53".parse().unwrap(), test_zone(20)).unwrap();
    let instance = Instance::new(
        &format!("allow = [\"api.example.test:{port}/tcp\", \"*.wild.test:{port}/tcp\"]"),
        "",
    );
    let policy = std::fs::read_to_string(&instance.policy)
        .unwrap()
        .replace("dns = \"none\"", "dns = [\"127.0.0.2\"]");
    std::fs::write(&instance.policy, policy).unwrap();
    let out = instance
        .command(&["--layers", "nftables", "--"])
        .args(["/usr/bin/python3", "-c", LOOKUP_SCRIPT, &port.to_string()])
        .args([
            "look refused evil.test",
            "look exact api.example.test",
            "look wildcard x.wild.test",
            "look6 v6 api6.example.test",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{text}\n{err}");
    let wanted = [
        "refused 0   fast",
        "exact 1 192.0.2.10 ok fast",
        "wildcard 1 192.0.2.11 ok fast",
        // Listed nowhere in this policy.
        "v6 0   fast",
    ];
    assert_lines(&text, &wanted, &err);
    upstream.assert_never_asked("evil.test");
    let records = record_messages(&instance.name, &err, 1);
    let refused = format!("isolate-{}-blocked udp dns evil.test A", instance.name);
    assert!(
        records.iter().any(|r| r.starts_with(&refused)),
        "{records:#?}"
    );
}

/// The records of `dns_following`: the refused name, by name; the unanswered address; the
/// admitted address on another port, with the name that admitted it.
fn assert_dns_records(instance: &str, err: &str, port: u16, other: u16) {
    let records = record_messages(instance, err, 3);
    let prefix = format!("isolate-{instance}-blocked");
    for wanted in [
        format!("{prefix} udp dns evil.test A"),
        format!("{prefix} tcp 192.0.2.99:{port} "),
        format!("{prefix} tcp 192.0.2.10:{other} (api.example.test) "),
    ] {
        assert!(
            records.iter().any(|r| r.starts_with(&wanted)),
            "no record {wanted:?} in {records:#?}\n{err}"
        );
    }
}

/// The unix-socket programs let an instance reach its own sockets; a socket the same (named)
/// user made outside the instance is not its own, and is refused unless listed. Where the
/// kernel refuses the BPF LSM programs (this host), nothing judges unix sockets at all.
fn shared_user_sockets() {
    use std::os::unix::fs::PermissionsExt as _;
    let user = TestUser::new();
    let instance = Instance::new("", "");
    let policy = std::fs::read_to_string(&instance.policy)
        .unwrap()
        .replace("user = \"dynamic\"", &format!("user = \"{}\"", user.name));
    std::fs::write(&instance.policy, policy).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.path().join("outside.sock");
    let serve = "import socket, sys, time\ns = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen()\ntime.sleep(30)\n";
    let mut server = std::os::unix::process::CommandExt::uid(
        Command::new("/usr/bin/python3")
            .args(["-c", serve])
            .arg(&path),
        user.uid,
    )
    .spawn()
    .unwrap();
    let started = Instant::now();
    while !path.exists() && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let connect = "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(sys.argv[1])\n    print('connected')\nexcept OSError as e:\n    print('errno', e.errno)\n";
    let out = instance.run(&["/usr/bin/python3", "-c", connect, &path.to_string_lossy()]);
    let _ = server.kill();
    let _ = server.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    if stderr(&out).contains("unix-socket allowlists and socket-family refusals are not enforced") {
        eprintln!("skipped: this kernel runs no BPF LSM programs");
        return;
    }
    assert_eq!(
        stdout(&out).trim(),
        format!("errno {}", libc::EPERM),
        "the same user's socket outside the instance was reached: {}",
        stderr(&out)
    );
}

/// `[resources]` becomes the instance cgroup's `pids.max` and `memory.max` where the kernel
/// offers the controllers (the VM suite's guests do); elsewhere every run says it is not applied.
fn resource_limits() {
    let instance = Instance::new("", "");
    let mut policy = std::fs::read_to_string(&instance.policy).unwrap();
    policy.push_str("\n[resources]\npids_max = 32\nmemory_max = \"256M\"\n");
    std::fs::write(&instance.policy, policy).unwrap();
    let out = instance.run(&["/bin/true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut sleeper = instance.start_sleeper();
    let cgroup = cgroup_of(&instance.name);
    let offered = std::fs::read_to_string(cgroup.parent().unwrap().join("cgroup.controllers"))
        .unwrap_or_default();
    let read = |file: &str| std::fs::read_to_string(cgroup.join(file)).map(|v| v.trim().to_owned());
    let (pids, memory) = (read("pids.max"), read("memory.max"));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(sleeper.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = sleeper.wait();
    for (controller, field, value, want) in [
        ("pids", "pids_max", pids, "32"),
        ("memory", "memory_max", memory, "268435456"),
    ] {
        if offered.split_whitespace().any(|c| c == controller) {
            assert_eq!(value.ok().as_deref(), Some(want), "{controller}");
        } else {
            assert!(
                stderr(&out).contains(&format!("resources.{field} is NOT applied")),
                "{}",
                stderr(&out)
            );
        }
    }
}

/// Root opens the policy's paths for Landlock before the instance runs: a link in the
/// instance's own home (where it could have put one on an earlier run) must not turn
/// `read_write = ["~/data"]` into write access to wherever the link points.
fn planted_link() {
    let instance = Instance::new("", "read_write = [\"~/data\"]");
    let first = instance.run(&["/bin/true"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let home = Path::new("/var/lib/isolate").join(&instance.name);
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), home.join("data")).unwrap();
    let out = instance.run(&["/bin/true"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "goes through the link {}",
            home.join("data").display()
        )) && stderr(&out).contains("writable by the instance"),
        "{}",
        stderr(&out)
    );
    assert_clean(&instance.name);

    // The same for an allowed unix socket: root locates it for the eBPF layer.
    let socket = home.join("data").join("agent.sock");
    let policy = std::fs::read_to_string(&instance.policy)
        .unwrap()
        .replace("read_write = [\"~/data\"]", "")
        .replace(
            "dns = \"none\"",
            &format!("dns = \"none\"\nunix_sockets = [\"{}\"]", socket.display()),
        );
    std::fs::write(&instance.policy, policy).unwrap();
    let out = instance.run(&["/bin/true"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("network.unix_sockets")
            && stderr(&out).contains(&format!(
                "goes through the link {}",
                home.join("data").display()
            )),
        "{}",
        stderr(&out)
    );
    assert_clean(&instance.name);
}

/// A dynamic instance's home is kept across runs, so its UID must be too (or the home changes
/// hands each run), whatever other instances hold meanwhile; and it never comes from the
/// range systemd hands its own dynamic users.
fn dynamic_uid_is_kept() {
    let uid_of = |instance: &Instance| -> u32 {
        let out = instance.run(&["/usr/bin/id", "-u"]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().parse().unwrap()
    };
    let (a, b) = (Instance::new("", ""), Instance::new("", ""));
    let first = uid_of(&a);
    assert!(
        isolate_enforcer::user::DYNAMIC_UIDS.contains(&first),
        "{first}"
    );
    assert!(
        !(61_184..=65_519).contains(&first),
        "{first} is in systemd's DynamicUser= range"
    );
    // Another instance never gets the UID that owns this one's kept home.
    assert_ne!(
        uid_of(&b),
        first,
        "a second instance got the first one's UID"
    );
    // Another instance runs meanwhile and holds a UID of its own.
    let mut sleeper = b.start_sleeper();
    let again = uid_of(&a);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(sleeper.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = sleeper.wait();
    assert_eq!(first, again, "the second run got another UID");
    let lease = Path::new("/run/isolate/dynamic-uids").join(first.to_string());
    assert!(!lease.exists(), "the lease is released when the run ends");
}

/// An instance with its own directory (world-readable, so the instance user can enter it) and
/// policy file.
struct Instance {
    name: String,
    dir: tempfile::TempDir,
    policy: PathBuf,
}

impl Instance {
    /// `extra` is appended to the policy (its `[network]` and `[filesystem]` tables).
    fn new(network: &str, filesystem: &str) -> Self {
        let name = unique_name("x")
            .trim_start_matches("isolate-test-")
            .replace('_', "-");
        let dir = tempfile::Builder::new()
            .prefix("isolate-exec-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let policy = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &policy,
            format!(
                "name = \"{name}\"\nuser = \"dynamic\"\ndirectory = \"{}\"\n\n[network]\ndns = \"none\"\n{network}\n\n[filesystem]\nread_only = [\"/usr\", \"/etc\"]\nexec = [\"/usr/bin\", \"/bin\"]\n{filesystem}\n",
                dir.path().display()
            ),
        )
        .unwrap();
        Self { name, dir, policy }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(common::isolate_binary());
        cmd.arg("exec").arg("--policy").arg(&self.policy).args(args);
        cmd
    }

    /// Starts `sleep 30` as the instance and returns once it runs inside its cgroup.
    fn start_sleeper(&self) -> std::process::Child {
        let mut child = self
            .command(&["--", "/bin/sleep", "30"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let procs = cgroup_of(&self.name).join("cgroup.procs");
        common::wait_until_started("the run", &mut child, || {
            std::fs::read_to_string(&procs).is_ok_and(|p| !p.trim().is_empty())
        });
        child
    }

    fn run(&self, argv: &[&str]) -> Output {
        let mut cmd = self.command(&["--"]);
        cmd.args(argv)
            .stdin(Stdio::null())
            .output()
            .expect("run isolate exec")
    }
}

impl Drop for Instance {
    /// A dynamic user's home (and the run's TMPDIR below it) outlive a run by design; a test's
    /// instance leaves nothing.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(Path::new("/var/lib/isolate").join(&self.name));
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn exit_codes() {
    let instance = Instance::new("", "");
    assert_eq!(
        instance.run(&["/bin/sh", "-c", "exit 7"]).status.code(),
        Some(7)
    );
    assert_eq!(instance.run(&["/bin/true"]).status.code(), Some(0));
    let killed = instance.run(&["/bin/sh", "-c", "kill -KILL $$"]);
    assert_eq!(
        killed.status.code(),
        Some(128 + 9),
        "128 + SIGKILL: {}",
        stderr(&killed)
    );
    let missing = instance.run(&["/usr/bin/does-not-exist"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("cannot start `/usr/bin/does-not-exist`"),
        "{}",
        stderr(&missing)
    );
}

fn signals() {
    let instance = Instance::new("", "");
    // Once the child runs in its cgroup, ask the supervisor to stop.
    let mut child = instance.start_sleeper();
    let asked = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().cast_signed()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(128 + 15),
        "the child died of the forwarded SIGTERM"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "stopped in {:?}",
        asked.elapsed()
    );
}

fn privileges() {
    let instance = Instance::new("", "");
    // A setuid-root copy of `id` in an exec path: without no_new_privs it would report euid 0.
    let bin = instance.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let suid_id = bin.join("id");
    std::fs::copy("/usr/bin/id", &suid_id).unwrap();
    std::fs::set_permissions(
        &suid_id,
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    let policy = std::fs::read_to_string(&instance.policy).unwrap().replace(
        "exec = [\"/usr/bin\", \"/bin\"]",
        &format!("exec = [\"/usr/bin\", \"/bin\", \"{}\"]", bin.display()),
    );
    std::fs::write(&instance.policy, policy).unwrap();

    let out = instance.run(&[
        "/bin/sh",
        "-c",
        &format!(
            "grep -E '^(Cap|NoNewPrivs|Groups)' /proc/self/status; {} -u",
            suid_id.display()
        ),
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            text.contains(&format!("{set}:\t0000000000000000")),
            "{set} not empty:\n{text}"
        );
    }
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    let groups = text
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .expect("a Groups line");
    assert_eq!(groups.trim(), "", "supplementary groups reset:\n{text}");
    let euid: u32 = text.lines().last().unwrap().trim().parse().unwrap();
    assert!(
        isolate_enforcer::user::DYNAMIC_UIDS.contains(&euid),
        "the setuid binary ran as {euid}, not root"
    );
}

fn network() {
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let blocked = TcpListener::bind("127.0.0.1:0").unwrap();
    let (allowed_port, blocked_port) = (
        allowed.local_addr().unwrap().port(),
        blocked.local_addr().unwrap().port(),
    );
    let instance = Instance::new(
        &format!("allow = [\"127.0.0.1/32:{allowed_port}/tcp\"]"),
        "",
    );
    // The child itself, a background grandchild, and a daemonized (setsid, double-forked)
    // descendant that outlives its parents each try the forbidden destination.
    let dir = instance.dir.path();
    std::fs::write(
        dir.join("try.sh"),
        "if (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null; then echo \"$2 $1 ok\"; else echo \"$2 $1 refused\"; fi\n",
    )
    .unwrap();
    let out = dir.join("daemon.out");
    std::fs::write(&out, "").unwrap();
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let script = format!(
        "cd {dir}; bash try.sh {allowed_port} child; bash try.sh {blocked_port} child
         (bash try.sh {blocked_port} grandchild) & wait
         setsid bash -c '(sleep 0.2; bash try.sh {blocked_port} daemon > {out}) &'
         sleep 1; cat {out}",
        dir = dir.display(),
        out = out.display()
    );
    let policy = std::fs::read_to_string(&instance.policy).unwrap().replace(
        "read_only = [\"/usr\", \"/etc\"]",
        &format!(
            "read_only = [\"/usr\", \"/etc\"]\nread_write = [\"{}\"]",
            instance.dir.path().display()
        ),
    );
    std::fs::write(&instance.policy, policy).unwrap();
    let started = Instant::now();
    let out = instance.run(&["/bin/bash", "-c", &script]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        text.contains(&format!("child {allowed_port} ok")),
        "{text}\n{}",
        stderr(&out)
    );
    for who in ["child", "grandchild", "daemon"] {
        assert!(
            text.contains(&format!("{who} {blocked_port} refused")),
            "{who}:\n{text}"
        );
    }
    // Immediate: a connect the nftables layer dropped instead would hang for a minute of SYN
    // retries, three times over; the bound leaves room for a slow emulated guest.
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "refusals are immediate, not timeouts: {:?}",
        started.elapsed()
    );
    assert!(accept_one(&allowed).is_some());
    assert!(
        accept_one(&blocked).is_none(),
        "the blocked listener received a connection"
    );
    // Each refusal is an audit record: in journald where it runs (the VM suite), else on stderr.
    let records = audit_records(&instance.name, &stderr(&out), 3);
    let wanted = format!(
        "isolate-{}-blocked tcp 127.0.0.1:{blocked_port}",
        instance.name
    );
    let matching = records.iter().filter(|r| r.starts_with(&wanted)).count();
    assert!(
        matching >= 3,
        "three refusals, three records:\n{records:#?}"
    );
}

/// The audit records of `instance` (see [`record_messages`]), each journald record checked
/// for the structured fields of a refused TCP connect to 127.0.0.1.
fn audit_records(instance: &str, stderr: &str, at_least: usize) -> Vec<String> {
    if let Some(entries) = journal_entries(instance, at_least) {
        for entry in &entries {
            for field in [
                "ISOLATE_LAYER",
                "ISOLATE_DEST",
                "ISOLATE_PORT",
                "ISOLATE_PROTO",
                "ISOLATE_PID",
                "ISOLATE_COMM",
                "ISOLATE_UID",
            ] {
                assert!(
                    entry.get(field).is_some(),
                    "journal record without {field}: {entry}"
                );
            }
            assert_eq!(entry["ISOLATE_DEST"], "127.0.0.1", "{entry}");
            assert_eq!(entry["ISOLATE_PROTO"], "tcp", "{entry}");
            assert_eq!(entry["ISOLATE_LAYER"], "ebpf-connect", "{entry}");
        }
    }
    record_messages(instance, stderr, at_least)
}

fn private_tmpdir() {
    let instance = Instance::new("", "");
    let out = instance
        .command(&["--", "/bin/sh", "-c", "echo \"$TMPDIR\"; echo x > \"$TMPDIR/f\" && echo written; echo \"xdg=${XDG_CONFIG_HOME:-unset}\""])
        .env("XDG_CONFIG_HOME", "/root/.config")
        .output()
        .unwrap();
    let text = stdout(&out);
    let expected = format!("/var/lib/isolate/{}/tmp", instance.name);
    assert!(
        text.starts_with(&expected),
        "TMPDIR is private: {text}\n{}",
        stderr(&out)
    );
    assert!(text.contains("written"), "and writable: {text}");
    assert!(
        text.contains("xdg=unset"),
        "the caller's XDG directories are not passed: {text}"
    );
    // The dynamic user's home, which outlives the run, is the instance's alone.
    let home = Path::new("/var/lib/isolate").join(&instance.name);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&home).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "{} has mode {mode:o}", home.display());
}

fn second_run() {
    let instance = Instance::new("", "");
    let mut first = instance.start_sleeper();
    let tmpdir = PathBuf::from(format!("/var/lib/isolate/{}/tmp", instance.name));
    std::fs::write(tmpdir.join("mine"), "first run").unwrap();
    let home = tmpdir.parent().unwrap();
    let owner =
        |path: &Path| std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(path).unwrap());
    let first_uid = owner(home);

    let second = instance.run(&["/bin/true"]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("is already running"),
        "{}",
        stderr(&second)
    );
    assert!(
        tmpdir.join("mine").exists(),
        "the first run's TMPDIR was left alone"
    );
    // The second run would have had another dynamic UID: the live home stays the first's.
    assert_eq!(
        owner(home),
        first_uid,
        "the running instance's home was handed over"
    );
    assert_eq!(owner(&tmpdir.join("mine")), 0, "nothing in it was changed");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id().cast_signed()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(first.wait().unwrap().code(), Some(128 + 15));
    assert_clean(&instance.name);
}

fn files() {
    let instance = Instance::new("", "");
    let private = tempfile::tempdir().unwrap();
    std::fs::write(private.path().join("secret"), "x").unwrap();
    std::fs::set_permissions(
        private.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(
        private.path().join("secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let secret = private.path().join("secret");
    // Readable by mode bits, but outside the policy: Landlock says no.
    let out = instance.run(&["/bin/cat", &secret.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    // Allowed read, refused write in a read-only path.
    let out = instance.run(&["/bin/sh", "-c", "cat /etc/hostname >/dev/null && echo read-ok; touch /etc/isolate-test-write || echo write-refused"]);
    assert!(
        stdout(&out).contains("read-ok") && stdout(&out).contains("write-refused"),
        "{}",
        stdout(&out)
    );
    assert!(!Path::new("/etc/isolate-test-write").exists());
}

fn nothing_left() {
    let instance = Instance::new("allow = [\"127.0.0.1/32:80/tcp\"]", "");
    let out = instance.run(&["/bin/true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_clean(&instance.name);
    assert!(
        !Path::new(&format!("/var/lib/isolate/{}/tmp", instance.name)).exists(),
        "the run's private TMPDIR is removed"
    );
}

/// Run from root's shell, the child must not be able to type into that shell (TIOCSTI needs
/// the terminal to be the caller's controlling one) nor use what root had open: a socket to a
/// forbidden destination would bypass both network layers.
fn caller_session_and_descriptors() {
    use std::os::fd::AsRawFd as _;
    let instance = Instance::new("", "");
    let file = std::fs::File::open("/etc/hostname").unwrap();
    // dup() gives a descriptor without close-on-exec, like one a shell leaves open.
    let leaked = nix::unistd::dup(&file).unwrap();
    let fd = leaked.as_raw_fd();
    let script = format!(
        "read -r stat < /proc/$$/stat; echo \"$$ $stat\"; \
         if [ -e /proc/$$/fd/{fd} ]; then echo fd-open; else echo fd-closed; fi"
    );
    let out = instance.run(&["/bin/sh", "-c", &script]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    // `PID PID (comm) STATE PPID PGRP SESSION TTY_NR …`
    let fields: Vec<&str> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert!(fields.len() > 7, "{text}");
    assert_eq!(
        fields[6], fields[0],
        "the child leads a session of its own: {text}"
    );
    assert_eq!(fields[7], "0", "and has no controlling terminal: {text}");
    assert!(
        text.contains("fd-closed"),
        "the caller's descriptor {fd} reached the child: {text}"
    );

    let keep = fd.to_string();
    let mut cmd = instance.command(&["--keep-fd", &keep, "--", "/bin/sh", "-c", &script]);
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("fd-open"),
        "--keep-fd {fd} passes it on: {}",
        stdout(&out)
    );

    let out = instance
        .command(&["--keep-fd", "999", "--", "/bin/true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--keep-fd 999: no such open descriptor"),
        "{}",
        stderr(&out)
    );
    drop(leaked);
}

/// Where bpffs is not mounted, isolate mounts it; anyone able to write there could plant
/// the directories isolate pins into, or delete pins and detach programs. Tried in a mount
/// namespace of this test's own, where bpffs is unmounted (the host's stays as it is).
fn bpffs_mode() {
    use nix::mount::{MntFlags, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .unwrap();
    while nix::mount::umount2("/sys/fs/bpf", MntFlags::MNT_DETACH).is_ok() {}
    let instance = Instance::new("", "");
    let out = instance.run(&["/bin/true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata("/sys/fs/bpf").unwrap().permissions(),
    );
    // The kernel adds the sticky bit to every bpffs root; what counts is that only root
    // may enter and write.
    assert_eq!(
        mode & 0o777,
        0o700,
        "isolate mounted bpffs with mode {mode:o}"
    );
}

/// Provider keys come from a file only root can read; the instance gets the values, never
/// the file. A file others could read is refused before anything runs.
fn environment() {
    use std::os::unix::fs::PermissionsExt as _;
    let instance = Instance::new("", "");
    let secrets = instance.dir.path().join("secrets.env");
    std::fs::write(&secrets, "# keys\nAPI_KEY=sk-test\n").unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).unwrap();
    let policy = std::fs::read_to_string(&instance.policy).unwrap().replace(
        "user = \"dynamic\"\n",
        &format!(
            "user = \"dynamic\"\nenvironment = {{ GREETING = \"hello\" }}\nenvironment_file = \"{}\"\n",
            secrets.display()
        ),
    );
    std::fs::write(&instance.policy, policy).unwrap();
    let marker = instance.dir.path().join("ran");
    let script = format!("touch {}; echo \"$GREETING $API_KEY\"", marker.display());
    let out = instance.run(&["/bin/sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("group or others may read or write it (mode 644)")
            && stderr(&out).contains(&format!("chmod 600 {}", secrets.display())),
        "{}",
        stderr(&out)
    );
    assert!(
        !marker.exists(),
        "the child ran although the secrets were exposed"
    );
    assert_clean(&instance.name);

    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = instance.run(&[
        "/bin/sh",
        "-c",
        "echo \"$GREETING $API_KEY\"; cat secrets.env || true",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("hello sk-test\n"), "{text}");
    assert!(
        !text.contains("# keys"),
        "the instance read the file itself: {text}"
    );
}

/// `AF_VSOCK` reaches the services of a VM's host and is judged by neither network layer (as
/// Bluetooth, TIPC, RDS…): the child cannot create such sockets; IP and unix sockets work.
fn socket_families() {
    let instance = Instance::new("", "");
    let script = "import socket\n\
        try:\n    socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)\n    print('vsock created')\n\
        except OSError as e:\n    print('vsock errno', e.errno)\n\
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n\
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
        socket.socketpair(socket.AF_UNIX)\n\
        print('ip and unix work')\n";
    let out = instance.run(&["/usr/bin/python3", "-c", script]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(
        text.contains(&format!("vsock errno {}", libc::EPERM)),
        "AF_VSOCK was not refused with EPERM: {text}"
    );
    assert!(text.contains("ip and unix work"), "{text}");
}

/// A socket-activated unit runs `isolate exec`: the descriptors systemd passed (3 on) reach
/// the command, and `LISTEN_PID` names the command, as `sd_listen_fds` checks.
fn socket_activation() {
    let instance = Instance::new("", "");
    let inner = "echo \"pid=$$ listen_pid=$LISTEN_PID fds=$LISTEN_FDS\"; \
                 [ -e /proc/$$/fd/3 ] && echo fd3-open";
    // The shell becomes `isolate` (exec), so its $$ is isolate's PID, as systemd would set it.
    let outer = format!(
        "exec 3</etc/hostname; LISTEN_PID=$$ LISTEN_FDS=1 exec {} exec --policy {} -- /bin/sh -c '{inner}'",
        common::isolate_binary().display(),
        instance.policy.display()
    );
    let out = Command::new("/bin/sh")
        .args(["-c", &outer])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    let fields: std::collections::BTreeMap<&str, &str> = text
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect();
    assert_eq!(fields.get("pid"), fields.get("listen_pid"), "{text}");
    assert_eq!(fields.get("fds"), Some(&"1"), "{text}");
    assert!(text.contains("fd3-open"), "{text}");

    // Activation aimed at another process is not passed on.
    let out = instance
        .command(&["--", "/bin/sh", "-c", "echo \"[${LISTEN_FDS:-none}]\""])
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(stdout(&out).contains("[none]"), "{}", stdout(&out));
}

fn dry_run() {
    let instance = Instance::new("allow = [\"10.0.0.0/9\", \"10.128.0.0/9\"]", "");
    let out = instance
        .command(&["--dry-run", "--", "/bin/true"])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        text.contains("10.0.0.0/8"),
        "the plan shows the normalised rules:\n{text}"
    );
    assert!(text.contains("(dynamic)"), "{text}");
    // The Landlock section lists the run's private TMPDIR among the paths it may write.
    let tmpdir = format!("/var/lib/isolate/{}/tmp", instance.name);
    let landlock = text.split_once("\nlandlock\n").map_or("", |(_, rest)| rest);
    assert!(landlock.contains(&tmpdir), "{text}");
    assert_clean(&instance.name);
    assert!(
        !Path::new(&format!("/var/lib/isolate/{}", instance.name)).exists(),
        "no home was made"
    );
}

fn fails_closed() {
    let instance = Instance::new("", "");
    let marker = instance.dir.path().join("ran");
    // No `nft` on PATH: the nftables layer cannot be applied after the cgroup and the eBPF
    // layer were. The child must not run and both must be gone again.
    let out = instance
        .command(&[
            "--",
            "/bin/sh",
            "-c",
            &format!("echo > {}", marker.display()),
        ])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("nft"),
        "the error names the layer: {}",
        stderr(&out)
    );
    assert!(!marker.exists(), "the child ran although a layer failed");
    assert_clean(&instance.name);
}

fn named_user() {
    let user = TestUser::new();
    let name = &user.name;
    let instance = Instance::new("", "");
    let policy = std::fs::read_to_string(&instance.policy)
        .unwrap()
        .replace("user = \"dynamic\"", &format!("user = \"{name}\""));
    std::fs::write(&instance.policy, policy).unwrap();
    let out = instance.run(&["/usr/bin/id", "-un"]);
    assert_eq!(stdout(&out).trim(), name.as_str(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("outside the instance"),
        "{}",
        stderr(&out)
    );

    // The same user runs something else meanwhile: every start says so, naming it.
    let mut outside =
        std::os::unix::process::CommandExt::uid(Command::new("/bin/sleep").arg("30"), user.uid)
            .spawn()
            .unwrap();
    let out = instance.run(&["/bin/true"]);
    let _ = outside.kill();
    let _ = outside.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "runs 1 process(es) outside the instance: {} (sleep)",
            outside.id()
        )),
        "{}",
        stderr(&out)
    );

    // A named user without a home is refused before anything is applied.
    let homeless = TestUser::without_home();
    let instance = Instance::new("", "");
    let policy = std::fs::read_to_string(&instance.policy).unwrap().replace(
        "user = \"dynamic\"",
        &format!("user = \"{}\"", homeless.name),
    );
    std::fs::write(&instance.policy, policy).unwrap();
    let out = instance.run(&["/bin/true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("the home of `{}`", homeless.name))
            && stderr(&out).contains("does not exist"),
        "{}",
        stderr(&out)
    );
    assert_clean(&instance.name);

    let missing = Instance::new("", "");
    let policy = std::fs::read_to_string(&missing.policy)
        .unwrap()
        .replace("user = \"dynamic\"", "user = \"no-such-user-here\"");
    std::fs::write(&missing.policy, policy).unwrap();
    let out = missing.run(&["/bin/true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no user named `no-such-user-here`"),
        "{}",
        stderr(&out)
    );
}

fn cgroup_of(instance: &str) -> PathBuf {
    isolate_enforcer::cgroup::cgroup2_mount()
        .unwrap()
        .join("isolate")
        .join(instance)
}

/// No cgroup, pins, nftables table or dynamic-UID lease of `instance` remains.
fn assert_clean(instance: &str) {
    assert!(!cgroup_of(instance).exists(), "cgroup left behind");
    assert!(
        !Path::new(&format!("/sys/fs/bpf/isolate/exec/{instance}")).exists(),
        "pins left behind"
    );
    assert!(
        !isolate_enforcer::nft::is_applied(instance).unwrap_or(false),
        "nftables table left behind"
    );
    let leases = std::fs::read_dir("/run/isolate/dynamic-uids").map_or(0, Iterator::count);
    assert_eq!(leases, 0, "dynamic UID lease left behind");
}
