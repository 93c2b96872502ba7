//! What enforcement costs a TCP connect: no enforcement vs the eBPF layer vs the nftables layer
//! vs both, at 10 / 1,000 / 10,000 allowed CIDRs, measured in one run (`cargo xtask bench`),
//! with the per-UID rule shape of hand-written nftables modules as the peer: one
//! `meta skuid UID ip daddr CIDR … accept` rule per CIDR, then a drop.
//!
//! Everything happens in a private network namespace (the nftables tables live there, never in
//! the host's ruleset) and in two child cgroups of this run: the eBPF layer is attached to one of
//! them only, so "none" and "nftables" clients (in the other) pass no eBPF program at all. The
//! client is this binary re-executed as a test UID; it connects N times to a listener on
//! 127.0.0.1 whose destination the policy allows (the other CIDRs are random, so lookups
//! traverse a large structure), timing each connect alone, and reports the median (robust to
//! preemption on a busy machine) and the mean. Configurations are interleaved (a rotated order
//! in every repetition) and compared by medians, each against the "none" of the same
//! repetition. The eBPF programs' own cost comes from the kernel's run-time statistics,
//! enabled only for a separate pass (they add a clock read per program run).
//!
//! A benchmark, not a test: it reports what it measured and fails only when a setup step fails.
//! Options: `--quick` (fewer connects and repetitions), `--connects N`, `--reps N`.

#![allow(clippy::print_stdout, reason = "the report goes to stdout")]
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    reason = "statistics on small, non-negative counts"
)]

// The integration tests' helpers: running a command as a UID in a cgroup, and `lo` up in a
// fresh network namespace.
#[path = "common/report.rs"]
mod report;
#[path = "../tests/common/sandbox.rs"]
#[allow(dead_code, reason = "the bench uses a part")]
mod sandbox;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ipnet::Ipv4Net;
use isolate_ebpf_common::program_names;
use isolate_enforcer::bpf::{BpfLayer, PinDir, compile_rules};
use isolate_enforcer::cgroup::{Cgroup, cgroup2_mount};
use isolate_enforcer::nft::{self, NftPolicy};
use isolate_enforcer::paths::BPFFS;
use isolate_policy::{LogSettings, NetRule, PortRange, Protocol, Rate, RateUnit, normalise_v4};

/// The confined client's UID (no account needed): not one the integration tests use, and
/// outside the range `isolate exec` hands out dynamically.
const UID: u32 = 65524;
/// The nftables table is `inet isolate-bench`, in this run's network namespace.
const INSTANCE: &str = "bench";
/// The peer's table (the per-CIDR rule shape), in the same namespace.
const PEER_TABLE: &str = "peer-rules";
const SIZES: [usize; 3] = [10, 1_000, 10_000];
/// Connects each client makes before it starts timing.
const WARMUP: u32 = 50;
/// A client that has not finished by then is killed (a policy that drops the allowed
/// destination would otherwise hang on SYN retransmits).
const CLIENT_TIMEOUT_SECS: u32 = 120;

const LOG: LogSettings = LogSettings {
    rate: Rate {
        count: 10,
        per: RateUnit::Second,
    },
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Config {
    None,
    Ebpf,
    Nftables,
    Both,
    /// One rule per CIDR, evaluated in order for every packet of the UID.
    PeerRules,
}

impl Config {
    const ALL: [Config; 5] = [
        Config::None,
        Config::Ebpf,
        Config::Nftables,
        Config::Both,
        Config::PeerRules,
    ];

    fn ebpf(self) -> bool {
        matches!(self, Config::Ebpf | Config::Both)
    }

    fn nft(self) -> bool {
        matches!(self, Config::Nftables | Config::Both)
    }

    fn name(self) -> &'static str {
        match self {
            Config::None => "none",
            Config::Ebpf => "eBPF",
            Config::Nftables => "nftables",
            Config::Both => "both",
            Config::PeerRules => "peer: rule per CIDR",
        }
    }
}

struct Options {
    connects: u32,
    reps: usize,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("client") {
        return client(&args[1..]);
    }
    let options = match parse_options(&args) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "bench: needs root (it loads eBPF programs and makes cgroups); run `cargo xtask bench`"
        );
        return ExitCode::FAILURE;
    }
    // Namespaces belong to the thread: this one gets a network of its own, and every process
    // it starts (clients, nft) lives there too.
    let outcome = std::thread::spawn(move || measure(&options))
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the measuring thread panicked")));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_options(args: &[String]) -> anyhow::Result<Options> {
    let mut options = Options {
        connects: 3_000,
        reps: 21,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // `cargo bench` passes --bench to harness-less benches.
            "--bench" => {}
            "--quick" => {
                options.connects = 500;
                options.reps = 5;
            }
            "--connects" => {
                options.connects = args.next().context("--connects N")?.parse()?;
            }
            "--reps" => options.reps = args.next().context("--reps N")?.parse()?,
            other => bail!("unknown argument {other} (options: --quick, --connects N, --reps N)"),
        }
    }
    if options.connects == 0 || options.reps == 0 {
        bail!("--connects and --reps must be at least 1");
    }
    Ok(options)
}

// ---- the measuring side ----

/// What one run measured.
#[derive(Default)]
struct Samples {
    /// The client's median µs per connect, by (size, config), one per repetition, in
    /// repetition order.
    connect: BTreeMap<(usize, Config), Vec<f64>>,
    /// The client's mean µs per connect, likewise (preemptions included).
    connect_mean: BTreeMap<(usize, Config), Vec<f64>>,
    /// ms to put a size's policy in force, by (layer, size).
    load: BTreeMap<(&'static str, usize), Vec<f64>>,
    /// ms to load, verify and attach the eBPF programs.
    attach_ms: f64,
    /// By size: the programs' own cost, from the kernel's run-time statistics.
    bpf: BTreeMap<usize, BpfCost>,
}

fn measure(options: &Options) -> anyhow::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
    sandbox::bring_up_loopback();
    let listener = TcpListener::bind("127.0.0.1:0").context("listen on 127.0.0.1")?;
    let target = listener.local_addr()?;
    std::thread::spawn(move || serve(&listener));

    let mount = cgroup2_mount().context("find the cgroup2 mount")?;
    let name = format!("isolate-bench-{}", std::process::id());
    let plain = Cgroup::create(&mount, &format!("{name}-plain")).context("child cgroup")?;
    let confined = Cgroup::create(&mount, &format!("{name}-ebpf")).context("child cgroup")?;
    let started = Instant::now();
    let mut layer = LayerGuard::attach(confined.path(), PinDir::new(Path::new(BPFFS).join(&name)))?;
    let mut samples = Samples {
        attach_ms: ms(started.elapsed()),
        ..Samples::default()
    };
    let _table = TableGuard;

    let policies: Vec<(usize, Vec<NetRule<Ipv4Net>>)> = SIZES
        .iter()
        .map(|&size| (size, policy(size, target.port())))
        .collect();
    let exe = std::env::current_exe()?;
    let client_in = |cgroup: &Cgroup| -> anyhow::Result<(f64, f64)> {
        run_client(&exe, cgroup.path(), target, options.connects)
    };

    eprintln!(
        "bench: {} repetitions × {} sizes × {} configurations × {} connects (+{WARMUP} warm-up)",
        options.reps,
        SIZES.len(),
        Config::ALL.len(),
        options.connects
    );
    for rep in 0..options.reps {
        for (size, rules) in &policies {
            let size = *size;
            let took = layer.apply(rules)?;
            record(&mut samples.load, ("eBPF", size), ms(took));
            let nft_policy = NftPolicy {
                instance: INSTANCE,
                uid: UID,
                v4: rules,
                v6: &[],
                hosts: &[],
                dns_redirect: None,
                log: &LOG,
                observe: false,
            };
            // A rotated order in every repetition: no configuration always runs first.
            for i in 0..Config::ALL.len() {
                let config = Config::ALL[(i + rep) % Config::ALL.len()];
                if config.nft() {
                    let started = Instant::now();
                    nft::apply(&nft_policy).context("apply the nftables table")?;
                    record(&mut samples.load, ("nftables", size), ms(started.elapsed()));
                }
                if config == Config::PeerRules {
                    let started = Instant::now();
                    peer::apply(rules)?;
                    record(&mut samples.load, ("peer", size), ms(started.elapsed()));
                }
                let cgroup = if config.ebpf() { &confined } else { &plain };
                let (median, mean) = client_in(cgroup)
                    .with_context(|| format!("{} at {size} CIDRs", config.name()))?;
                record(&mut samples.connect, (size, config), median);
                record(&mut samples.connect_mean, (size, config), mean);
                if config.nft() {
                    nft::remove(INSTANCE).context("remove the nftables table")?;
                }
                if config == Config::PeerRules {
                    peer::remove()?;
                }
            }
        }
        eprintln!("bench: repetition {}/{} done", rep + 1, options.reps);
    }

    // The programs' own cost, in a pass of its own: statistics cost a clock read per run.
    for (size, rules) in &policies {
        layer.apply(rules)?;
        let stats = StatsGuard::enable()?;
        let before = layer.program_stats()?;
        client_in(&confined)?;
        let after = layer.program_stats()?;
        drop(stats);
        samples.bpf.insert(
            *size,
            BpfCost::between(&before, &after, options.connects + WARMUP),
        );
    }

    report(&samples, options);
    layer.detach()?;
    drop(confined);
    drop(plain);
    Ok(())
}

fn record<K: Ord>(map: &mut BTreeMap<K, Vec<f64>>, key: K, value: f64) {
    map.entry(key).or_default().push(value);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Accepts every connection, waits for the client's FIN, and resets it: the client never
/// holds a port in `TIME_WAIT`, so thousands of connects a second do not exhaust ephemeral ports
/// or slow the port search. (Resetting before the FIN could beat the client's return from
/// `connect`, which then fails with ECONNRESET.)
fn serve(listener: &TcpListener) {
    for mut stream in listener.incoming().flatten() {
        let _ = stream.read(&mut [0u8; 1]);
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket and a correctly sized option value.
        unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }
}

/// `size` CIDRs: the allowed destination (127.0.0.1/32, TCP to the listener's port) and
/// random others, from a fixed seed, normalised as a policy would be (no two in one
/// (protocol, ports) group overlap). Mixed port rules, so nftables has several sets to try.
fn policy(size: usize, port: u16) -> Vec<NetRule<Ipv4Net>> {
    let allowed = NetRule {
        net: Ipv4Net::new(Ipv4Addr::LOCALHOST, 32).expect("valid prefix"),
        ports: Some(PortRange::single(port)),
        protocol: Protocol::Tcp,
    };
    let mut random = Rng(0x9e37_79b9_7f4a_7c15 ^ size as u64);
    let mut rules = vec![allowed];
    loop {
        // Merging only ever shrinks the list: top it up until nothing merges.
        rules = normalise_v4(&rules);
        if rules.len() >= size {
            return rules;
        }
        for _ in rules.len()..size {
            rules.push(random.rule());
        }
    }
}

/// xorshift64*: deterministic policies without another dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A rule for a random prefix of length 16..=32 in 1.0.0.0–223.255.255.255, outside 127/8.
    fn rule(&mut self) -> NetRule<Ipv4Net> {
        let bits = self.next();
        let len = 16 + (bits % 17) as u8;
        let first = 1 + ((bits >> 8) % 223) as u8;
        let first = if first == 127 { 128 } else { first };
        let addr = (u32::from(first) << 24) | ((bits >> 16) as u32 & 0x00ff_ffff);
        let net = Ipv4Net::new(Ipv4Addr::from(addr), len)
            .expect("valid prefix")
            .trunc();
        let (ports, protocol) = match (bits >> 48) % 8 {
            0..=3 => (None, Protocol::Any),
            4 | 5 => (Some(PortRange::single(443)), Protocol::Tcp),
            6 => (Some(PortRange::single(53)), Protocol::Udp),
            _ => (
                Some(PortRange {
                    first: 8000,
                    last: 8100,
                }),
                Protocol::Tcp,
            ),
        };
        NetRule {
            net,
            ports,
            protocol,
        }
    }
}

/// Runs the client as `UID` in `cgroup`; returns its median and mean µs per connect.
fn run_client(
    exe: &Path,
    cgroup: &Path,
    target: SocketAddr,
    connects: u32,
) -> anyhow::Result<(f64, f64)> {
    let out = sandbox::command_in(cgroup, UID, exe)
        .args(["client", &target.to_string(), &connects.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("start the client")?;
    if !out.status.success() {
        bail!("the client failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut figures = text.split_whitespace().map(str::parse::<f64>);
    match (figures.next(), figures.next()) {
        (Some(Ok(median)), Some(Ok(mean))) => Ok((median, mean)),
        _ => bail!("the client printed {text:?}"),
    }
}

// ---- cleanup guards ----

/// The eBPF layer on the confined cgroup, pinned under a directory of this run; dropping it
/// detaches the programs and removes the pins.
struct LayerGuard {
    layer: Option<BpfLayer>,
    pins: PinDir,
}

impl LayerGuard {
    fn attach(cgroup: &Path, pins: PinDir) -> anyhow::Result<Self> {
        if pins.exists() {
            bail!("{} exists already", pins.path().display());
        }
        let layer = BpfLayer::attach(cgroup, pins.clone()).context("attach the eBPF layer")?;
        Ok(Self {
            layer: Some(layer),
            pins,
        })
    }

    /// Puts `rules` in force for `UID` afresh (the previous size's policy removed first);
    /// returns how long compiling and applying took.
    fn apply(&mut self, rules: &[NetRule<Ipv4Net>]) -> anyhow::Result<Duration> {
        let layer = self.layer.as_mut().expect("attached");
        layer
            .remove_instance(UID)
            .context("remove the eBPF policy")?;
        let started = Instant::now();
        let compiled = compile_rules(rules, &[]).context("compile the eBPF rules")?;
        layer
            .apply_instance(UID, &compiled)
            .context("apply the eBPF policy")?;
        Ok(started.elapsed())
    }

    /// Cumulative run time and count of the cgroup programs this run attached, by name.
    fn program_stats(&self) -> anyhow::Result<BTreeMap<&'static str, (u64, u64)>> {
        let mut ids = BTreeMap::new();
        for name in [
            program_names::CONNECT4,
            program_names::EGRESS,
            program_names::INGRESS,
        ] {
            let link = aya::programs::links::PinnedLink::from_pin(self.pins.link(name))
                .with_context(|| format!("open the pinned link of {name}"))?;
            let info = aya::programs::links::FdLink::from(link)
                .info()
                .with_context(|| format!("link info of {name}"))?;
            ids.insert(info.program_id(), name);
        }
        let mut stats = BTreeMap::new();
        for program in aya::programs::loaded_programs() {
            let program = program.context("list loaded eBPF programs")?;
            if let Some(name) = ids.get(&program.id()) {
                let nanos = u64::try_from(program.run_time().as_nanos()).unwrap_or(u64::MAX);
                stats.insert(*name, (nanos, program.run_count()));
            }
        }
        if stats.len() != ids.len() {
            bail!("not every attached program is among the loaded ones");
        }
        Ok(stats)
    }

    fn detach(mut self) -> anyhow::Result<()> {
        if let Some(layer) = self.layer.take() {
            layer.detach().context("detach the eBPF layer")?;
        }
        Ok(())
    }
}

impl Drop for LayerGuard {
    /// Never panics (a panic while unwinding would abort and leave everything).
    fn drop(&mut self) {
        if let Some(layer) = self.layer.take()
            && let Err(e) = layer.detach()
        {
            eprintln!("bench: detach the eBPF layer: {e}");
        }
        if let Err(e) = self.pins.remove() {
            eprintln!("bench: remove {}: {e}", self.pins.path().display());
        }
    }
}

/// The nftables table of this run's namespace; dropping it removes the table (the namespace
/// goes with the process anyway).
struct TableGuard;

impl Drop for TableGuard {
    fn drop(&mut self) {
        if let Err(e) = nft::remove(INSTANCE) {
            eprintln!("bench: remove the nftables table: {e}");
        }
        if let Err(e) = peer::remove() {
            eprintln!("bench: {e:#}");
        }
    }
}

/// The peer's rule shape, as per-UID nftables modules write it: an output chain with one
/// `meta skuid UID ip daddr CIDR [protocol and ports] accept` rule per CIDR, in the policy's
/// order, then `meta skuid UID drop`. Every packet of the UID walks the rules until one matches.
mod peer {
    use std::fmt::Write as _;
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    use anyhow::{Context as _, bail};
    use ipnet::Ipv4Net;
    use isolate_policy::{NetRule, Protocol};

    use super::{PEER_TABLE, UID};

    pub fn apply(rules: &[NetRule<Ipv4Net>]) -> anyhow::Result<()> {
        let mut script = format!(
            "table inet {PEER_TABLE} {{\n chain output {{\n  type filter hook output priority 0; policy accept;\n"
        );
        for rule in rules {
            let ports = match rule.ports {
                Some(p) if p.first == p.last => format!("{}", p.first),
                Some(p) => format!("{}-{}", p.first, p.last),
                None => String::new(),
            };
            let transport = match (rule.protocol, ports.is_empty()) {
                (Protocol::Any, true) => String::new(),
                (Protocol::Any, false) => format!("meta l4proto {{ tcp, udp }} th dport {ports} "),
                (Protocol::Tcp, true) => "meta l4proto tcp ".to_owned(),
                (Protocol::Tcp, false) => format!("tcp dport {ports} "),
                (Protocol::Udp, true) => "meta l4proto udp ".to_owned(),
                (Protocol::Udp, false) => format!("udp dport {ports} "),
            };
            let _ = writeln!(
                script,
                "  meta skuid {UID} ip daddr {} {transport}accept",
                rule.net
            );
        }
        let _ = write!(script, "  meta skuid {UID} drop\n }}\n}}\n");
        nft_script(&script).context("apply the peer's per-CIDR rules")
    }

    pub fn remove() -> anyhow::Result<()> {
        // `destroy` would need nft 1.0.8; deleting an absent table is not an error here.
        let listed = Command::new("nft")
            .args(["list", "table", "inet", PEER_TABLE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("run nft")?;
        if listed.success() {
            nft_script(&format!("delete table inet {PEER_TABLE}\n"))
                .context("remove the peer's table")?;
        }
        Ok(())
    }

    fn nft_script(script: &str) -> anyhow::Result<()> {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .context("run nft")?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(script.as_bytes())
            .context("write to nft")?;
        let status = child.wait().context("wait for nft")?;
        if !status.success() {
            bail!("nft -f - failed: {status}");
        }
        Ok(())
    }
}

/// The kernel's eBPF run-time statistics, on while this lives. `BPF_ENABLE_STATS` is the
/// file-descriptor form of `kernel.bpf_stats_enabled=1`: the kernel turns statistics off
/// again when the descriptor closes — also when this process is killed — and the sysctl,
/// which others may set, is left alone.
struct StatsGuard(#[allow(dead_code, reason = "held for its Drop")] std::os::fd::OwnedFd);

impl StatsGuard {
    fn enable() -> anyhow::Result<Self> {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enable eBPF run-time statistics")?;
        Ok(Self(fd))
    }
}

/// ns per run of each program, and runs per connect.
struct BpfCost {
    /// (ns per run, runs per connect), by program name.
    programs: BTreeMap<&'static str, (f64, f64)>,
}

impl BpfCost {
    fn between(
        before: &BTreeMap<&'static str, (u64, u64)>,
        after: &BTreeMap<&'static str, (u64, u64)>,
        connects: u32,
    ) -> Self {
        let programs = after
            .iter()
            .map(|(name, (time, count))| {
                let (time0, count0) = before.get(name).copied().unwrap_or_default();
                let runs = count.saturating_sub(count0);
                let ns = time.saturating_sub(time0) as f64 / runs.max(1) as f64;
                (*name, (ns, runs as f64 / f64::from(connects)))
            })
            .collect();
        Self { programs }
    }

    /// ns of eBPF per connect, all programs together.
    fn per_connect(&self) -> f64 {
        self.programs.values().map(|(ns, runs)| ns * runs).sum()
    }
}

// ---- the report ----

fn median(values: &[f64]) -> f64 {
    quantile(values, 0.5)
}

fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (low, high) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (pos - low as f64)
}

/// Half the interquartile range, in % of the median.
fn spread(values: &[f64]) -> f64 {
    (quantile(values, 0.75) - quantile(values, 0.25)) / 2.0 / median(values) * 100.0
}

fn report(samples: &Samples, options: &Options) {
    println!();
    println!(
        "Per-connect cost: TCP connect over loopback in a private network namespace, {} \
         repetitions of {} connects per configuration, interleaved. µs/connect = median over \
         repetitions of each client's median connect; spread = half the interquartile range \
         across repetitions; ÷ none = median (and interquartile range) of each repetition's \
         ratio to the none of the same repetition; mean = median of the clients' means \
         (preemptions included); load = median time to put the policy in force.",
        options.reps, options.connects
    );
    println!();
    println!("| CIDRs | configuration | µs/connect | spread | ÷ none | mean µs | load |");
    println!("|---|---|---|---|---|---|---|");
    for size in SIZES {
        let none = &samples.connect[&(size, Config::None)];
        for config in Config::ALL {
            let values = &samples.connect[&(size, config)];
            let ratios: Vec<f64> = values.iter().zip(none).map(|(v, n)| v / n).collect();
            let ratio = if config == Config::None {
                "1".to_owned()
            } else {
                format!(
                    "{:.3} ({:.2}–{:.2})",
                    median(&ratios),
                    quantile(&ratios, 0.25),
                    quantile(&ratios, 0.75)
                )
            };
            let load = |layer| median(&samples.load[&(layer, size)]);
            let load = match config {
                Config::None => "—".to_owned(),
                Config::Ebpf => format!("{:.1} ms", load("eBPF")),
                Config::Nftables => format!("{:.1} ms", load("nftables")),
                Config::Both => format!("{:.1} ms", load("eBPF") + load("nftables")),
                Config::PeerRules => format!("{:.1} ms", load("peer")),
            };
            println!(
                "| {} | {} | {:.2} | ±{:.1}% | {ratio} | {:.2} | {load} |",
                report::thousands(size),
                config.name(),
                median(values),
                spread(values),
                median(&samples.connect_mean[&(size, config)]),
            );
        }
    }
    println!();
    println!(
        "eBPF programs' own cost (kernel run-time statistics over {} connects per size, in a \
         pass of their own). Load: eBPF = compile_rules + apply_instance into empty maps, \
         nftables = `nft -j -f` of the whole table into an empty namespace, peer = `nft -f` of \
         its chain of one rule per CIDR; loading, verifying and attaching the programs took \
         {:.0} ms once.",
        options.connects + WARMUP,
        samples.attach_ms
    );
    println!();
    println!(
        "| CIDRs | connect4 ns/run | egress ns/run (runs/connect) | ingress ns/run \
         (runs/connect) | eBPF ns/connect |"
    );
    println!("|---|---|---|---|---|");
    for (size, cost) in &samples.bpf {
        let program = |name| cost.programs.get(name).copied().unwrap_or((f64::NAN, 0.0));
        let (connect_ns, _) = program(program_names::CONNECT4);
        let (egress_ns, egress_runs) = program(program_names::EGRESS);
        let (ingress_ns, ingress_runs) = program(program_names::INGRESS);
        println!(
            "| {} | {connect_ns:.0} | {egress_ns:.0} ({egress_runs:.2}) | {ingress_ns:.0} \
             ({ingress_runs:.2}) | {:.0} |",
            report::thousands(*size),
            cost.per_connect()
        );
    }
}

// ---- the client side (this binary re-executed as `client ADDR N` as the confined UID) ----

fn client(args: &[String]) -> ExitCode {
    // Killed rather than left hanging if the allowed destination is dropped after all.
    // SAFETY: alarm has no memory-safety preconditions.
    unsafe { libc::alarm(CLIENT_TIMEOUT_SECS) };
    let (Some(target), Some(connects)) = (
        args.first().and_then(|a| a.parse::<SocketAddr>().ok()),
        args.get(1).and_then(|n| n.parse::<u32>().ok()),
    ) else {
        eprintln!("usage: connect client ADDR:PORT N");
        return ExitCode::FAILURE;
    };
    let mut timed: Vec<Duration> = Vec::with_capacity(connects as usize);
    for i in 0..WARMUP + connects {
        let started = Instant::now();
        let mut stream = match TcpStream::connect(target) {
            Ok(stream) => stream,
            Err(e) => {
                eprintln!("client: connect {target} (#{i}): {e}");
                return ExitCode::FAILURE;
            }
        };
        if i >= WARMUP {
            timed.push(started.elapsed());
        }
        // Then wait for the server's reset: one connection at a time, none left in
        // TIME_WAIT.
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let _ = stream.read(&mut [0u8; 1]);
    }
    let mean = timed.iter().sum::<Duration>() / connects;
    timed.sort_unstable();
    let median = timed[timed.len() / 2];
    println!(
        "{} {}",
        median.as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6
    );
    ExitCode::SUCCESS
}
