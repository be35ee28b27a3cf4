//! SimpsonModels the operator cannot read. The CRD schema leaves some Kubernetes objects open
//! (a pod override's `volumes`, `affinity`), and an object written by a newer version may carry
//! values this one does not know; the API server stores such an object, but it does not
//! deserialize. kube-runtime's watcher would then fail its whole list (kube-rs#774) and stop
//! every model in scope. The controller watches [`DeserializeGuard`]s instead: a readable model
//! is reconciled as usual, an unreadable one is reported on its own status and in a Warning
//! event, and left alone until it is edited.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use super::conditions::{self, Concern, init_concerns, summarize};
use super::{Context, Error, error_policy, reconcile, set_condition};
use crate::crd::{Phase, SimpsonModel};

/// The `SpecInvalid` (and `Degraded`) reason of a model whose spec the operator cannot read.
pub const INVALID_SPEC: &str = "InvalidSpec";

/// What the controller runs: [`reconcile`] for a model it can read, [`report_invalid`] for one
/// it cannot.
pub async fn reconcile_guarded(
    obj: Arc<DeserializeGuard<SimpsonModel>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    match &obj.0 {
        Ok(sm) => reconcile(Arc::new(sm.clone()), ctx).await,
        Err(invalid) => report_invalid(&obj, invalid, &ctx).await,
    }
}

/// [`error_policy`] for a model it can read; an unreadable one failed only to write its
/// report, and is retried like any failed pass.
pub fn error_policy_guarded(
    obj: Arc<DeserializeGuard<SimpsonModel>>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    match &obj.0 {
        Ok(sm) => error_policy(Arc::new(sm.clone()), err, ctx),
        Err(invalid) => {
            let n = super::count_failure(&ctx, key(invalid));
            let retry_in = super::backoff(n);
            warn!(model = %key(invalid), error = %err, attempt = n, ?retry_in, "cannot report an unreadable model");
            Action::requeue(retry_in)
        }
    }
}

/// Marks the model `SpecInvalid=True` (and so `Degraded=InvalidSpec`) with the reason it cannot
/// be read, once per distinct reason (a Warning event then), and waits for the next edit:
/// nothing it does can be right while the operator cannot read what the model asks for. The
/// other concerns keep what they said.
async fn report_invalid(
    obj: &DeserializeGuard<SimpsonModel>,
    invalid: &InvalidObject,
    ctx: &Context,
) -> Result<Action, Error> {
    let message = invalid_message(invalid);
    warn!(model = %key(invalid), %message, "skipping a SimpsonModel the operator cannot read");
    let (Some(ns), name) = (invalid.metadata.namespace.as_deref(), obj.name_any()) else {
        return Ok(Action::await_change());
    };
    let models: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        ns,
        &ApiResource::erase::<SimpsonModel>(&()),
    );
    let current = models.get(&name).await.map_err(Error::GetModel)?;
    let old = status_conditions(&current);
    let (generation, now) = (invalid.metadata.generation, (ctx.clock)());
    let mut conditions = old.clone();
    init_concerns(&mut conditions, generation, now);
    let announced = conditions::failing(&conditions, Concern::SpecInvalid, Some(INVALID_SPEC))
        && conditions
            .iter()
            .any(|c| c.type_ == Concern::SpecInvalid.type_() && c.message == message);
    set_condition(
        &mut conditions,
        Concern::SpecInvalid.type_(),
        true,
        INVALID_SPEC,
        &message,
        generation,
        now,
    );
    summarize(&mut conditions, generation, now);
    ctx.failures().remove(&key(invalid));
    if conditions == old {
        return Ok(Action::await_change());
    }
    let patch = json!({"status": {"phase": Phase::Degraded, "conditions": conditions}});
    models
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::PatchStatus)?;
    if announced {
        return Ok(Action::await_change());
    }
    let event = Event {
        type_: EventType::Warning,
        reason: INVALID_SPEC.into(),
        note: Some(message),
        action: "Read".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        warn!(model = %key(invalid), error = %e, "cannot publish event");
    }
    Ok(Action::await_change())
}

/// What a user reads in the condition and the event: the field serde choked on, and where to
/// look for the right shape.
fn invalid_message(invalid: &InvalidObject) -> String {
    format!(
        "the operator cannot read this SimpsonModel ({}); it is skipped until it is fixed \
         (kubectl explain simpsonmodel.spec)",
        invalid.error
    )
}

/// The conditions already in the stored status, as far as they can be read.
fn status_conditions(obj: &DynamicObject) -> Vec<Condition> {
    obj.data
        .get("status")
        .and_then(|s| s.get("conditions"))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default()
}

fn key(invalid: &InvalidObject) -> String {
    format!(
        "{}/{}",
        invalid.metadata.namespace.as_deref().unwrap_or_default(),
        invalid.metadata.name.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(volumes: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "face2simpson.io/v1alpha1",
            "kind": "SimpsonModel",
            "metadata": {"name": "broken", "namespace": "ns", "generation": 3},
            "spec": {
                "storageUri": "s3://b/p",
                "training": {"image": "t:1", "podOverrides": {"volumes": volumes}},
                "inference": {"image": "i:1"},
            },
        })
    }

    #[test]
    fn a_model_with_a_malformed_override_is_guarded_not_fatal() {
        let good = json!([{"name": "v", "emptyDir": {}}]);
        let guard: DeserializeGuard<SimpsonModel> = serde_json::from_value(model(good)).unwrap();
        assert!(guard.0.is_ok(), "{:?}", guard.0);

        // The schema lets any object through as a volume; the operator's type does not.
        let bad = json!([{"name": "v", "emptyDir": "not an object"}]);
        let guard: DeserializeGuard<SimpsonModel> = serde_json::from_value(model(bad)).unwrap();
        let invalid = guard.0.as_ref().unwrap_err();
        assert_eq!(invalid.metadata.name.as_deref(), Some("broken"));
        let message = invalid_message(invalid);
        assert!(
            message.contains("cannot read this SimpsonModel"),
            "{message}"
        );
        assert_eq!(key(invalid), "ns/broken");
    }

    #[test]
    fn conditions_are_read_from_the_raw_status_or_start_empty() {
        let with = |status: serde_json::Value| -> DynamicObject {
            serde_json::from_value(json!({
                "apiVersion": "face2simpson.io/v1alpha1", "kind": "SimpsonModel",
                "metadata": {"name": "m"}, "status": status,
            }))
            .unwrap()
        };
        let conds = status_conditions(&with(json!({"conditions": [{
            "type": "Ready", "status": "True", "reason": "Serving", "message": "",
            "lastTransitionTime": "2026-12-05T00:00:00Z",
        }]})));
        assert_eq!(conds.len(), 1);
        assert!(status_conditions(&with(json!({"conditions": "garbage"}))).is_empty());
    }
}
