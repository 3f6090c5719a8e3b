//! The metrics reference in docs/observability.md, made from what the
//! server's and the agent's code export (their `example()` expositions),
//! so the page cannot drift: a test compares it, and
//! `make docs` writes it.

use std::collections::BTreeMap;

/// One family: its type, help and label names.
#[derive(Default)]
struct Family {
    kind: String,
    help: String,
    labels: std::collections::BTreeSet<String>,
}

/// The families of an exposition, by name.
fn families(text: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.entry(name.to_string()).or_default().help = help.to_string();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            out.entry(name.to_string()).or_default().kind = kind.to_string();
        } else if let Some((series, _)) = line.rsplit_once(' ') {
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| out.contains_key(*b)))
                .unwrap_or(name);
            if let Some(f) = out.get_mut(base) {
                for pair in labels.trim_end_matches('}').split(',') {
                    if let Some((k, _)) = pair.split_once('=') {
                        if k != "le" {
                            f.labels.insert(k.to_string());
                        }
                    }
                }
            }
        }
    }
    out
}

fn table(text: &str) -> String {
    let mut out = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
    for (name, f) in families(text) {
        let labels: Vec<String> = f.labels.iter().map(|l| format!("`{l}`")).collect();
        out.push_str(&format!(
            "| `{name}` | {} | {} | {} |\n",
            f.kind,
            labels.join(", "),
            f.help.replace('|', "\\|")
        ));
    }
    out
}

/// The reference: the servers' series, then the agents'.
pub fn reference() -> String {
    format!(
        "### Servers\n\n{}\n### Agents\n\n{}",
        table(&skiff_server::metrics::example()),
        table(&skiff_agent::metrics::example())
    )
}

#[cfg(test)]
mod tests {
    const BEGIN: &str = "<!-- metrics:begin (made by `make docs` from the code) -->\n";
    const END: &str = "<!-- metrics:end -->";

    #[test]
    fn the_docs_list_every_metric_the_code_exports() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/observability.md");
        let page = std::fs::read_to_string(&path).unwrap();
        let (head, rest) = page.split_once(BEGIN).expect("the metrics:begin marker");
        let (_, tail) = rest.split_once(END).expect("the metrics:end marker");
        let want = format!("{head}{BEGIN}{}{END}{tail}", super::reference());
        if std::env::var_os("SKIFF_BLESS").is_some() {
            std::fs::write(&path, &want).unwrap();
            return;
        }
        assert!(
            page == want,
            "docs/observability.md's metrics reference is out of date: run `make docs`"
        );
        for name in [
            "skiff_raft_term",
            "skiff_alloc_oom_kills_total",
            "DCGM_FI_DEV_GPU_UTIL",
        ] {
            assert!(page.contains(&format!("`{name}`")), "{name}");
        }
    }
}
