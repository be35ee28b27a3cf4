//! face2simpson operator: keeps a Simpsons face classifier fresh without a human.
//!
//! [`crd`] defines the `SimpsonModel` resource, [`schedule`] decides when a run is due,
//! [`builders`] turns a resource into the Job, Deployment and Service it owns,
//! [`controller`] ties them together against the API server and object storage, and
//! [`leader`] makes sure only one replica does so at a time, and [`watches`] lets one
//! controller watch several namespaces. The promotion rule itself lives
//! in the shared `artifacts` crate so the operator and the trainer's cluster-free mode cannot
//! disagree.

pub mod admin;
pub mod builders;
pub mod controller;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod schedule;
pub mod watches;

pub use controller::{
    Context, Error, INVALID_SPEC, error_policy, error_policy_guarded, reconcile, reconcile_guarded,
};
pub use crd::{SimpsonModel, SimpsonModelSpec, SimpsonModelStatus};
