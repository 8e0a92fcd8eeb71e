//! The Auth service: users, roles, permissions and tokens. Changes are proposed to the
//! apply path after the caller's admin permission is checked (etcd checks the same at
//! apply); reads answer from the in-memory auth state. bcrypt (hashing on user add and
//! password change, verifying on Authenticate) runs on the blocking pool here, never
//! on the applier.

use std::sync::Arc;

use capstan_proto::etcdserverpb as pb;
use capstan_proto::etcdserverpb::auth_server::Auth;
use tonic::{Request, Response, Status};

use super::kv::unexpected;
use super::EtcdServer;
use crate::apply::{ApplyResponse, Op};
use crate::auth::verify_password;
use crate::error::{Result, StoreError};

/// See the module documentation.
pub struct AuthService {
    pub srv: Arc<EtcdServer>,
}

type Reply<T> = std::result::Result<Response<T>, Status>;

impl AuthService {
    /// Fails unless the caller may manage auth (always true while auth is off).
    fn admin<T>(&self, req: &Request<T>) -> Result<()> {
        let user = self.srv.auth_user(req)?;
        self.srv.sm.auth.check_admin(user.as_deref())
    }

    /// Proposes an auth change and returns the header of its response.
    async fn change(&self, op: Op) -> Result<Option<pb::ResponseHeader>, Status> {
        match self.srv.propose(op).await? {
            ApplyResponse::Done { revision } => Ok(Some(self.srv.header(revision))),
            other => Err(unexpected(other)),
        }
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(self.srv.header(self.srv.current_rev()))
    }

    async fn hash(&self, password: String) -> Result<String> {
        let srv = self.srv.clone();
        tokio::task::spawn_blocking(move || srv.sm.auth.hash_password(&password))
            .await
            .map_err(|e| StoreError::Engine(format!("password hashing task: {e}")))?
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<pb::AuthEnableRequest>,
    ) -> Reply<pb::AuthEnableResponse> {
        self.admin(&req)?;
        let header = self.change(Op::AuthEnable(req.into_inner())).await?;
        Ok(Response::new(pb::AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        req: Request<pb::AuthDisableRequest>,
    ) -> Reply<pb::AuthDisableResponse> {
        self.admin(&req)?;
        let header = self.change(Op::AuthDisable(req.into_inner())).await?;
        Ok(Response::new(pb::AuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        req: Request<pb::AuthStatusRequest>,
    ) -> Reply<pb::AuthStatusResponse> {
        self.admin(&req)?;
        let auth = &self.srv.sm.auth;
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.header(),
            enabled: auth.is_enabled(),
            auth_revision: auth.revision(),
        }))
    }

    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Reply<pb::AuthenticateResponse> {
        let r = req.into_inner();
        let auth = &self.srv.sm.auth;
        // Verified against the hash as of one auth revision; if the store changed while
        // bcrypt ran (say, the password), check again rather than issue a stale token.
        loop {
            let (hash, checked) = auth.password_hash(&r.name)?;
            let password = r.password.clone();
            let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
                .await
                .map_err(|e| StoreError::Engine(format!("password check task: {e}")))?;
            if !ok {
                tracing::info!(user = %r.name, "invalid password");
                return Err(StoreError::AuthFailed.into());
            }
            if let Some(token) = auth.assign_token(&r.name, checked)? {
                return Ok(Response::new(pb::AuthenticateResponse {
                    header: self.header(),
                    token,
                }));
            }
        }
    }

    async fn user_add(
        &self,
        req: Request<pb::AuthUserAddRequest>,
    ) -> Reply<pb::AuthUserAddResponse> {
        self.admin(&req)?;
        let mut r = req.into_inner();
        if !r.options.as_ref().is_some_and(|o| o.no_password) {
            r.hashed_password = self.hash(std::mem::take(&mut r.password)).await?;
        }
        // The plain password never reaches the log.
        r.password.clear();
        let header = self.change(Op::AuthUserAdd(r)).await?;
        Ok(Response::new(pb::AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        req: Request<pb::AuthUserGetRequest>,
    ) -> Reply<pb::AuthUserGetResponse> {
        let user = self.srv.auth_user(&req)?;
        let r = req.into_inner();
        // Any user may look at themselves.
        if let Err(e) = self.srv.sm.auth.check_admin(user.as_deref()) {
            if user.as_deref() != Some(r.name.as_str()) {
                return Err(e.into());
            }
        }
        let roles = self.srv.sm.auth.user_get(&r.name)?;
        Ok(Response::new(pb::AuthUserGetResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn user_list(
        &self,
        req: Request<pb::AuthUserListRequest>,
    ) -> Reply<pb::AuthUserListResponse> {
        self.admin(&req)?;
        let users = self.srv.sm.auth.user_list();
        Ok(Response::new(pb::AuthUserListResponse {
            header: self.header(),
            users,
        }))
    }

    async fn user_delete(
        &self,
        req: Request<pb::AuthUserDeleteRequest>,
    ) -> Reply<pb::AuthUserDeleteResponse> {
        self.admin(&req)?;
        let header = self.change(Op::AuthUserDelete(req.into_inner())).await?;
        Ok(Response::new(pb::AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        req: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Reply<pb::AuthUserChangePasswordResponse> {
        self.admin(&req)?;
        let mut r = req.into_inner();
        r.hashed_password = self.hash(std::mem::take(&mut r.password)).await?;
        let header = self.change(Op::AuthUserChangePassword(r)).await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        req: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Reply<pb::AuthUserGrantRoleResponse> {
        self.admin(&req)?;
        let header = self.change(Op::AuthUserGrantRole(req.into_inner())).await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Reply<pb::AuthUserRevokeRoleResponse> {
        self.admin(&req)?;
        let header = self
            .change(Op::AuthUserRevokeRole(req.into_inner()))
            .await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        req: Request<pb::AuthRoleAddRequest>,
    ) -> Reply<pb::AuthRoleAddResponse> {
        self.admin(&req)?;
        let header = self.change(Op::AuthRoleAdd(req.into_inner())).await?;
        Ok(Response::new(pb::AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        req: Request<pb::AuthRoleGetRequest>,
    ) -> Reply<pb::AuthRoleGetResponse> {
        let user = self.srv.auth_user(&req)?;
        let r = req.into_inner();
        let auth = &self.srv.sm.auth;
        // Any user may look at the roles they hold.
        if let Err(e) = auth.check_admin(user.as_deref()) {
            if !user.as_deref().is_some_and(|u| auth.has_role(u, &r.role)) {
                return Err(e.into());
            }
        }
        let perm = auth.role_get(&r.role)?;
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: self.header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        req: Request<pb::AuthRoleListRequest>,
    ) -> Reply<pb::AuthRoleListResponse> {
        self.admin(&req)?;
        let roles = self.srv.sm.auth.role_list();
        Ok(Response::new(pb::AuthRoleListResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        req: Request<pb::AuthRoleDeleteRequest>,
    ) -> Reply<pb::AuthRoleDeleteResponse> {
        self.admin(&req)?;
        let header = self.change(Op::AuthRoleDelete(req.into_inner())).await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Reply<pb::AuthRoleGrantPermissionResponse> {
        self.admin(&req)?;
        let header = self
            .change(Op::AuthRoleGrantPermission(req.into_inner()))
            .await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse {
            header,
        }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Reply<pb::AuthRoleRevokePermissionResponse> {
        self.admin(&req)?;
        let header = self
            .change(Op::AuthRoleRevokePermission(req.into_inner()))
            .await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse {
            header,
        }))
    }
}
