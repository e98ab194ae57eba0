//! The policy file as written (with the source spans the cross-field checks
//! need), and those checks: everything that needs more than one entry to
//! judge (a rule naming a class that does not exist, a class whose bounds
//! contradict each other).

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::hotplug::HotplugSettings;
use super::qos::{QosClass, RawClass, builtin_classes};
use super::settings::{Dwell, PlanSettings};
use super::vms::{DEFAULT_CLASS, Glob, VmClasses, VmRule};
use super::{Devices, Policy};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    #[serde(default)]
    devices: Devices,
    #[serde(default)]
    plan: PlanSettings,
    #[serde(default)]
    dwell: Dwell,
    #[serde(default)]
    hotplug: HotplugSettings,
    #[serde(default)]
    classes: Option<BTreeMap<String, Spanned<RawClass>>>,
    #[serde(default)]
    vms: RawVms,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVms {
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    default: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    vm: Spanned<String>,
    class: Spanned<String>,
}

/// A rule the file breaks: what, and where in the text (when known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    pub(crate) span: Option<Range<usize>>,
    pub(crate) message: String,
}

fn violation(span: Range<usize>, message: String) -> Violation {
    Violation {
        span: Some(span),
        message,
    }
}

impl RawPolicy {
    /// Runs the cross-field checks and builds the policy.
    pub(crate) fn validate(self) -> Result<Policy, Violation> {
        let classes = match self.classes {
            None => builtin_classes().into_iter().collect(),
            Some(raw) => {
                let mut out = BTreeMap::new();
                for (name, class) in raw {
                    let span = class.span();
                    if name.trim().is_empty() {
                        return Err(violation(
                            span,
                            "a class needs a name: [classes.NAME] with a non-empty NAME".into(),
                        ));
                    }
                    let class = class
                        .into_inner()
                        .validate(&name)
                        .map_err(|(at, m)| violation(at.unwrap_or(span), m))?;
                    out.insert(name, class);
                }
                out
            }
        };
        let known = |classes: &BTreeMap<String, QosClass>| {
            classes
                .keys()
                .map(|k| format!("\"{k}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut rules = Vec::with_capacity(self.vms.rules.len());
        for (i, rule) in self.vms.rules.into_iter().enumerate() {
            let pattern = rule.vm.get_ref();
            let vm = Glob::new(pattern).ok_or_else(|| {
                violation(
                    rule.vm.span(),
                    format!(
                        "[vms] rule {}: the vm pattern is empty (use \"*\" to match every VM)",
                        i + 1
                    ),
                )
            })?;
            let class = rule.class.get_ref();
            if !classes.contains_key(class) {
                return Err(violation(
                    rule.class.span(),
                    format!(
                        "[vms] rule {} (vm = \"{pattern}\"): class \"{class}\" is not defined; \
                         the classes are {}",
                        i + 1,
                        known(&classes)
                    ),
                ));
            }
            rules.push(VmRule {
                vm,
                class: class.clone(),
            });
        }
        let default = match self.vms.default {
            Some(d) => {
                if !classes.contains_key(d.get_ref()) {
                    return Err(violation(
                        d.span(),
                        format!(
                            "[vms] default: class \"{}\" is not defined; the classes are {}",
                            d.get_ref(),
                            known(&classes)
                        ),
                    ));
                }
                d.into_inner()
            }
            None if classes.contains_key(DEFAULT_CLASS) => DEFAULT_CLASS.to_owned(),
            None => {
                return Err(Violation {
                    span: None,
                    message: format!(
                        "[vms] default is not set and there is no class \"{DEFAULT_CLASS}\" \
                         for VMs no rule matches: set [vms] default to one of {}",
                        known(&classes)
                    ),
                });
            }
        };
        Ok(Policy {
            devices: self.devices,
            plan: self.plan,
            dwell: self.dwell,
            hotplug: self.hotplug,
            classes,
            vms: VmClasses { rules, default },
        })
    }
}

/// `message` located in `text` the way the TOML parser reports errors: line
/// and column (1-based), the line itself, and a marker under the span.
pub(crate) fn locate(text: &str, v: &Violation) -> String {
    let Some(span) = &v.span else {
        return v.message.clone();
    };
    let mut start = span.start.min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line_no = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    let src = text[line_start..line_end].trim_end_matches('\r');
    let mut end = span.end.clamp(start, line_end);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let width = text[start..end].chars().count().max(1);
    let gutter = " ".repeat(line_no.to_string().len());
    format!(
        "policy error at line {line_no}, column {column}\n{gutter} |\n{line_no} | {src}\n{gutter} | {}{}\n{}",
        " ".repeat(column - 1),
        "^".repeat(width),
        v.message
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn located_messages_show_the_line_and_mark_the_span() {
        let text = "a = 1\nclass = \"gold\"\n";
        let start = text.find("\"gold\"").unwrap();
        let v = violation(start..start + 6, "no such class".into());
        let msg = locate(text, &v);
        assert_eq!(
            msg,
            "policy error at line 2, column 9\n  |\n2 | class = \"gold\"\n  |         ^^^^^^\nno such class"
        );
        let v = Violation {
            span: None,
            message: "whole file".into(),
        };
        assert_eq!(locate(text, &v), "whole file");
        // Spans inside a character or past the end do not panic.
        let text = "vm = \"é\"";
        for span in [6..7, 7..8, 3..99, 99..120] {
            let v = violation(span, "x".into());
            assert!(locate(text, &v).contains("line 1"));
        }
    }
}
