//! Adversarial inputs of about 1 MiB (the fuzzer's `-max_len`): each must come back, as a
//! policy or as errors, quickly, without overflowing the stack, and within a memory bound.
//!
//! One test, its cases in turn, so that the allocation counter below measures one parse at a
//! time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use isolate_policy::parse_str;

const MIB: usize = 1 << 20;

/// Generous: a debug build on a loaded 2-core machine parses each in about a second; the
/// quadratic error positions this guards against took minutes.
const TIME_BOUND: Duration = Duration::from_secs(20);

/// Peak heap while parsing, over the input's size. The worst case, an error for every 5
/// bytes, needs about 100 (each error owns its path, field, message and help).
const MEMORY_FACTOR: usize = 256;

/// Counts the bytes live on the heap and their peak since [`reset_peak`].
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers to the system allocator; the counters do not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
        PEAK.fetch_max(live, Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn reset_peak() -> usize {
    let live = LIVE.load(Relaxed);
    PEAK.store(live, Relaxed);
    live
}

/// `head` followed by `unit` repeated until the text is about 1 MiB, then `tail`.
fn fill(head: &str, unit: &str, tail: &str) -> String {
    let mut text = String::with_capacity(MIB + tail.len());
    text.push_str(head);
    while text.len() + unit.len() + tail.len() <= MIB {
        text.push_str(unit);
    }
    text.push_str(tail);
    text
}

/// Parses `text`, which must return (ok or not) within the bounds; returns the error count.
fn check(what: &str, text: &str) -> usize {
    let before = reset_peak();
    let start = Instant::now();
    let errors = match parse_str(text, Path::new("/etc/isolate/instances/big.toml")) {
        Ok(_) => 0,
        Err(errors) => {
            assert!(!errors.is_empty(), "{what}: an empty error list");
            errors.len()
        }
    };
    let took = start.elapsed();
    let peak = PEAK.load(Relaxed).saturating_sub(before);
    eprintln!(
        "{what}: {} bytes, {errors} errors, {took:?}, {} MiB peak",
        text.len(),
        peak / MIB
    );
    assert!(took < TIME_BOUND, "{what}: took {took:?}");
    assert!(
        peak < MEMORY_FACTOR * text.len().max(MIB),
        "{what}: {} MiB at the peak",
        peak / MIB
    );
    errors
}

#[test]
fn one_mib_inputs() {
    deeply_nested_arrays();
    deeply_nested_tables();
    huge_strings();
    huge_lists();
    many_presets();
    many_keys();
}

fn deeply_nested_arrays() {
    let open = fill("user = \"dynamic\"\nx = ", "[", "");
    check("nested arrays, unclosed", &open);
    let depth = MIB / 2 - 16;
    let closed = format!(
        "user = \"dynamic\"\nx = {}{}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    check("nested arrays", &closed);
    let allow = format!(
        "user = \"dynamic\"\n[network]\nallow = {}{}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    check("nested allow", &allow);
}

fn deeply_nested_tables() {
    let depth = MIB / 5;
    let inline = format!(
        "user = \"dynamic\"\nx = {}1{}",
        "{a=".repeat(depth),
        "}".repeat(depth)
    );
    check("nested inline tables", &inline);
    let dotted = fill("user = \"dynamic\"\n", "a.", "a = 1\n");
    check("dotted keys", &dotted);
    let header = fill("user = \"dynamic\"\n[", "a.", "a]\n");
    check("dotted table header", &header);
}

fn huge_strings() {
    check("huge user", &fill("user = \"", "a", "\"\n"));
    check(
        "huge name",
        &fill("user = \"dynamic\"\nname = \"", "a", "\"\n"),
    );
    check(
        "huge allow entry",
        &fill("user = \"dynamic\"\n[network]\nallow = [\"", "a", "\"]\n"),
    );
    check(
        "huge host",
        &fill(
            "user = \"dynamic\"\n[network]\nallow = [\"",
            "a.",
            "com\"]\n",
        ),
    );
    check(
        "huge path",
        &fill("user = \"dynamic\"\ndirectory = \"/", "a/", "\"\n"),
    );
    check("huge comment", &fill("user = \"dynamic\"\n#", "é", "\n"));
}

fn huge_lists() {
    let head = "user = \"dynamic\"\n[network]\nallow = [";
    assert_eq!(
        check("same allow entry", &fill(head, "\"10.0.0.0/8\",", "]")),
        0
    );
    let mut distinct = String::from(head);
    for i in 0u32.. {
        if distinct.len() > MIB - 32 {
            break;
        }
        let [_, b, c, d] = i.to_be_bytes();
        let _ = write!(distinct, "\"10.{b}.{c}.{d}:{}\",", 1 + i % 60_000);
    }
    distinct.push(']');
    check("distinct allow entries", &distinct);
    let mut hosts = String::from(head);
    for i in 0u32.. {
        if hosts.len() > MIB - 32 {
            break;
        }
        let _ = write!(hosts, "\"h{i}.example.com\",");
    }
    hosts.push(']');
    check("distinct hosts", &hosts);
    // One error each, all on one line: where each is must not cost a scan of the line.
    assert!(check("bad allow entries", &fill(head, "\"x_\",", "]")) > 1000);
    assert!(check("bad non-ASCII entries", &fill(head, "\"é\",", "]")) > 1000);
    check(
        "bad allow entries, a line each",
        &fill(head, "\n\"10.0.0.1/8\",", "]"),
    );
    check(
        "bad paths",
        &fill("user = \"dynamic\"\n[filesystem]\nexec = [", "\"a\",", "]"),
    );
}

fn many_presets() {
    check(
        "the same preset",
        &fill("user = \"dynamic\"\npresets = [", "\"github\",", "]"),
    );
    check(
        "unknown presets",
        &fill("user = \"dynamic\"\npresets = [", "\"x\",", "]"),
    );
    check(
        "agents",
        &fill(
            "user = \"dynamic\"\npresets = [",
            "\"codex\",\"opencode\",",
            "]",
        ),
    );
}

fn many_keys() {
    check(
        "many tables",
        &fill("user = \"dynamic\"\n", "[network]\n", ""),
    );
    let mut keys = String::from("user = \"dynamic\"\n[environment]\n");
    for i in 0u32.. {
        if keys.len() > MIB - 32 {
            break;
        }
        let _ = writeln!(keys, "V{i} = \"x\"");
    }
    check("many variables", &keys);
}
