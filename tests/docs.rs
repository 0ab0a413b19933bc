//! The user docs against the code: `docs/configuration.md`'s settings table is generated from
//! the gateway's own settings list (`config::SETTINGS`), and fails here when the two differ.
//! `VRA_UPDATE_DOCS=1 cargo test --test docs` rewrites it.

use std::path::{Path, PathBuf};

use vra_gateway::config::SETTINGS;

const BEGIN: &str = "<!-- settings:begin -->";
const END: &str = "<!-- settings:end -->";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A Markdown table cell: pipes escaped, so a help text cannot break the table.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The settings table, in the order the code lists them.
fn settings_table() -> String {
    let mut table = String::from("| Setting | Default | Meaning |\n|---|---|---|\n");
    for s in SETTINGS {
        let default = if s.default.is_empty() {
            "–".to_string()
        } else {
            format!("`{}`", s.default)
        };
        let secret = if s.secret {
            " Secret: never printed."
        } else {
            ""
        };
        table.push_str(&format!(
            "| `{}` | {} | {}{} |\n",
            s.var,
            default,
            cell(s.help),
            secret
        ));
    }
    table
}

#[test]
fn the_configuration_docs_list_every_setting_as_the_code_does() {
    let path = root().join("docs/configuration.md");
    let doc = std::fs::read_to_string(&path).expect("docs/configuration.md");
    let (head, rest) = doc.split_once(BEGIN).expect("the begin marker");
    let (_, tail) = rest.split_once(END).expect("the end marker");
    let expected = format!("{head}{BEGIN}\n{}{END}{tail}", settings_table());
    if std::env::var_os("VRA_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &expected).expect("write docs/configuration.md");
        return;
    }
    assert!(
        doc == expected,
        "docs/configuration.md's settings table differs from config::SETTINGS; run \
         `VRA_UPDATE_DOCS=1 cargo test --test docs` and commit the result"
    );
}

/// The user-facing docs speak to users: no words from the project's own tracker.
#[test]
fn the_user_docs_carry_no_tracker_words() {
    let mut files = vec![
        root().join("README.md"),
        root().join("bench/README.md"),
        root().join("clients/README.md"),
        root().join("clients/python/README.md"),
        root().join("clients/node/README.md"),
    ];
    for entry in std::fs::read_dir(root().join("docs")).expect("docs/") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let words: Vec<&str> = line
                .split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|w| !w.is_empty())
                .collect();
            let tracker = words.windows(2).any(|w| {
                w[0].eq_ignore_ascii_case("issue") && w[1].bytes().all(|b| b.is_ascii_digit())
            }) || words.iter().any(|w| {
                w.len() >= 2 && w.starts_with('G') && w[1..].bytes().all(|b| b.is_ascii_digit())
            });
            assert!(!tracker, "{}:{}: a tracker word: {line}", rel(file), n + 1);
        }
    }
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}
