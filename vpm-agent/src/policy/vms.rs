//! The `[vms]` section: which QoS class each VM is in, by name pattern.

use std::fmt;

use serde::{Serialize, Serializer};

/// A VM name pattern: `*` matches any run of characters (also none), `?`
/// exactly one; everything else matches itself, case-sensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    /// A pattern; `None` for an empty one.
    pub fn new(pattern: &str) -> Option<Self> {
        (!pattern.is_empty()).then(|| Self(pattern.to_owned()))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` matches the whole pattern.
    pub fn matches(&self, name: &str) -> bool {
        let p: Vec<char> = self.0.chars().collect();
        let n: Vec<char> = name.chars().collect();
        // Greedy match with one backtrack point (the last `*`): linear in
        // practice, O(|p|·|n|) at worst, no recursion.
        // Invariants: `ni < n.len()` inside the loop, `pi <= p.len()` always
        // (it only steps past a character `p.get` returned), so no index panics.
        let (mut pi, mut ni) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ni < n.len() {
            match p.get(pi) {
                Some('*') => {
                    star = Some((pi, ni));
                    pi += 1;
                }
                Some(&c) if c == '?' || c == n[ni] => {
                    pi += 1;
                    ni += 1;
                }
                _ => match star {
                    Some((sp, sn)) => {
                        pi = sp + 1;
                        ni = sn + 1;
                        star = Some((sp, sn + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|&c| c == '*')
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Glob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// One `[vms] rules` entry: VMs whose name matches `vm` are in `class`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmRule {
    /// The name pattern.
    pub vm: Glob,
    /// The class name (a key of `[classes]`).
    pub class: String,
}

/// VM → class: the first rule that matches wins, else `default`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmClasses {
    /// The rules, in file order.
    pub rules: Vec<VmRule>,
    /// The class of VMs no rule matches.
    pub default: String,
}

/// The class of VMs no rule matches, unless `[vms] default` says otherwise.
pub const DEFAULT_CLASS: &str = "best-effort";

impl Default for VmClasses {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            default: DEFAULT_CLASS.to_owned(),
        }
    }
}

impl VmClasses {
    /// The class name for the VM `vm`.
    pub fn class_name(&self, vm: &str) -> &str {
        self.rules
            .iter()
            .find(|r| r.vm.matches(vm))
            .map_or(self.default.as_str(), |r| r.class.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn glob(p: &str) -> Glob {
        Glob::new(p).unwrap()
    }

    #[test]
    fn globs_match_whole_names() {
        for (p, yes, no) in [
            (
                "web-*",
                &["web-", "web-1", "web-eu-12"][..],
                &["web", "aweb-1", "Web-1"][..],
            ),
            ("web-?", &["web-1", "web-x"], &["web-", "web-12"]),
            ("*", &["", "anything"], &[]),
            ("db", &["db"], &["db1", "d", ""]),
            ("*-prod-*", &["a-prod-b", "-prod-"], &["a-prod", "prod-b"]),
            (
                "a*b*c",
                &["abc", "aXbYc", "abbbc", "acbc"],
                &["ab", "acb", "abcx"],
            ),
            ("??", &["ab", "çé"], &["a", "abc"]),
            ("vm.[1]", &["vm.[1]"], &["vm.1"]),
        ] {
            for n in yes {
                assert!(glob(p).matches(n), "{p} should match {n:?}");
            }
            for n in no {
                assert!(!glob(p).matches(n), "{p} should not match {n:?}");
            }
        }
        assert_eq!(Glob::new(""), None);
    }

    #[test]
    fn first_rule_wins_then_the_default() {
        let vms = VmClasses {
            rules: vec![
                VmRule {
                    vm: glob("db-*"),
                    class: "guaranteed".into(),
                },
                VmRule {
                    vm: glob("*-1"),
                    class: "burstable".into(),
                },
            ],
            default: "best-effort".into(),
        };
        assert_eq!(vms.class_name("db-1"), "guaranteed");
        assert_eq!(vms.class_name("web-1"), "burstable");
        assert_eq!(vms.class_name("web-2"), "best-effort");
    }

    /// A reference matcher: the obvious recursion.
    fn reference(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, _) => n.is_empty(),
            (Some('*'), _) => reference(&p[1..], n) || (!n.is_empty() && reference(p, &n[1..])),
            (Some('?'), Some(_)) => reference(&p[1..], &n[1..]),
            (Some(c), Some(d)) if c == d => reference(&p[1..], &n[1..]),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn glob_agrees_with_the_reference(p in "[ab*?]{1,6}", n in "[ab]{0,8}") {
            let pc: Vec<char> = p.chars().collect();
            let nc: Vec<char> = n.chars().collect();
            prop_assert_eq!(glob(&p).matches(&n), reference(&pc, &nc));
        }
    }
}
