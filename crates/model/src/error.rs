//! Errors that name the field and the rule that was broken.

use std::fmt;

/// One broken rule, tied to the dotted path of the field that broke it
/// (for example `task.resources.memory`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the offending field, `""` for the document itself.
    pub field: String,
    /// What rule the value broke, in words an operator can act on.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Why a job spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The text is not YAML/JSON at all.
    #[error("spec is not valid YAML or JSON: {0}")]
    Syntax(String),
    /// The text is larger than [`crate::MAX_SPEC_BYTES`].
    #[error("spec is {size} bytes; the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// The document parsed, but some fields break rules. Every broken rule is
    /// listed, not only the first.
    #[error("{}", render_fields(.0))]
    Invalid(Vec<FieldError>),
}

impl SpecError {
    /// The individual field errors (empty for syntax and size errors).
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            SpecError::Invalid(errors) => errors,
            _ => &[],
        }
    }
}

fn render_fields(errors: &[FieldError]) -> String {
    let mut out = format!(
        "spec is invalid ({} error{}):",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    for e in errors {
        out.push_str("\n  - ");
        out.push_str(&e.to_string());
    }
    out
}

/// At most 64 characters of a value, and "..." when there was more: what an
/// error message quotes of something a caller sent (never a whole 50 MB
/// name back in a reply's header).
pub fn clipped(value: &str) -> String {
    match value.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &value[..i]),
        None => value.to_string(),
    }
}
