//! Presets: shipped fragments merged into a policy, their origins shown, and the errors of a
//! wrong list.

mod common;

use std::path::Path;

use isolate_policy::{PRESETS, PresetKind, parse_str, preset};

const SOURCE: &str = "/etc/isolate/instances/web.toml";

fn with_presets(presets: &str) -> String {
    format!(
        "user = \"dynamic\"\npresets = [{presets}]\n[network]\nallow = [\"10.0.0.0/8\"]\n\
         [filesystem]\nread_write = [\"/srv/web\"]\n"
    )
}

#[test]
fn presets_add_to_the_policys_own_lists() {
    let policy = parse_str(
        &with_presets("\"opencode\", \"anthropic\""),
        Path::new(SOURCE),
    )
    .unwrap();
    assert_eq!(policy.presets, ["opencode", "anthropic"]);
    let net = &policy.network;
    let allow: Vec<String> = net.allow_v4.iter().map(ToString::to_string).collect();
    assert_eq!(allow, ["10.0.0.0/8", "127.0.0.1/32:4096/tcp"]);
    let hosts: Vec<String> = net.hosts.iter().map(ToString::to_string).collect();
    assert_eq!(hosts, ["api.anthropic.com:443/tcp"]);
    assert_eq!(net.listen_v4[0].to_string(), "127.0.0.1/32:4096/tcp");
    let fs = &policy.filesystem;
    assert_eq!(fs.read_write, [Path::new("/srv/web"), Path::new("~")]);
    assert!(fs.exec.iter().any(|p| p == Path::new("/usr/bin")));

    // Printed and read again, the policy is the same (merging again adds nothing).
    let printed = policy.to_toml();
    assert!(
        printed.contains("presets = [\"opencode\", \"anthropic\"]\n"),
        "{printed}"
    );
    let again = parse_str(&printed, Path::new(SOURCE)).unwrap();
    assert_eq!(again, policy, "{printed}");

    // For people: each entry a preset added says so; the file's own entries do not.
    let annotated = policy.to_toml_with_origins();
    for wanted in [
        "\"api.anthropic.com:443/tcp\",  # preset anthropic\n",
        "\"127.0.0.1/32:4096/tcp\",  # preset opencode\n",
        "\"~\",  # preset opencode\n",
        "\"10.0.0.0/8\",\n",
        "\"/srv/web\",\n",
    ] {
        assert!(annotated.contains(wanted), "{wanted:?} in\n{annotated}");
    }
}

#[test]
fn an_unknown_preset_names_the_known_ones() {
    let errors = parse_str(
        &with_presets("\"opencode\", \"opencod\""),
        Path::new(SOURCE),
    )
    .unwrap_err();
    assert_eq!(errors.len(), 1, "{errors}");
    let text = errors.0[0].to_string();
    common::assert_error(
        &errors.0[0],
        Path::new(SOURCE),
        2,
        24,
        "presets[1]",
        "no preset is called `opencod`",
    );
    for preset in &PRESETS {
        assert!(text.contains(preset.name), "{text}");
    }
}

#[test]
fn a_preset_listed_twice_or_a_second_agent_is_an_error() {
    let errors = parse_str(&with_presets("\"npm\", \"npm\""), Path::new(SOURCE)).unwrap_err();
    common::assert_error(
        &errors.0[0],
        Path::new(SOURCE),
        2,
        19,
        "presets[1]",
        "listed twice",
    );
    let errors =
        parse_str(&with_presets("\"opencode\", \"codex\""), Path::new(SOURCE)).unwrap_err();
    common::assert_error(
        &errors.0[0],
        Path::new(SOURCE),
        2,
        24,
        "presets[1]",
        "`opencode` and `codex` are both agents",
    );
}

/// The opencode preset grants what examples/opencode.toml grants, the policy under which the
/// opencode tests run `opencode serve`: what was verified there holds for the preset.
#[test]
fn the_opencode_preset_grants_the_files_of_the_tested_example() {
    let example = parse_str(
        include_str!("../../examples/opencode.toml"),
        Path::new("/etc/isolate/instances/opencode.toml"),
    )
    .unwrap();
    let grants = preset("opencode").unwrap().grants().unwrap();
    assert_eq!(grants.filesystem, example.filesystem);
    assert_eq!(preset("opencode").unwrap().kind, PresetKind::Agent);
}
