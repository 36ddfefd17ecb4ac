//! `notes-template`: `{{cluster}}`, `{{guestname}}`, `{{node}}`, `{{vmid}}`; only the escapes
//! `\n` and `\\`; one line of at most 1024 characters.

use crate::error::{Error, Result};

/// What the template variables expand to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotesVars<'a> {
    /// The guest's `name:` (falls back to `VM <vmid>`).
    pub guest_name: Option<&'a str>,
    /// Host name.
    pub node: &'a str,
    /// The guest id.
    pub vmid: u32,
}

/// Checks a template without expanding it.
pub fn validate(template: &str) -> Result<()> {
    render(
        template,
        &NotesVars {
            guest_name: None,
            node: "",
            vmid: 0,
        },
    )
    .map(|_| ())
}

/// Expands a template (errors name the offending part).
pub fn render(template: &str, vars: &NotesVars<'_>) -> Result<String> {
    if template.chars().count() > 1024 {
        return Err(Error::option(
            "notes-template",
            "longer than 1024 characters",
        ));
    }
    if template.contains('\n') {
        return Err(Error::option("notes-template", "must be a single line"));
    }
    let mut out = String::new();
    let mut rest = template;
    while let Some(c) = rest.chars().next() {
        if c == '\\' {
            match rest.chars().nth(1) {
                Some('n') => out.push('\n'),
                Some('\\') => out.push('\\'),
                other => {
                    return Err(Error::option(
                        "notes-template",
                        format!(
                            "unsupported escape '\\{}'",
                            other.map(String::from).unwrap_or_default()
                        ),
                    ))
                }
            }
            rest = &rest[2..];
        } else if let Some(after) = rest.strip_prefix("{{") {
            let end = after
                .find("}}")
                .ok_or_else(|| Error::option("notes-template", "unterminated '{{' variable"))?;
            let var = after[..end].trim();
            match var {
                "cluster" => out.push_str("standalone node"),
                "guestname" => match vars.guest_name {
                    Some(n) => out.push_str(n),
                    None => out.push_str(&format!("VM {}", vars.vmid)),
                },
                "node" => out.push_str(vars.node),
                "vmid" => out.push_str(&vars.vmid.to_string()),
                other => {
                    return Err(Error::option(
                        "notes-template",
                        format!("unknown variable '{{{{{other}}}}}'"),
                    ))
                }
            }
            rest = &after[end + 2..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_variables_and_escapes() {
        let v = NotesVars {
            guest_name: Some("web1"),
            node: "pve1",
            vmid: 100,
        };
        assert_eq!(
            render(
                "{{guestname}} on {{node}} ({{vmid}}, {{cluster}})\\n\\\\x",
                &v
            )
            .expect("ok"),
            "web1 on pve1 (100, standalone node)\n\\x"
        );
        let anon = NotesVars {
            guest_name: None,
            ..v
        };
        assert_eq!(render("{{guestname}}", &anon).expect("ok"), "VM 100");
    }

    #[test]
    fn rejects_bad_templates() {
        assert!(validate("{{foo}}").is_err());
        assert!(validate("a\\tb").is_err());
        assert!(validate("{{vmid").is_err());
        assert!(validate(&"x".repeat(1025)).is_err());
        assert!(validate("trailing\\").is_err());
    }
}
