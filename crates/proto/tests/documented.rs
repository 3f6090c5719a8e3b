//! Every RPC and every field of the API is documented in the .proto files
//! (a comment on the line before it, or at the end of its line): the
//! protos are what clients in other languages read.

use std::path::Path;

/// `(file, line number, line)` of each RPC and field without a comment.
fn undocumented(file: &Path) -> Vec<(String, usize, String)> {
    let text = std::fs::read_to_string(file).unwrap();
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let mut out = Vec::new();
    let mut previous = String::new();
    // Enum bodies hold values (`NAME = 1;`), not fields.
    let mut in_enum = 0usize;
    let mut depth = 0usize;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with("enum ") {
            in_enum = depth + 1;
        }
        let documented = previous.starts_with("//") || line.contains("//");
        let is_rpc = line.starts_with("rpc ");
        let words: Vec<&str> = line.split_whitespace().collect();
        let is_field = in_enum == 0
            && depth > 0
            && line.ends_with(';')
            && line.contains(" = ")
            && words.len() >= 4
            && !matches!(
                words[0],
                "option" | "reserved" | "syntax" | "package" | "import"
            );
        if (is_rpc || is_field) && !documented {
            out.push((name.clone(), i + 1, line.to_string()));
        }
        depth += line.matches('{').count();
        depth -= line.matches('}').count();
        if in_enum > 0 && depth < in_enum {
            in_enum = 0;
        }
        if !line.is_empty() {
            previous = line.to_string();
        }
    }
    out
}

#[test]
fn every_rpc_and_field_has_a_comment() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/skiff/v1");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "proto") {
            missing.extend(undocumented(&path));
        }
    }
    missing.sort();
    let report: Vec<String> = missing
        .iter()
        .map(|(f, n, l)| format!("{f}:{n}: {l}"))
        .collect();
    assert!(
        missing.is_empty(),
        "{} RPCs and fields without a comment:\n{}",
        missing.len(),
        report.join("\n")
    );
}

#[test]
fn the_check_sees_a_missing_comment() {
    let dir = std::env::temp_dir().join(format!("skiff-proto-doc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("t.proto");
    std::fs::write(
        &file,
        "service S {\n  // Does it.\n  rpc A(X) returns (Y);\n  rpc B(X) returns (Y);\n}\nmessage X {\n  // Named.\n  string a = 1;\n  uint64 b = 2; // trailing\n  map<string, string> c = 3;\n}\nenum E {\n  E_UNSPECIFIED = 0;\n}\n",
    )
    .unwrap();
    let found: Vec<usize> = undocumented(&file).into_iter().map(|(_, n, _)| n).collect();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(found, [4, 10]);
}
