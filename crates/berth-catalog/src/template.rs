//! `{{a.b}}` substitution for the catalog's URL and credential templates.
//! Deliberately tiny: no logic, no escaping rules, so a template can never do
//! more than name a value.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("template names `{0}`, which has no value for this connection")]
    Missing(String),
    #[error("unclosed `{{{{` in template")]
    Unclosed,
}

/// Replaces every `{{name}}` in `template` with `lookup(name)`.
pub fn render(
    template: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or(TemplateError::Unclosed)?;
        let name = after[..end].trim();
        let value = lookup(name).ok_or_else(|| TemplateError::Missing(name.to_string()))?;
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_reports_missing() {
        let f = |k: &str| (k == "a.b").then(|| "X".to_string());
        assert_eq!(render("https://{{a.b}}/p", f).unwrap(), "https://X/p");
        assert_eq!(render("{{ a.b }}{{a.b}}", f).unwrap(), "XX");
        assert_eq!(render("{{c}}", f), Err(TemplateError::Missing("c".into())));
        assert_eq!(render("{{a.b", f), Err(TemplateError::Unclosed));
        assert_eq!(render("plain", f).unwrap(), "plain");
    }
}
