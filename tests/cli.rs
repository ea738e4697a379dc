//! The command line as users meet it: the configuration reference
//! (`docs/configuration.md`) stays in step with `--help`, and every option is also an environment variable.

mod common;

use common::*;

const COMMANDS: [&str; 9] = [
    "run", "backup", "list", "prune", "decrypt", "restore", "export", "verify", "fleet",
];

/// (flag, env var) for every option of `command`, read from its `--help`.
fn options(command: &str) -> Vec<(String, Option<String>)> {
    let help = String::from_utf8(ok(vcbackup().args([command, "--help"])).stdout).unwrap();
    let mut options = Vec::new();
    let mut current: Option<(String, String)> = None;
    let mut flush = |entry: Option<(String, String)>| {
        if let Some((flag, text)) = entry {
            let env = text
                .split("[env: ")
                .nth(1)
                .and_then(|rest| rest.split('=').next())
                .map(str::to_string);
            options.push((flag, env));
        }
    };
    for line in help.lines() {
        let trimmed = line.trim_start();
        let flag = trimmed.strip_prefix("--").or_else(|| {
            trimmed
                .get(4..)
                .filter(|_| trimmed.starts_with('-') && trimmed[2..].starts_with(", --"))
                .map(|s| &s[2..])
        });
        match flag {
            Some(rest) if line.starts_with("  ") => {
                flush(current.take());
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                current = Some((format!("--{name}"), line.to_string()));
            }
            _ => {
                if let Some((_, text)) = current.as_mut() {
                    text.push(' ');
                    text.push_str(trimmed);
                }
            }
        }
    }
    flush(current);
    options.retain(|(flag, _)| flag != "--help" && flag != "--version");
    options
}

#[test]
fn every_option_has_an_environment_variable_and_a_row_in_the_configuration_reference() {
    let reference = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let mut seen = 0;
    for command in COMMANDS {
        let options = options(command);
        assert!(
            options.len() >= 3,
            "{command}: parsed too few options: {options:?}"
        );
        for (flag, env) in options {
            let env = env.unwrap_or_else(|| {
                panic!("{command} {flag} has no VCBACKUP_ environment variable")
            });
            assert!(env.starts_with("VCBACKUP_"), "{command} {flag}: {env}");
            let row = reference
                .lines()
                .find(|l| l.starts_with(&format!("| `{flag}` | `{env}` |")))
                .unwrap_or_else(|| panic!("docs/configuration.md has no row for {flag} / {env}"));
            assert!(
                row.contains(command) || row.contains("| all |"),
                "{row} does not list `{command}`"
            );
            seen += 1;
        }
    }
    assert!(seen > 40, "only {seen} options checked");
}

#[test]
fn help_names_each_subcommand_and_bad_usage_exits_2() {
    let help = String::from_utf8(ok(vcbackup().arg("--help")).stdout).unwrap();
    for command in COMMANDS {
        assert!(
            help.contains(&format!("  {command} ")),
            "{command} missing from:\n{help}"
        );
    }
    let out = run(vcbackup().args(["backup", "--no-such-flag"]));
    assert_eq!(out.status.code(), Some(2));
}
