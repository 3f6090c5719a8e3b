//! How deep a spec's text nests, counted before the YAML reader sees it:
//! the reader's own depth limit only fires after it has done work that
//! grows with the nesting (a spec of a million `[` took minutes), so the
//! text is measured first, in one pass.

use crate::error::SpecError;

/// The deepest nesting a spec may have; real specs stay under ten.
pub const MAX_DEPTH: usize = 64;

/// Refuses a text that nests deeper than [`MAX_DEPTH`]: block levels
/// (deeper indentation, `- ` items) and flow brackets together. It may
/// count a bracket inside a block scalar as a level, never fewer levels
/// than there are, which the generous limit absorbs.
pub fn check_depth(text: &str) -> Result<(), SpecError> {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    for line in text.lines() {
        let body = line.trim_start_matches(' ');
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let indent = line.len() - body.len();
        if flow == 0 {
            while indents.last().is_some_and(|&i| i > indent) {
                indents.pop();
            }
            if indents.last() != Some(&indent) {
                indents.push(indent);
            }
        }
        let mut rest = body;
        let mut items = 0;
        while let Some(after) = rest
            .strip_prefix('-')
            .filter(|a| a.is_empty() || a.starts_with(' '))
        {
            items += 1;
            rest = after.trim_start_matches(' ');
        }
        let mut quote: Option<char> = None;
        let mut prev = ' ';
        let mut deepest = flow;
        for c in rest.chars() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => match c {
                    '\'' | '"' => quote = Some(c),
                    '#' if prev == ' ' => break,
                    '[' | '{' => {
                        flow += 1;
                        deepest = deepest.max(flow);
                    }
                    ']' | '}' => flow = flow.saturating_sub(1),
                    _ => {}
                },
            }
            prev = c;
        }
        let depth = indents.len() + items + deepest;
        if depth > MAX_DEPTH {
            return Err(SpecError::Syntax(format!(
                "nested more than {MAX_DEPTH} levels deep (line {}); a spec may nest at most {MAX_DEPTH}",
                text[..text.find(line).unwrap_or(0)].lines().count() + 1
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JobSpec;

    #[test]
    fn deep_nesting_is_refused_before_the_yaml_reader_runs() {
        let flow = format!("name: x\ntask: {}", "[".repeat(200_000));
        let err = JobSpec::from_yaml(&flow).unwrap_err().to_string();
        assert!(err.contains("nested more than 64 levels deep"), "{err}");
        let mut block = String::from("name: x\ntask:\n");
        for i in 0..100 {
            block.push_str(&format!("{}k{i}:\n", " ".repeat(2 * (i + 1))));
        }
        let err = JobSpec::from_yaml(&block).unwrap_err().to_string();
        assert!(err.contains("nested more than 64 levels deep"), "{err}");
        let items = format!("name: x\ntask:\n  args:\n    {}x\n", "- ".repeat(100));
        let err = JobSpec::from_yaml(&items).unwrap_err().to_string();
        assert!(err.contains("nested more than 64 levels deep"), "{err}");
    }

    #[test]
    fn ordinary_specs_are_far_from_the_limit() {
        let text = "name: web # a comment with [ and {\nreplicas: 2\ntask:\n  image: 'oci:/i'\n  command: [sh, -c, 'echo \"[[[\"; exit 0']\n  env:\n    A: '{'\n  resources: {cpu: 100m, memory: 64Mi}\n";
        check_depth(text).unwrap();
        JobSpec::from_yaml(text).unwrap();
    }
}
