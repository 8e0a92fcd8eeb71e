//! The store's one error type, and — in exactly one place, [`StoreError::to_status`] — its
//! mapping to the gRPC code and message etcd uses. Clients (etcdctl, clientv3, kube's
//! storage layer) match on those strings, so they are copied from etcd's `rpctypes`
//! verbatim and must never be reworded.

use crate::engine::EngineError;

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The requested revision was compacted away.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is newer than the store's current revision.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    /// A request carried an empty key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value` or `ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` together with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A txn with more operations than allowed (128 by default).
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A txn writes the same key twice.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// The request is larger than `--max-request-bytes`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// The lease does not exist (never granted, revoked or expired).
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease with the client-chosen ID exists already.
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    /// The requested TTL exceeds the maximum lease TTL.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// The NOSPACE alarm is raised: the backend exceeded its quota.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// The caller lacks the permission for this key range or operation.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// Auth cannot be enabled without a root user.
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    /// Auth cannot be enabled while root lacks the root role.
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    /// The user exists already.
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    /// An empty user name.
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    /// No such user.
    #[error("etcdserver: user name not found")]
    UserNotFound,
    /// The role exists already.
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    /// No such role.
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    /// An empty role name.
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// Wrong user name or password.
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// RoleGrantPermission without a permission.
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    /// Authenticate as a user created with `--no-password`. etcd has no gRPC mapping
    /// for it, so it reaches clients as code Unknown with the auth package's message.
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    /// Revoking a permission the role does not have.
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    /// Revoking a role the user does not have.
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    /// The token is unknown or expired.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// Changing root's root role while auth is on.
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// Authenticate while auth is off.
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// The auth store changed between the permission check and the apply.
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// No such cluster member.
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// A member with the new member's id exists (etcd derives it from the peer URLs and
    /// the second they were added at).
    #[error("etcdserver: member ID already exist")]
    MemberExist,
    /// The peer URL is used by another member.
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    /// `MoveLeader` to a member that is not a voting member of the cluster.
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// A membership change that would leave the cluster without a started quorum
    /// (removing the only member).
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    /// Promoting a member that is already a voter.
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    /// Promoting a learner whose log lags too far behind the leader's (etcd: less than
    /// 90% of the leader's).
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// Adding a learner while the cluster already has the most etcd allows (one).
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    /// A member change with peer URLs that are not `scheme://host:port` URLs.
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    /// A request only the leader serves (MoveLeader) reached another member.
    #[error("etcdserver: not leader")]
    NotLeader,
    /// A learner serves only serializable reads and Status.
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    /// This member was removed from the cluster and stops (etcd exits with this).
    #[error("the member has been permanently removed from the cluster")]
    MemberRemoved,
    /// No leader is known: the client should try another member.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// A write waited on a leader that has since been replaced: it may or may not have
    /// taken effect. etcd answers this (after its full request timeout) when the leader
    /// changed during the proposal; its "leader changed", by contrast, promises nothing
    /// was done (clients retry on it), so it must never be used for a write.
    #[error("etcdserver: request timed out, possibly due to previous leader failure")]
    TimeoutDueToLeaderFail,
    /// The member is shutting down.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// A proposal did not complete in time.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// A malformed request that etcd rejects before it reaches the store.
    #[error("{0}")]
    InvalidArgument(String),
    /// A feature this member does not support.
    #[error("etcdserver: not capable")]
    NotCapable,
    /// The storage engine failed; not the client's fault.
    #[error("etcdserver: {0}")]
    Engine(String),
}

impl From<EngineError> for StoreError {
    fn from(e: EngineError) -> Self {
        StoreError::Engine(e.0)
    }
}

impl From<prost::DecodeError> for StoreError {
    fn from(e: prost::DecodeError) -> Self {
        StoreError::Engine(format!("corrupt record: {e}"))
    }
}

impl StoreError {
    /// The gRPC status etcd answers with for this error.
    pub fn to_status(&self) -> tonic::Status {
        use tonic::Code::*;
        use StoreError as E;
        let code = match self {
            E::Compacted | E::FutureRev | E::LeaseTtlTooLarge => OutOfRange,
            E::EmptyKey
            | E::KeyNotFound
            | E::ValueProvided
            | E::LeaseProvided
            | E::TooManyOps
            | E::DuplicateKey
            | E::RequestTooLarge
            | E::UserEmpty
            | E::RoleEmpty
            | E::AuthFailed
            | E::PermissionNotGiven
            | E::InvalidAuthMgmt
            | E::AuthOldRevision
            | E::MemberBadUrls
            | E::InvalidArgument(_) => InvalidArgument,
            E::LeaseNotFound | E::MemberNotFound => NotFound,
            E::LeaseExist
            | E::RootUserNotExist
            | E::RootRoleNotExist
            | E::UserAlreadyExist
            | E::UserNotFound
            | E::RoleAlreadyExist
            | E::RoleNotFound
            | E::PermissionNotGranted
            | E::RoleNotGranted
            | E::AuthNotEnabled
            | E::PeerUrlExist
            | E::MemberExist
            | E::BadLeaderTransferee
            | E::NotEnoughStartedMembers
            | E::MemberNotLearner
            | E::LearnerNotReady
            | E::TooManyLearners
            | E::NotLeader
            | E::NotSupportedForLearner => FailedPrecondition,
            E::NoPasswordUser => Unknown,
            E::NoSpace => ResourceExhausted,
            E::PermissionDenied => PermissionDenied,
            E::InvalidAuthToken => Unauthenticated,
            E::NoLeader
            | E::TimeoutDueToLeaderFail
            | E::Stopped
            | E::Timeout
            | E::NotCapable
            | E::MemberRemoved => Unavailable,
            E::Engine(_) => Internal,
        };
        tonic::Status::new(code, self.to_string())
    }
}

impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> Self {
        e.to_status()
    }
}

/// Shorthand for store results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
