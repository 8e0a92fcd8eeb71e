//! Authentication: who is asking. Client certificates signed by the cluster CA (the
//! TLS layer verifies them; CN is the user, O the groups) and static bearer tokens from
//! `--token-auth-file` (kube-apiserver's CSV format: `token,user,uid,"group1,group2"`).
//! Authorization (RBAC) is a later layer; today every authenticated user may do
//! everything, and anonymous requests get 401.

use std::collections::HashMap;
use std::path::Path;

use crate::error::ApiError;

/// An authenticated user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// Static bearer tokens.
#[derive(Default)]
pub struct Tokens {
    by_token: HashMap<String, User>,
}

impl Tokens {
    /// Parses a token file. Lines are `token,user,uid[,"g1,g2"]`; `#` starts a comment.
    pub fn load(path: &Path) -> Result<Tokens, ApiError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ApiError::Setup(format!("{}: {e}", path.display())))?;
        let mut by_token = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split_csv(line);
            if fields.len() < 3 {
                return Err(ApiError::Setup(format!(
                    "{}: line {}: expected token,user,uid[,groups]",
                    path.display(),
                    n + 1
                )));
            }
            let groups = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            by_token.insert(
                fields[0].clone(),
                User {
                    name: fields[1].clone(),
                    groups,
                },
            );
        }
        Ok(Tokens { by_token })
    }

    /// The user a bearer token stands for.
    pub fn user(&self, token: &str) -> Option<User> {
        self.by_token.get(token).cloned()
    }
}

/// CSV fields with double-quoted fields (which may contain commas).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_groups_may_hold_commas() {
        assert_eq!(
            split_csv(r#"t0k,alice,1,"dev,ops""#),
            vec!["t0k", "alice", "1", "dev,ops"]
        );
    }
}
