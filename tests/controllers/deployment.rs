//! The Deployment controller, observed through `kubectl rollout`.
