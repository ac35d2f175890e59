//! MicroK8s service argument files (`args/<service>`): one flag per line, `--flag=value` or
//! `--flag value`, read by the snap's wrappers with bash word splitting.
//!
//! Same semantics as MicroK8s's `UpdateServiceArguments`, minus its data-loss bugs:
//! - a value is everything after the first `=` (or the first run of blanks), so
//!   `--feature-gates=A=true,B=false` survives a rewrite;
//! - comments, blank lines and the order of lines are kept; a line whose value does not change
//!   is written back byte for byte;
//! - new flags are appended in the order they were given (MicroK8s appends in random order).
//!
//! This module is pure: [`crate::state::StateDir::update_args`] does the file I/O.

/// One line of an argument file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// A flag line; `raw` is written back unchanged unless the value is updated.
    Flag {
        key: String,
        value: String,
        raw: String,
    },
    /// Comments, blank lines and anything else we keep verbatim.
    Other(String),
}

/// A parsed argument file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArgsFile {
    lines: Vec<Line>,
}

/// Splits one trimmed line into `(key, value)` the way MicroK8s reads it, but keeping
/// everything after the first separator as the value.
pub fn parse_line(line: &str) -> (String, String) {
    let line = line.trim();
    let sep = line.find(|c: char| c == '=' || c.is_whitespace());
    match sep {
        Some(i) => {
            let key = &line[..i];
            let rest = &line[i..];
            let value = if let Some(stripped) = rest.strip_prefix('=') {
                stripped
            } else {
                rest
            };
            (key.to_string(), value.trim().to_string())
        }
        None => (line.to_string(), String::new()),
    }
}

impl ArgsFile {
    pub fn parse(text: &str) -> Self {
        let lines = text
            .lines()
            .map(|raw| {
                let trimmed = raw.trim();
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    Line::Other(raw.to_string())
                } else {
                    let (key, value) = parse_line(trimmed);
                    Line::Flag {
                        key,
                        value,
                        raw: raw.to_string(),
                    }
                }
            })
            .collect();
        ArgsFile { lines }
    }

    /// The raw value of the first occurrence of `flag` (quotes not removed).
    pub fn get(&self, flag: &str) -> Option<&str> {
        self.lines.iter().find_map(|l| match l {
            Line::Flag { key, value, .. } if key == flag => Some(value.as_str()),
            _ => None,
        })
    }

    /// The value of `flag` with one level of shell quoting removed.
    pub fn get_unquoted(&self, flag: &str) -> Option<String> {
        self.get(flag).map(unquote)
    }

    pub fn contains(&self, flag: &str) -> bool {
        self.get(flag).is_some()
    }

    /// Sets every occurrence of `flag` to `value`, or appends `flag=value`. Returns whether
    /// the content changed.
    pub fn set(&mut self, flag: &str, value: &str) -> bool {
        let mut found = false;
        let mut changed = false;
        for line in &mut self.lines {
            if let Line::Flag { key, value: v, raw } = line {
                if key == flag {
                    found = true;
                    if v != value {
                        *v = value.to_string();
                        *raw = format!("{flag}={value}");
                        changed = true;
                    }
                }
            }
        }
        if !found {
            self.lines.push(Line::Flag {
                key: flag.to_string(),
                value: value.to_string(),
                raw: format!("{flag}={value}"),
            });
            changed = true;
        }
        changed
    }

    /// Removes every occurrence of `flag`. Returns whether anything was removed.
    pub fn remove(&mut self, flag: &str) -> bool {
        let before = self.lines.len();
        self.lines
            .retain(|l| !matches!(l, Line::Flag { key, .. } if key == flag));
        before != self.lines.len()
    }

    /// MicroK8s's update: apply `updates` (later entries win), then `removes` for keys that
    /// were not updated. Returns whether the content changed.
    pub fn update(&mut self, updates: &[(String, String)], removes: &[String]) -> bool {
        let mut changed = false;
        for (key, value) in updates {
            changed |= self.set(key, value);
        }
        for key in removes {
            if updates.iter().any(|(k, _)| k == key) {
                continue;
            }
            changed |= self.remove(key);
        }
        changed
    }

    /// Flags in file order (first occurrence of duplicates included each time).
    pub fn flags(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines.iter().filter_map(|l| match l {
            Line::Flag { key, value, .. } => Some((key.as_str(), value.as_str())),
            Line::Other(_) => None,
        })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            match line {
                Line::Flag { raw, .. } => out.push_str(raw),
                Line::Other(raw) => out.push_str(raw),
            }
            out.push('\n');
        }
        out
    }
}

/// Removes one level of bash quoting from a whole value (`"a b"` → `a b`, `'x'` → `x`).
pub fn unquote(value: &str) -> String {
    let v = value.trim();
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return v[1..v.len() - 1].to_string();
        }
    }
    v.to_string()
}

/// Expands `${SNAP_DATA}` / `$SNAP_DATA` (and the same for `SNAP`, `SNAP_COMMON`) the way the
/// snap's wrappers do before the value reaches a daemon.
pub fn expand_snap_vars(value: &str, vars: &[(&str, &str)]) -> String {
    let mut out = value.to_string();
    // Longest names first so `$SNAP_DATA` is not eaten by `$SNAP`.
    let mut vars = vars.to_vec();
    vars.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    for (name, val) in vars {
        out = out.replace(&format!("${{{name}}}"), val);
        out = out.replace(&format!("${name}"), val);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upd(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_microk8s_pinned_cases() {
        let cases = [
            ("--key=value", ("--key", "value")),
            ("--key=value   ", ("--key", "value")),
            ("--key value", ("--key", "value")),
            ("--key value value", ("--key", "value value")),
            ("--key=value value", ("--key", "value value")),
            ("--key", ("--key", "")),
            ("--key    ", ("--key", "")),
            ("--key=", ("--key", "")),
            ("--key=    ", ("--key", "")),
        ];
        for (line, (k, v)) in cases {
            assert_eq!(parse_line(line), (k.to_string(), v.to_string()), "{line}");
        }
    }

    #[test]
    fn value_with_equals_survives_rewrite() {
        let text = "--feature-gates=A=true,B=false\n--v=2\n";
        let mut f = ArgsFile::parse(text);
        assert_eq!(f.get("--feature-gates"), Some("A=true,B=false"));
        assert!(f.set("--v", "4"));
        assert_eq!(f.render(), "--feature-gates=A=true,B=false\n--v=4\n");
        let reparsed = ArgsFile::parse(&f.render());
        assert_eq!(reparsed.get("--feature-gates"), Some("A=true,B=false"));
    }

    #[test]
    fn comments_blank_lines_and_order_are_kept() {
        let text = "# managed by hand\n--b=2\n\n--a 1\n# tail\n";
        let mut f = ArgsFile::parse(text);
        assert!(f.set("--a", "9"));
        assert_eq!(f.render(), "# managed by hand\n--b=2\n\n--a=9\n# tail\n");
    }

    #[test]
    fn unchanged_values_keep_their_bytes() {
        let text = "--keyfile \"${SNAP_DATA}/certs/server.key\"\n--timeout 240\n";
        let mut f = ArgsFile::parse(text);
        assert!(!f.set("--timeout", "240"));
        assert_eq!(f.render(), text);
        assert_eq!(
            f.get_unquoted("--keyfile").unwrap(),
            "${SNAP_DATA}/certs/server.key"
        );
    }

    #[test]
    fn microk8s_update_table() {
        let initial = "\n--key=value\n--other=other-value\n--with-space value2\n";
        let run = |u: &[(&str, &str)], r: &[&str]| {
            let mut f = ArgsFile::parse(initial);
            let removes: Vec<String> = r.iter().map(|s| s.to_string()).collect();
            let changed = f.update(&upd(u), &removes);
            (f.render(), changed)
        };
        // Differences from MicroK8s: the leading blank line is kept and an unchanged
        // `--with-space value2` keeps its format.
        assert_eq!(
            run(&[("--key", "value")], &["--non-existent"]),
            (initial.to_string(), false)
        );
        assert_eq!(
            run(&[("--with-space", "value2")], &[]),
            (initial.to_string(), false)
        );
        assert_eq!(
            run(&[("--key", "new-value")], &[]),
            (
                "\n--key=new-value\n--other=other-value\n--with-space value2\n".into(),
                true
            )
        );
        assert_eq!(
            run(&[], &["--with-space"]),
            ("\n--key=value\n--other=other-value\n".into(), true)
        );
        assert_eq!(
            run(
                &[("--key", "new-value"), ("--other", "other-new-value")],
                &["--with-space"]
            ),
            ("\n--key=new-value\n--other=other-new-value\n".into(), true)
        );
        assert_eq!(
            run(
                &[("--new-opt", "opt-value"), ("--z", "1"), ("--a", "2")],
                &[]
            ),
            (
                format!("{initial}--new-opt=opt-value\n--z=1\n--a=2\n"),
                true
            )
        );
        assert_eq!(run(&[], &[]), (initial.to_string(), false));
    }

    #[test]
    fn update_wins_over_remove_and_duplicates_all_change() {
        let mut f = ArgsFile::parse("--x=1\n--y=2\n--x=3\n");
        assert!(f.update(&upd(&[("--x", "5")]), &["--x".into(), "--y".into()]));
        assert_eq!(f.render(), "--x=5\n--x=5\n");
    }

    #[test]
    fn empty_and_missing_files() {
        let mut f = ArgsFile::parse("");
        assert_eq!(f.get("--key"), None);
        assert!(f.set("--key", "value"));
        assert_eq!(f.render(), "--key=value\n");
    }

    #[test]
    fn quoting_round_trips() {
        let text = "--eviction-hard=\"memory.available<100Mi,nodefs.available<1Gi\"\n--node-labels='a=b,c=d'\n";
        let f = ArgsFile::parse(text);
        assert_eq!(f.render(), text);
        assert_eq!(
            f.get_unquoted("--eviction-hard").unwrap(),
            "memory.available<100Mi,nodefs.available<1Gi"
        );
        assert_eq!(f.get_unquoted("--node-labels").unwrap(), "a=b,c=d");
    }

    #[test]
    fn expands_snap_variables() {
        let vars = [("SNAP", "/snap/m"), ("SNAP_DATA", "/var/snap/m/1")];
        assert_eq!(
            expand_snap_vars("${SNAP_DATA}/certs/x and $SNAP_DATA/y and $SNAP/z", &vars),
            "/var/snap/m/1/certs/x and /var/snap/m/1/y and /snap/m/z"
        );
    }

    #[test]
    fn two_flags_on_one_line_stay_one_line() {
        let f = ArgsFile::parse("--multiple=keys --in-the-same-row=x\n");
        assert_eq!(f.get("--multiple"), Some("keys --in-the-same-row=x"));
        assert_eq!(f.render(), "--multiple=keys --in-the-same-row=x\n");
    }
}
