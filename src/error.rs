//! The error every builder's `build()` returns.

use std::fmt;

/// A configuration that the gateway refuses to run with.
///
/// It names the offending item (`field`, a path such as `stages[prod].variables[my-var]` or
/// `routes[GET /pets/{id}]`) and the rule it broke, so an operator can fix the file without
/// reading the crate's source. Secrets (key values, tokens) never appear in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: String,
    rule: String,
}

/// Whether `name` is 1 to `max_len` ASCII letters, digits, `-` and `_`: the shape of stage
/// names, key and plan ids, and path parameter names.
pub(crate) fn is_identifier(name: &str, max_len: usize) -> bool {
    !name.is_empty()
        && name.len() <= max_len
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ConfigError {
    /// An error about `field` breaking `rule`.
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }

    /// The configuration item at fault, e.g. `stages[prod].name`.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The rule the item broke, in words.
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// The same error, reported one level deeper in the configuration: `prefix.field`.
    pub(crate) fn within(self, prefix: &str) -> Self {
        Self {
            field: format!("{prefix}.{}", self.field),
            rule: self.rule,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}`: {}", self.field, self.rule)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_field_and_rule() {
        let error = ConfigError::new("name", "must not be empty").within("stages[0]");
        assert_eq!(error.field(), "stages[0].name");
        assert_eq!(error.rule(), "must not be empty");
        assert_eq!(
            error.to_string(),
            "invalid `stages[0].name`: must not be empty"
        );
    }
}
