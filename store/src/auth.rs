//! Users, roles and key-range permissions: etcd's auth store, with etcd 3.5's rules.
//!
//! Every change is an `Op::Auth*` applied in log order through [`AuthStore::apply`],
//! staged into the apply batch (the auth keyspace) and mirrored in memory, where
//! permission checks read it. Password hashes are computed before proposing and checked
//! outside the apply path, so bcrypt never stalls the applier. Tokens are etcd's "simple
//! tokens": a random string plus a sequence number, held in memory only, so they die
//! with the process exactly as etcd's do.
//!
//! On disk: `enabled` (one byte), `revision` (u64 BE), `user/<name>` (an `authpb.User`)
//! and `role/<name>` (an `authpb.Role`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use capstan_proto::authpb;
use capstan_proto::authpb::permission::Type as PermType;
use parking_lot::{Mutex, RwLock};
use prost::Message;
use rand::Rng;

use crate::apply::Op;
use crate::engine::{Cf, Engine, WriteBatch};
use crate::error::{Result, StoreError};

/// The user that must exist (with [`ROOT_ROLE`]) before auth can be enabled.
pub const ROOT_USER: &str = "root";
/// The role that grants everything, including auth and cluster administration.
pub const ROOT_ROLE: &str = "root";
/// etcd's `--auth-token-ttl` default: a simple token lives this long after its last use.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);

const KEY_ENABLED: &[u8] = b"enabled";
const KEY_REVISION: &[u8] = b"revision";
const USER_PREFIX: &[u8] = b"user/";
const ROLE_PREFIX: &[u8] = b"role/";
const TOKEN_LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const TOKEN_PREFIX_LEN: usize = 16;

fn user_key(name: &str) -> Vec<u8> {
    [USER_PREFIX, name.as_bytes()].concat()
}

fn role_key(name: &str) -> Vec<u8> {
    [ROLE_PREFIX, name.as_bytes()].concat()
}

/// The end of the keys starting with `prefix` (its last byte is never 0xff here).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

fn has_root_role(u: &authpb::User) -> bool {
    u.roles.iter().any(|r| r == ROOT_ROLE)
}

#[derive(Default)]
struct State {
    enabled: bool,
    /// Bumped by every change except enabling (as etcd does); starts at 1.
    revision: u64,
    users: BTreeMap<String, authpb::User>,
    roles: BTreeMap<String, authpb::Role>,
}

struct Token {
    user: String,
    expires: Instant,
}

/// See the module documentation.
/// etcd's `--bcrypt-cost` default.
pub const ETCD_BCRYPT_COST: u32 = 10;

pub struct AuthStore {
    state: RwLock<State>,
    tokens: Mutex<HashMap<String, Token>>,
    token_seq: AtomicU64,
    token_ttl_ms: AtomicU64,
    bcrypt_cost: AtomicU32,
}

/// Reads the auth keyspace; see [`AuthStore::open`].
fn load(engine: &dyn Engine) -> Result<State> {
    let mut st = State {
        revision: 1,
        ..Default::default()
    };
    st.enabled = engine.get(Cf::Auth, KEY_ENABLED)?.is_some_and(|v| v == [1]);
    if let Some(v) = engine.get(Cf::Auth, KEY_REVISION)? {
        let bytes: [u8; 8] = v
            .as_slice()
            .try_into()
            .map_err(|_| StoreError::Engine("corrupt auth revision".into()))?;
        st.revision = u64::from_be_bytes(bytes).max(1);
    }
    let mut corrupt = None;
    engine.scan(
        Cf::Auth,
        USER_PREFIX,
        Some(&prefix_end(USER_PREFIX)),
        &mut |_, v| {
            match authpb::User::decode(v) {
                Ok(u) => {
                    st.users
                        .insert(String::from_utf8_lossy(&u.name).into_owned(), u);
                }
                Err(e) => corrupt = Some(e),
            }
            corrupt.is_none()
        },
    )?;
    engine.scan(
        Cf::Auth,
        ROLE_PREFIX,
        Some(&prefix_end(ROLE_PREFIX)),
        &mut |_, v| {
            match authpb::Role::decode(v) {
                Ok(r) => {
                    st.roles
                        .insert(String::from_utf8_lossy(&r.name).into_owned(), r);
                }
                Err(e) => corrupt = Some(e),
            }
            corrupt.is_none()
        },
    )?;
    if let Some(e) = corrupt {
        return Err(e.into());
    }
    Ok(st)
}

/// One permission as a half-open interval; `end = None` is open-ended.
struct Interval<'a> {
    begin: &'a [u8],
    end: Option<Vec<u8>>,
}

impl AuthStore {
    /// Loads users, roles and the auth switch from the auth keyspace.
    pub fn open(engine: &dyn Engine) -> Result<Self> {
        let st = load(engine)?;
        Ok(Self {
            state: RwLock::new(st),
            tokens: Mutex::new(HashMap::new()),
            token_seq: AtomicU64::new(1),
            token_ttl_ms: AtomicU64::new(DEFAULT_TOKEN_TTL.as_millis() as u64),
            // etcd's default (Go's bcrypt.DefaultCost, 10), not the bcrypt crate's 12,
            // which makes every authentication four times as expensive as etcd's.
            bcrypt_cost: AtomicU32::new(ETCD_BCRYPT_COST),
        })
    }

    /// Replaces users, roles and the auth switch with what the auth keyspace holds now
    /// (after a Raft snapshot install replaced it). If anything changed (the revision
    /// moved), every token is dropped: the skipped changes may have deleted a user or
    /// changed a password, which must end its sessions, and clients log in again.
    pub fn reload(&self, engine: &dyn Engine) -> Result<()> {
        let st = load(engine)?;
        let mut cur = self.state.write();
        if cur.revision != st.revision || cur.enabled != st.enabled {
            self.tokens.lock().clear();
        }
        *cur = st;
        Ok(())
    }

    /// Sets the bcrypt cost of new password hashes (etcd's `--bcrypt-cost`); tests lower it.
    pub fn set_bcrypt_cost(&self, cost: u32) {
        self.bcrypt_cost.store(cost, Ordering::Relaxed);
    }

    /// Sets how long a token lives after its last use (etcd's `--auth-token-ttl`).
    pub fn set_token_ttl(&self, ttl: Duration) {
        self.token_ttl_ms
            .store(ttl.as_millis() as u64, Ordering::Relaxed);
    }

    fn token_ttl(&self) -> Duration {
        Duration::from_millis(self.token_ttl_ms.load(Ordering::Relaxed))
    }

    /// Whether auth is enabled.
    pub fn is_enabled(&self) -> bool {
        self.state.read().enabled
    }

    /// The auth revision (what AuthStatus reports).
    pub fn revision(&self) -> u64 {
        self.state.read().revision
    }

    /// Applies one of the `Op::Auth*` operations. Every check runs before the first
    /// change, so a refused op leaves both memory and the batch untouched.
    pub fn apply(&self, op: &Op, batch: &mut WriteBatch) -> Result<()> {
        let mut st = self.state.write();
        match op {
            Op::AuthEnable(_) => {
                if st.enabled {
                    return Ok(());
                }
                let root = st
                    .users
                    .get(ROOT_USER)
                    .ok_or(StoreError::RootUserNotExist)?;
                if !has_root_role(root) {
                    return Err(StoreError::RootRoleNotExist);
                }
                st.enabled = true;
                batch.put(Cf::Auth, KEY_ENABLED, vec![1]);
                // etcd does not bump the revision on enable: tokens are issued from here on.
                return Ok(());
            }
            Op::AuthDisable(_) => {
                if !st.enabled {
                    return Ok(());
                }
                st.enabled = false;
                batch.put(Cf::Auth, KEY_ENABLED, vec![0]);
                self.tokens.lock().clear();
            }
            Op::AuthUserAdd(r) => {
                if r.name.is_empty() {
                    return Err(StoreError::UserEmpty);
                }
                if st.users.contains_key(&r.name) {
                    return Err(StoreError::UserAlreadyExist);
                }
                let options = r.options.unwrap_or_default();
                let password = if options.no_password {
                    Vec::new()
                } else {
                    r.hashed_password.clone().into_bytes()
                };
                let user = authpb::User {
                    name: r.name.clone().into_bytes(),
                    password,
                    roles: Vec::new(),
                    options: Some(options),
                };
                batch.put(Cf::Auth, user_key(&r.name), user.encode_to_vec());
                st.users.insert(r.name.clone(), user);
            }
            Op::AuthUserDelete(r) => {
                if st.enabled && r.name == ROOT_USER {
                    return Err(StoreError::InvalidAuthMgmt);
                }
                if st.users.remove(&r.name).is_none() {
                    return Err(StoreError::UserNotFound);
                }
                batch.delete(Cf::Auth, user_key(&r.name));
                self.invalidate_user(&r.name);
            }
            Op::AuthUserChangePassword(r) => {
                let user = st.users.get_mut(&r.name).ok_or(StoreError::UserNotFound)?;
                let no_password = user.options.as_ref().is_some_and(|o| o.no_password);
                user.password = if no_password {
                    Vec::new()
                } else {
                    r.hashed_password.clone().into_bytes()
                };
                batch.put(Cf::Auth, user_key(&r.name), user.encode_to_vec());
                self.invalidate_user(&r.name);
            }
            Op::AuthUserGrantRole(r) => {
                if !st.users.contains_key(&r.user) {
                    return Err(StoreError::UserNotFound);
                }
                // The root role need not exist as a role object to be granted.
                if r.role != ROOT_ROLE && !st.roles.contains_key(&r.role) {
                    return Err(StoreError::RoleNotFound);
                }
                let user = st.users.get_mut(&r.user).ok_or(StoreError::UserNotFound)?;
                match user.roles.binary_search(&r.role) {
                    // etcd ignores a duplicate grant without bumping the revision.
                    Ok(_) => return Ok(()),
                    Err(at) => user.roles.insert(at, r.role.clone()),
                }
                batch.put(Cf::Auth, user_key(&r.user), user.encode_to_vec());
            }
            Op::AuthUserRevokeRole(r) => {
                if st.enabled && r.name == ROOT_USER && r.role == ROOT_ROLE {
                    return Err(StoreError::InvalidAuthMgmt);
                }
                let user = st.users.get_mut(&r.name).ok_or(StoreError::UserNotFound)?;
                let before = user.roles.len();
                user.roles.retain(|role| *role != r.role);
                if user.roles.len() == before {
                    return Err(StoreError::RoleNotGranted);
                }
                batch.put(Cf::Auth, user_key(&r.name), user.encode_to_vec());
            }
            Op::AuthRoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(StoreError::RoleEmpty);
                }
                if st.roles.contains_key(&r.name) {
                    return Err(StoreError::RoleAlreadyExist);
                }
                let role = authpb::Role {
                    name: r.name.clone().into_bytes(),
                    key_permission: Vec::new(),
                };
                batch.put(Cf::Auth, role_key(&r.name), role.encode_to_vec());
                st.roles.insert(r.name.clone(), role);
            }
            Op::AuthRoleDelete(r) => {
                if st.enabled && r.role == ROOT_ROLE {
                    return Err(StoreError::InvalidAuthMgmt);
                }
                if st.roles.remove(&r.role).is_none() {
                    return Err(StoreError::RoleNotFound);
                }
                batch.delete(Cf::Auth, role_key(&r.role));
                for (name, user) in st.users.iter_mut() {
                    let before = user.roles.len();
                    user.roles.retain(|role| *role != r.role);
                    if user.roles.len() != before {
                        batch.put(Cf::Auth, user_key(name), user.encode_to_vec());
                    }
                }
            }
            Op::AuthRoleGrantPermission(r) => {
                let perm = r.perm.as_ref().ok_or(StoreError::PermissionNotGiven)?;
                let role = st.roles.get_mut(&r.name).ok_or(StoreError::RoleNotFound)?;
                // etcd keeps permissions sorted by key and looks for the same (key,
                // range_end) only at the first slot with that key; a new permission goes
                // there too, which is where Go's insertion sort would leave it.
                let at = role.key_permission.partition_point(|p| p.key < perm.key);
                match role.key_permission.get_mut(at) {
                    Some(p) if p.key == perm.key && p.range_end == perm.range_end => {
                        p.perm_type = perm.perm_type
                    }
                    _ => role.key_permission.insert(
                        at,
                        authpb::Permission {
                            perm_type: perm.perm_type,
                            key: perm.key.clone(),
                            range_end: perm.range_end.clone(),
                        },
                    ),
                }
                batch.put(Cf::Auth, role_key(&r.name), role.encode_to_vec());
            }
            Op::AuthRoleRevokePermission(r) => {
                let role = st.roles.get_mut(&r.role).ok_or(StoreError::RoleNotFound)?;
                let before = role.key_permission.len();
                role.key_permission
                    .retain(|p| p.key != r.key || p.range_end != r.range_end);
                if role.key_permission.len() == before {
                    return Err(StoreError::PermissionNotGranted);
                }
                batch.put(Cf::Auth, role_key(&r.role), role.encode_to_vec());
            }
            _ => {
                return Err(StoreError::InvalidArgument(
                    "etcdserver: not an auth request".into(),
                ))
            }
        }
        st.revision += 1;
        batch.put(Cf::Auth, KEY_REVISION, st.revision.to_be_bytes().to_vec());
        Ok(())
    }

    fn invalidate_user(&self, user: &str) {
        self.tokens.lock().retain(|_, t| t.user != user);
    }

    /// Checks `user` (None: no token given) may read (`write = false`) or write the
    /// range `[key, range_end)` in etcd's range encoding. Ok whenever auth is off.
    pub fn check(
        &self,
        user: Option<&str>,
        key: &[u8],
        range_end: &[u8],
        write: bool,
    ) -> Result<()> {
        let st = self.state.read();
        if !st.enabled {
            return Ok(());
        }
        let Some(name) = user.filter(|u| !u.is_empty()) else {
            return Err(StoreError::UserEmpty);
        };
        let Some(u) = st.users.get(name) else {
            return Err(StoreError::PermissionDenied);
        };
        if has_root_role(u) {
            return Ok(());
        }
        let want = if write {
            PermType::Write
        } else {
            PermType::Read
        };
        let mut ivs: Vec<Interval<'_>> = u
            .roles
            .iter()
            .filter_map(|r| st.roles.get(r))
            .flat_map(|r| r.key_permission.iter())
            .filter(|p| {
                let t = PermType::try_from(p.perm_type).unwrap_or(PermType::Read);
                t == want || t == PermType::Readwrite
            })
            .map(|p| Interval {
                begin: &p.key,
                end: match p.range_end.as_slice() {
                    [] => Some([p.key.as_slice(), &[0]].concat()),
                    [0] => None,
                    end => Some(end.to_vec()),
                },
            })
            .collect();
        let end = match range_end {
            [] => None,
            [0] => Some(None),
            e => Some(Some(e)),
        };
        let ok = match end {
            Some(Some(e)) if e > key => covers(&mut ivs, key, Some(e)),
            Some(None) => covers(&mut ivs, key, None),
            // A single key, or a backwards range (which selects nothing): the key itself.
            _ => ivs
                .iter()
                .any(|iv| iv.begin <= key && iv.end.as_deref().is_none_or(|e| key < e)),
        };
        if ok {
            Ok(())
        } else {
            Err(StoreError::PermissionDenied)
        }
    }

    /// Checks `user` may run admin operations (auth management, maintenance).
    pub fn check_admin(&self, user: Option<&str>) -> Result<()> {
        let st = self.state.read();
        if !st.enabled {
            return Ok(());
        }
        let Some(name) = user.filter(|u| !u.is_empty()) else {
            return Err(StoreError::UserEmpty);
        };
        let u = st.users.get(name).ok_or(StoreError::UserNotFound)?;
        if has_root_role(u) {
            Ok(())
        } else {
            Err(StoreError::PermissionDenied)
        }
    }

    /// Whether `user` exists and holds `role`.
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.state
            .read()
            .users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    /// Resolves a token (simple token) to its user, extending its life.
    pub fn user_from_token(&self, token: &str) -> Result<String> {
        let now = Instant::now();
        let mut tokens = self.tokens.lock();
        match tokens.get_mut(token) {
            Some(t) if t.expires > now => {
                t.expires = now + self.token_ttl();
                Ok(t.user.clone())
            }
            Some(_) => {
                tokens.remove(token);
                Err(StoreError::InvalidAuthToken)
            }
            None => Err(StoreError::InvalidAuthToken),
        }
    }

    /// Hashes a password for a user add or password change. Slow by design (bcrypt):
    /// call it off the async runtime and before proposing.
    pub fn hash_password(&self, password: &str) -> Result<String> {
        bcrypt::hash(password, self.bcrypt_cost.load(Ordering::Relaxed))
            .map_err(|e| StoreError::InvalidArgument(format!("bcrypt: {e}")))
    }

    /// First half of Authenticate: the stored hash of `name` and the auth revision it
    /// was read at, to be verified off the applier with [`verify_password`].
    pub fn password_hash(&self, name: &str) -> Result<(String, u64)> {
        let st = self.state.read();
        if !st.enabled {
            return Err(StoreError::AuthNotEnabled);
        }
        let u = st.users.get(name).ok_or(StoreError::AuthFailed)?;
        if u.options.as_ref().is_some_and(|o| o.no_password) {
            return Err(StoreError::NoPasswordUser);
        }
        Ok((
            String::from_utf8_lossy(&u.password).into_owned(),
            st.revision,
        ))
    }

    /// Second half of Authenticate: issues a token for `name` whose password was
    /// verified at auth revision `checked`. `None` when the auth store changed since
    /// (the password may have changed): the caller checks again, as etcd does.
    pub fn assign_token(&self, name: &str, checked: u64) -> Result<Option<String>> {
        let st = self.state.read();
        if !st.enabled {
            return Err(StoreError::AuthNotEnabled);
        }
        if st.revision != checked {
            return Ok(None);
        }
        if !st.users.contains_key(name) {
            return Err(StoreError::AuthFailed);
        }
        let mut rng = rand::rng();
        let mut token: String = (0..TOKEN_PREFIX_LEN)
            .map(|_| TOKEN_LETTERS[rng.random_range(0..TOKEN_LETTERS.len())] as char)
            .collect();
        token.push('.');
        token.push_str(&self.token_seq.fetch_add(1, Ordering::Relaxed).to_string());
        let now = Instant::now();
        let mut tokens = self.tokens.lock();
        // Expired tokens are dropped here rather than by a timer: issuing is rare.
        tokens.retain(|_, t| t.expires > now);
        tokens.insert(
            token.clone(),
            Token {
                user: name.to_string(),
                expires: now + self.token_ttl(),
            },
        );
        Ok(Some(token))
    }

    /// A user's roles (UserGet).
    pub fn user_get(&self, name: &str) -> Result<Vec<String>> {
        let st = self.state.read();
        st.users
            .get(name)
            .map(|u| u.roles.clone())
            .ok_or(StoreError::UserNotFound)
    }

    /// Every user name, sorted.
    pub fn user_list(&self) -> Vec<String> {
        self.state.read().users.keys().cloned().collect()
    }

    /// A role's permissions (RoleGet); the root role reports the whole key space, as
    /// etcd 3.5 does.
    pub fn role_get(&self, name: &str) -> Result<Vec<authpb::Permission>> {
        let st = self.state.read();
        let role = st.roles.get(name).ok_or(StoreError::RoleNotFound)?;
        if name == ROOT_ROLE {
            return Ok(vec![authpb::Permission {
                perm_type: PermType::Readwrite as i32,
                key: Vec::new(),
                range_end: vec![0],
            }]);
        }
        Ok(role.key_permission.clone())
    }

    /// Every role name, sorted.
    pub fn role_list(&self) -> Vec<String> {
        self.state.read().roles.keys().cloned().collect()
    }
}

/// Whether the union of `ivs` covers `[key, end)` (`end = None`: to the end of the key
/// space) without a gap, as etcd's interval tree `Contains` decides.
fn covers(ivs: &mut [Interval<'_>], key: &[u8], end: Option<&[u8]>) -> bool {
    ivs.sort_by(|a, b| a.begin.cmp(b.begin));
    let mut covered: Vec<u8> = key.to_vec();
    for iv in ivs.iter() {
        if iv.begin > covered.as_slice() {
            return false;
        }
        match &iv.end {
            None => return true,
            Some(e) if e.as_slice() > covered.as_slice() => covered = e.clone(),
            Some(_) => {}
        }
        if end.is_some_and(|end| covered.as_slice() >= end) {
            return true;
        }
    }
    false
}

/// Checks `password` against a stored bcrypt hash; a missing or malformed hash never
/// matches. Slow by design: call it off the async runtime.
pub fn verify_password(password: &str, hash: &str) -> bool {
    bcrypt::verify(password, hash).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::memory::MemEngine;
    use capstan_proto::etcdserverpb as pb;

    fn store() -> (MemEngine, AuthStore) {
        let e = MemEngine::default();
        let a = AuthStore::open(&e).expect("open");
        (e, a)
    }

    fn apply(e: &MemEngine, a: &AuthStore, op: Op) -> Result<()> {
        let mut b = WriteBatch::default();
        let r = a.apply(&op, &mut b);
        e.write(b, true).expect("write");
        r
    }

    fn perm(t: PermType, key: &str, end: &[u8]) -> Option<authpb::Permission> {
        Some(authpb::Permission {
            perm_type: t as i32,
            key: key.into(),
            range_end: end.to_vec(),
        })
    }

    fn setup(e: &MemEngine, a: &AuthStore) {
        let user = |n: &str| {
            Op::AuthUserAdd(pb::AuthUserAddRequest {
                name: n.into(),
                ..Default::default()
            })
        };
        apply(e, a, user("root")).expect("root");
        apply(e, a, user("u")).expect("u");
        apply(
            e,
            a,
            Op::AuthRoleAdd(pb::AuthRoleAddRequest { name: "r".into() }),
        )
        .expect("role");
        for p in [
            perm(PermType::Read, "a", b"c"),
            perm(PermType::Read, "c", b"e"),
            perm(PermType::Write, "k", b""),
            perm(PermType::Readwrite, "z", b"\0"),
        ] {
            apply(
                e,
                a,
                Op::AuthRoleGrantPermission(pb::AuthRoleGrantPermissionRequest {
                    name: "r".into(),
                    perm: p,
                }),
            )
            .expect("grant");
        }
        let grant = |u: &str, r: &str| {
            Op::AuthUserGrantRole(pb::AuthUserGrantRoleRequest {
                user: u.into(),
                role: r.into(),
            })
        };
        apply(e, a, grant("u", "r")).expect("grant u");
        assert_eq!(
            apply(e, a, Op::AuthEnable(Default::default())),
            Err(StoreError::RootRoleNotExist)
        );
        apply(e, a, grant("root", "root")).expect("grant root");
        apply(e, a, Op::AuthEnable(Default::default())).expect("enable");
    }

    #[test]
    fn ranges_merge_like_etcds_interval_tree() {
        let (e, a) = store();
        setup(&e, &a);
        let u = Some("u");
        assert_eq!(a.check(u, b"b", b"", false), Ok(()));
        // [a,c) and [c,e) together cover [a,e), but nothing beyond e.
        assert_eq!(a.check(u, b"a", b"e", false), Ok(()));
        assert_eq!(
            a.check(u, b"a", b"f", false),
            Err(StoreError::PermissionDenied)
        );
        assert_eq!(
            a.check(u, b"b", b"", true),
            Err(StoreError::PermissionDenied)
        );
        assert_eq!(a.check(u, b"k", b"", true), Ok(()));
        assert_eq!(
            a.check(u, b"k", b"", false),
            Err(StoreError::PermissionDenied)
        );
        assert_eq!(a.check(u, b"k", b"k\0", true), Ok(()));
        assert_eq!(
            a.check(u, b"k", b"l", true),
            Err(StoreError::PermissionDenied)
        );
        assert_eq!(a.check(u, b"zz", b"\0", true), Ok(()));
        assert_eq!(
            a.check(u, b"y", b"\0", false),
            Err(StoreError::PermissionDenied)
        );
        assert_eq!(a.check(None, b"b", b"", false), Err(StoreError::UserEmpty));
        assert_eq!(
            a.check(Some("ghost"), b"b", b"", false),
            Err(StoreError::PermissionDenied)
        );
        assert_eq!(a.check(Some("root"), b"", b"\0", true), Ok(()));
        assert_eq!(a.check_admin(u), Err(StoreError::PermissionDenied));
        assert_eq!(a.check_admin(Some("ghost")), Err(StoreError::UserNotFound));
        assert_eq!(a.check_admin(Some("root")), Ok(()));
    }

    #[test]
    fn state_survives_reopen_and_revision_counts_changes() {
        let (e, a) = store();
        assert_eq!(a.revision(), 1);
        setup(&e, &a);
        // 2 users, 1 role, 4 grants, 2 role grants; enabling does not count.
        assert_eq!(a.revision(), 10);
        let b = AuthStore::open(&e).expect("reopen");
        assert!(b.is_enabled());
        assert_eq!(b.revision(), 10);
        assert_eq!(b.user_list(), vec!["root", "u"]);
        assert_eq!(b.user_get("u"), Ok(vec!["r".to_string()]));
        assert_eq!(b.role_get("r").map(|p| p.len()), Ok(4));
        assert_eq!(b.check(Some("u"), b"b", b"", false), Ok(()));
    }

    #[test]
    fn root_is_protected_while_enabled() {
        let (e, a) = store();
        setup(&e, &a);
        let del = Op::AuthUserDelete(pb::AuthUserDeleteRequest {
            name: "root".into(),
        });
        assert_eq!(apply(&e, &a, del), Err(StoreError::InvalidAuthMgmt));
        let del = Op::AuthRoleDelete(pb::AuthRoleDeleteRequest {
            role: "root".into(),
        });
        assert_eq!(apply(&e, &a, del), Err(StoreError::InvalidAuthMgmt));
        let rev = Op::AuthUserRevokeRole(pb::AuthUserRevokeRoleRequest {
            name: "root".into(),
            role: "root".into(),
        });
        assert_eq!(apply(&e, &a, rev), Err(StoreError::InvalidAuthMgmt));
    }

    #[test]
    fn tokens_die_with_the_user_and_with_auth() {
        let (e, a) = store();
        setup(&e, &a);
        let (_, rev) = a.password_hash("u").expect("hash");
        let t = a.assign_token("u", rev).expect("assign").expect("token");
        assert_eq!(a.user_from_token(&t), Ok("u".to_string()));
        assert_eq!(a.assign_token("u", rev - 1), Ok(None));
        apply(
            &e,
            &a,
            Op::AuthUserDelete(pb::AuthUserDeleteRequest { name: "u".into() }),
        )
        .expect("delete");
        assert_eq!(a.user_from_token(&t), Err(StoreError::InvalidAuthToken));
        let (_, rev) = a.password_hash("root").expect("hash");
        let t = a.assign_token("root", rev).expect("assign").expect("token");
        apply(&e, &a, Op::AuthDisable(Default::default())).expect("disable");
        assert_eq!(a.user_from_token(&t), Err(StoreError::InvalidAuthToken));
    }

    #[test]
    fn passwords_verify() {
        let (_, a) = store();
        a.set_bcrypt_cost(4);
        let h = a.hash_password("pw").expect("hash");
        assert!(verify_password("pw", &h));
        assert!(!verify_password("nope", &h));
        assert!(!verify_password("", ""));
    }
}
