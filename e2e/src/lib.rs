//! The end-to-end harness: real Kubernetes code on loopback, our real binaries, and a node
//! stand-in that plays the kubelet.
//!
//! What is real: etcd, kube-apiserver (RBAC, admission, CRD validation), kube-controller-manager
//! (Job, Deployment, ReplicaSet, garbage-collector, namespace and ServiceAccount controllers),
//! helm, the chart, the S3 protocol (s3s-fs, behind a [`proxy`] a test can slow down or cut), and the operator, trainer and inference binaries.
//! What is stood in: the kubelet and the container runtime ([`node`]), which run a Pod's
//! container as a local process of the matching binary and report its status like a kubelet.
//!
//! Every process is a child of the test and dies with it ([`process`]); logs land in
//! `target/e2e/<test>/`.

pub mod cluster;
pub mod install;
pub mod node;
mod node_env;
pub mod paths;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod store;
pub mod wait;
pub mod world;

pub use cluster::ControlPlane;
pub use node::Node;
pub use store::S3Store;
