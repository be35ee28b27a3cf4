//! The pure builders: every field the cluster relies on, without a client.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use face2simpson_operator::builders::{
    MODEL_UID_LABEL, PodSelection, attempt_of, inference_deployment, inference_pdb,
    inference_service, inference_service_selecting, is_gang, legacy_replica_sets_selector,
    manual_run_id, rendezvous_service, scheduled_run_id, template_hash_without_model, training_job,
    training_job_attempt, training_job_name,
};
use k8s_openapi::api::core::v1::{Container, PodSpec, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

fn assert_hardened(pod: &PodSpec, container: &Container) {
    assert_eq!(
        pod.automount_service_account_token,
        Some(false),
        "no API token in the pods unless the model asks"
    );
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    let sc = container.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    // A read-only root still needs somewhere to write.
    assert_eq!(
        container.volume_mounts.as_ref().unwrap()[0].mount_path,
        "/tmp"
    );
}

#[test]
fn training_job_runs_the_trainer_with_the_spec() {
    let mut sm = model();
    sm.spec
        .training
        .node_selector
        .insert("pool".into(), "gpu".into());
    sm.spec.training.tolerations.push(Toleration {
        key: Some("nvidia.com/gpu".into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    });
    sm.spec.training.epochs = 7;
    let champ = champion("homer-20261101-000000", 0.8);
    let job = training_job(&sm, "homer-20261104-000000", Some(&champ)).unwrap();
    assert_eq!(job.metadata.name.as_deref(), Some("homer-20261104-000000"));
    assert_eq!(job.metadata.namespace.as_deref(), Some(NS));
    let labels = job.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["face2simpson.io/model"], "homer");
    assert_eq!(labels["face2simpson.io/run-id"], "homer-20261104-000000");
    assert_eq!(
        labels["app.kubernetes.io/managed-by"],
        "face2simpson-operator"
    );
    let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("SimpsonModel", "homer", Some(true))
    );
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.backoff_limit, Some(1));
    assert_eq!(spec.active_deadline_seconds, Some(21600));
    assert_eq!(
        spec.ttl_seconds_after_finished, None,
        "Jobs must outlive operator downtime"
    );
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.node_selector.as_ref().unwrap()["pool"], "gpu");
    assert_eq!(
        pod.tolerations.as_ref().unwrap()[0].key.as_deref(),
        Some("nvidia.com/gpu")
    );
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("ghcr.io/face2simpson/trainer:1"));
    assert_eq!(
        c.command.as_deref(),
        Some(&["face2simpson-trainer".to_owned()][..])
    );
    let args = c.args.as_ref().unwrap().join(" ");
    assert_eq!(
        args,
        "train --storage s3://bucket/models --dataset datasets/current --run-id homer-20261104-000000 \
         --runs-prefix runs/simpsons/homer --owner simpsons/homer \
         --champion homer-20261101-000000 \
         --champion-uri s3://bucket/models/runs/homer-20261101-000000/model.safetensors \
         --image-size 224 --epochs 7 --batch-size 32 --lr 0.001 \
         --label-smoothing 0.1 --dropout 0.2 --patience 3 --device cuda"
    );
    assert_eq!(
        c.env_from.as_ref().unwrap()[0]
            .secret_ref
            .as_ref()
            .unwrap()
            .name,
        "store-creds"
    );
    assert_eq!(
        c.resources.as_ref().unwrap().limits.as_ref().unwrap()["nvidia.com/gpu"].0,
        "1"
    );
    assert_hardened(pod, c);
}

/// Item 11: evictions do not use up the backoff limit; the trainer's permanent failures
/// (exit codes 2 configuration, 3 dataset, 4 device) end the Job at once.
#[test]
fn training_job_has_a_pod_failure_policy() {
    let job = training_job(&model(), "r1", None).unwrap();
    let policy = job.spec.unwrap().pod_failure_policy.unwrap();
    let ignore = &policy.rules[0];
    assert_eq!(ignore.action, "Ignore");
    assert_eq!(
        ignore.on_pod_conditions.as_ref().unwrap()[0].type_,
        "DisruptionTarget"
    );
    let fail = &policy.rules[1];
    assert_eq!(fail.action, "FailJob");
    let codes = fail.on_exit_codes.as_ref().unwrap();
    assert_eq!(
        (
            codes.container_name.as_deref(),
            codes.operator.as_str(),
            codes.values.as_slice()
        ),
        (Some("trainer"), "In", &[2, 4][..])
    );
}

/// Item 12: default requests, GPUs from spec.training.gpus, and --device following them.
#[test]
fn training_resources_and_device_follow_the_gpus() {
    let container = |sm: &face2simpson_operator::SimpsonModel| {
        training_job(sm, "r1", None)
            .unwrap()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .containers
            .remove(0)
    };
    let device = |c: &Container| {
        let args = c.args.as_ref().unwrap();
        let i = args.iter().position(|a| a == "--device").unwrap();
        args[i + 1].clone()
    };
    let mut sm = model();
    let c = container(&sm);
    let r = c.resources.as_ref().unwrap();
    assert_eq!(r.requests.as_ref().unwrap()["cpu"].0, "2");
    assert_eq!(r.requests.as_ref().unwrap()["memory"].0, "8Gi");
    assert_eq!(r.limits.as_ref().unwrap()["nvidia.com/gpu"].0, "1");
    assert_eq!(device(&c), "cuda");

    sm.spec.training.gpus = 2;
    sm.spec.training.resources.requests = Some(
        [("cpu".to_owned(), Quantity("8".into()))]
            .into_iter()
            .collect(),
    );
    let c = container(&sm);
    let r = c.resources.as_ref().unwrap();
    assert_eq!(r.requests.as_ref().unwrap()["cpu"].0, "8", "the spec wins");
    assert_eq!(r.requests.as_ref().unwrap()["memory"].0, "8Gi");
    assert_eq!(r.limits.as_ref().unwrap()["nvidia.com/gpu"].0, "2");

    sm.spec.training.gpus = 0;
    let c = container(&sm);
    assert!(c.resources.as_ref().unwrap().limits.is_none());
    assert_eq!(device(&c), "cpu", "no GPU: train on the CPU on purpose");

    // A GPU named in the limits by hand counts too.
    sm.spec.training.resources.limits = Some(
        [("nvidia.com/gpu".to_owned(), Quantity("1".into()))]
            .into_iter()
            .collect(),
    );
    assert_eq!(device(&container(&sm)), "cuda");
}

#[test]
fn inference_gets_default_requests() {
    let d = inference_deployment(&model(), &champion("r1", 0.8)).unwrap();
    let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
    let requests = c.resources.as_ref().unwrap().requests.clone().unwrap();
    assert_eq!(
        (requests["cpu"].0.as_str(), requests["memory"].0.as_str()),
        ("250m", "512Mi")
    );
}

/// `inference.modelName` is the name the pods answer to on the Open Inference Protocol routes
/// (MODEL_NAME); unset, the server's own default applies and no variable is set.
#[test]
fn inference_is_told_its_open_inference_protocol_name() {
    let value = |sm: &face2simpson_operator::crd::SimpsonModel| {
        let d = inference_deployment(sm, &champion("r1", 0.8)).unwrap();
        let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
        c.env
            .iter()
            .flatten()
            .find(|v| v.name == "MODEL_NAME")
            .map(|v| v.value.clone().unwrap())
    };
    assert_eq!(value(&model()), None);
    let mut sm = model();
    sm.spec.inference.model_name = Some("simpsons-homer".into());
    assert_eq!(value(&sm).as_deref(), Some("simpsons-homer"));
}

/// The server sizes its pools from the pod's CPU request and memory limit (the node's core
/// count is not the pod's): both come from the downward API, the memory request standing in
/// when no limit is set.
#[test]
fn inference_is_told_its_cpu_request_and_memory_limit() {
    let source = |c: &Container, name: &str| {
        let var = c.env.iter().flatten().find(|v| v.name == name).unwrap();
        let r = var
            .value_from
            .as_ref()
            .unwrap()
            .resource_field_ref
            .clone()
            .unwrap();
        (r.container_name.unwrap(), r.resource, r.divisor.unwrap().0)
    };
    let d = inference_deployment(&model(), &champion("r1", 0.8)).unwrap();
    let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(c.name, "inference");
    assert_eq!(
        source(c, "CPU_REQUEST"),
        ("inference".into(), "requests.cpu".into(), "1m".into())
    );
    assert_eq!(
        source(c, "MEMORY_LIMIT"),
        ("inference".into(), "requests.memory".into(), "1".into())
    );

    let mut sm = model();
    sm.spec.inference.resources = Some(k8s_openapi::api::core::v1::ResourceRequirements {
        limits: Some([("memory".to_owned(), Quantity("1Gi".into()))].into()),
        ..Default::default()
    });
    let d = inference_deployment(&sm, &champion("r1", 0.8)).unwrap();
    let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(source(c, "MEMORY_LIMIT").1, "limits.memory");

    // The validator is sized like the pods whose latency it stands for.
    use face2simpson_operator::builders::{ValidationTarget, validation_job};
    let target = ValidationTarget {
        run_id: "r2",
        model_uri: "s3://b/runs/simpsons/homer/r2/model.safetensors",
        out_uri: "s3://b/runs/simpsons/homer/r2/validation.json",
        champion_uri: None,
    };
    let job = validation_job(&sm, &target).unwrap();
    let c = &job.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(
        source(c, "CPU_REQUEST"),
        ("validator".into(), "requests.cpu".into(), "1m".into())
    );
    assert_eq!(source(c, "MEMORY_LIMIT").1, "limits.memory");
}

#[test]
fn training_job_without_secret_or_champion() {
    let mut sm = model();
    sm.spec.storage_secret_ref = None;
    let job = training_job(&sm, "r1", None).unwrap();
    let c = &job.spec.unwrap().template.spec.unwrap().containers[0];
    assert!(c.env_from.is_none());
    assert!(!c.args.as_ref().unwrap().contains(&"--champion".to_owned()));
}

#[test]
fn builders_refuse_an_object_without_uid() {
    let mut sm = model();
    sm.metadata.uid = None;
    assert!(
        training_job(&sm, "r1", None)
            .unwrap_err()
            .to_string()
            .contains("uid")
    );
}

#[test]
fn deployment_serves_the_champion_with_probes() {
    let mut sm = model();
    sm.spec.inference.replicas = 3;
    sm.spec.inference.port = 8000;
    let d = inference_deployment(&sm, &champion("homer-20261101-000000", 0.8)).unwrap();
    assert_eq!(d.metadata.name.as_deref(), Some("homer-inference"));
    assert_eq!(
        d.metadata.owner_references.as_ref().unwrap()[0].kind,
        "SimpsonModel"
    );
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(
        spec.revision_history_limit,
        Some(3),
        "few old ReplicaSets per model"
    );
    let selector = spec.selector.match_labels.as_ref().unwrap();
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    for (k, v) in selector {
        assert_eq!(
            template_labels.get(k),
            Some(v),
            "the selector must match the pods"
        );
    }
    let rolling = spec
        .strategy
        .as_ref()
        .unwrap()
        .rolling_update
        .as_ref()
        .unwrap();
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
    let pod = spec.template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("ghcr.io/face2simpson/inference:1"));
    let env: Vec<(String, String)> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    // Each pod names its report files after itself.
    let pod_name = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "POD_NAME");
    assert_eq!(
        pod_name
            .and_then(|e| e.value_from.as_ref())
            .and_then(|f| f.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("metadata.name")
    );
    assert!(
        !env.iter().any(|(k, _)| k == "SHADOW_URI"),
        "no shadow stage, no polling"
    );
    assert!(env.contains(&(
        "MODEL_URI".into(),
        "s3://bucket/models/runs/homer-20261101-000000/model.safetensors".into()
    )));
    assert!(env.contains(&("LISTEN_ADDR".into(), "0.0.0.0:8000".into())));
    assert_eq!(
        c.env_from.as_ref().unwrap()[0]
            .secret_ref
            .as_ref()
            .unwrap()
            .name,
        "store-creds"
    );
    assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 8000);
    let ready = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(
        (ready.path.as_deref(), &ready.port),
        (Some("/readyz"), &IntOrString::String("http".into()))
    );
    let live = c
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(live.path.as_deref(), Some("/healthz"));
    assert_hardened(pod, c);
}

#[test]
fn a_new_champion_changes_the_pod_template() {
    let sm = model();
    let a = inference_deployment(&sm, &champion("r1", 0.8))
        .unwrap()
        .spec
        .unwrap()
        .template;
    let b = inference_deployment(&sm, &champion("r2", 0.9))
        .unwrap()
        .spec
        .unwrap()
        .template;
    assert_ne!(a, b, "an unchanged template would not roll the pods");
    // ... but by the model alone: a stalled rollout of b is the model's fault.
    assert_eq!(
        template_hash_without_model(&a),
        template_hash_without_model(&b)
    );
    let mut changed = model();
    changed
        .spec
        .inference
        .pod_overrides
        .annotations
        .insert("team".into(), "simpsons".into());
    let c = inference_deployment(&changed, &champion("r2", 0.9))
        .unwrap()
        .spec
        .unwrap()
        .template;
    assert_ne!(
        template_hash_without_model(&b),
        template_hash_without_model(&c),
        "a spec change is not the model's"
    );
}

#[test]
fn service_exposes_the_port() {
    let mut sm = model();
    sm.spec.inference.service_type = face2simpson_operator::crd::ServiceType::LoadBalancer;
    let s = inference_service(&sm).unwrap();
    assert_eq!(s.metadata.name.as_deref(), Some("homer-inference"));
    let spec = s.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(spec.ports.as_ref().unwrap()[0].port, 8080);
    assert_eq!(
        spec.ports.as_ref().unwrap()[0].target_port,
        Some(IntOrString::String("http".into()))
    );
    assert_eq!(
        spec.selector.unwrap()["app.kubernetes.io/component"],
        "inference"
    );
}

#[test]
fn run_ids_are_deterministic_valid_names() {
    let slot = ts("2026-11-04T00:00:00Z");
    assert_eq!(scheduled_run_id("homer", slot), "homer-20261104-000000");
    assert_eq!(
        scheduled_run_id("homer", slot),
        scheduled_run_id("homer", slot)
    );
    assert_eq!(manual_run_id("homer", "a"), manual_run_id("homer", "a"));
    assert_ne!(manual_run_id("homer", "a"), manual_run_id("homer", "b"));
    let long = "x".repeat(80);
    for id in [
        scheduled_run_id(&long, slot),
        manual_run_id(&long, "2026-11-04"),
        scheduled_run_id("a-b-", slot),
    ] {
        artifacts::layout::validate_run_id(&id).unwrap();
        assert!(id.len() <= 63, "{id}");
    }
}

/// Item 13: pod overrides reach both workloads; the operator's own labels and env win.
#[test]
fn pod_overrides_reach_both_workloads() {
    use face2simpson_operator::crd::PodOverrides;
    let overrides: PodOverrides = serde_json::from_value(serde_json::json!({
        "serviceAccountName": "trainer-irsa",
        "labels": {"azure.workload.identity/use": "true", "app.kubernetes.io/component": "evil"},
        "annotations": {"team": "simpsons"},
        "nodeSelector": {"pool": "a100"},
        "tolerations": [{"key": "dedicated", "operator": "Exists"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
        "imagePullSecrets": [{"name": "registry"}],
        "priorityClassName": "batch-low",
        "runtimeClassName": "nvidia",
        "env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}, {"name": "HOME", "value": "/x"}],
        "volumes": [{"name": "cache", "emptyDir": {}}],
        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
    }))
    .unwrap();
    let mut sm = model();
    sm.spec.training.pod_overrides = overrides.clone();
    sm.spec.inference.pod_overrides = overrides;
    let job = training_job(&sm, "r1", None).unwrap();
    let d = inference_deployment(&sm, &champion("r1", 0.8)).unwrap();
    for template in [
        job.spec.unwrap().template,
        d.spec.as_ref().unwrap().template.clone(),
    ] {
        let meta = template.metadata.unwrap();
        let labels = meta.labels.unwrap();
        assert_eq!(labels["azure.workload.identity/use"], "true");
        assert_ne!(
            labels["app.kubernetes.io/component"], "evil",
            "selector labels stay"
        );
        assert_eq!(meta.annotations.unwrap()["team"], "simpsons");
        let pod = template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("trainer-irsa"));
        assert_eq!(pod.node_selector.as_ref().unwrap()["pool"], "a100");
        assert!(pod.tolerations.as_ref().unwrap()[0].key.as_deref() == Some("dedicated"));
        assert!(pod.affinity.is_some());
        assert_eq!(pod.image_pull_secrets.as_ref().unwrap()[0].name, "registry");
        assert_eq!(pod.priority_class_name.as_deref(), Some("batch-low"));
        assert_eq!(pod.runtime_class_name.as_deref(), Some("nvidia"));
        let volumes: Vec<&str> = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, ["tmp", "cache"]);
        let c = &pod.containers[0];
        let env = c.env.as_ref().unwrap();
        assert!(env.iter().any(|e| e.name == "HTTPS_PROXY"));
        let homes: Vec<_> = env.iter().filter(|e| e.name == "HOME").collect();
        assert_eq!(homes.len(), 1);
        assert_eq!(
            homes[0].value.as_deref(),
            Some("/tmp"),
            "the operator's HOME wins"
        );
        assert!(
            c.volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.mount_path == "/cache")
        );
        assert_hardened(&pod, c);
    }
}

/// Issue 17: a model that needs the API token in its pods asks for it; only then is it mounted.
#[test]
fn the_service_account_token_is_mounted_only_when_asked() {
    let mut sm = model();
    sm.spec
        .training
        .pod_overrides
        .automount_service_account_token = Some(true);
    let job = training_job(&sm, "r1", None).unwrap();
    let pod = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.automount_service_account_token, Some(true));
    let d = inference_deployment(&sm, &champion("r1", 0.8)).unwrap();
    let pod = d.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
}

/// Item 16: the served-path validation Job runs the inference image's `validate` with the
/// inference pods' resources, Secret, overrides and hardening; its memory limit is the
/// validator's memory budget; its name is deterministic and fits the 63-character limit.
#[test]
fn validation_job_runs_the_inference_image_with_the_run_and_the_budgets() {
    use face2simpson_operator::builders::{
        ValidationTarget, quantity_bytes, validation_job, validation_job_name,
    };
    let mut sm = model();
    sm.spec.promotion.validation.max_p95_milliseconds = Some(250.0);
    sm.spec.promotion.validation.min_agreement = 0.95;
    sm.spec.inference.resources = Some(k8s_openapi::api::core::v1::ResourceRequirements {
        limits: Some([("memory".to_owned(), Quantity("1Gi".into()))].into()),
        ..Default::default()
    });
    sm.spec.inference.pod_overrides.service_account_name = Some("store-reader".into());
    let target = ValidationTarget {
        run_id: "homer-20261104-000000",
        model_uri: "s3://b/runs/simpsons/homer/homer-20261104-000000/model.safetensors",
        out_uri: "s3://b/runs/simpsons/homer/homer-20261104-000000/validation.json",
        champion_uri: None,
    };
    let job = validation_job(&sm, &target).unwrap();
    assert_eq!(
        job.metadata.name.as_deref(),
        Some("homer-20261104-000000-validate")
    );
    let labels = job.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["app.kubernetes.io/component"], "validation");
    assert_eq!(labels["face2simpson.io/run-id"], "homer-20261104-000000");
    assert_eq!(labels["face2simpson.io/model"], NAME);
    let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.uid.as_str(), owner.controller), (UID, Some(true)));
    let spec = job.spec.as_ref().unwrap();
    let rules = &spec.pod_failure_policy.as_ref().unwrap().rules;
    assert_eq!(rules[0].action, "Ignore", "evictions are not failures");
    assert_eq!(rules[1].action, "FailJob");
    let codes = rules[1].on_exit_codes.as_ref().unwrap();
    assert_eq!(
        (codes.container_name.as_deref(), codes.values.as_slice()),
        (Some("validator"), &[1, 2][..]),
        "a verdict (1) and a configuration error (2) end the Job; 3 (store) is retried"
    );
    assert_eq!(spec.ttl_seconds_after_finished, None);
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.service_account_name.as_deref(), Some("store-reader"));
    let c = &pod.containers[0];
    assert_hardened(pod, c);
    assert_eq!(c.image.as_deref(), Some("ghcr.io/face2simpson/inference:1"));
    assert_eq!(
        c.command, None,
        "the image's entrypoint is the inference binary"
    );
    assert_eq!(c.args.as_deref(), Some(&["validate".to_owned()][..]));
    assert_eq!(
        c.env_from.as_ref().unwrap()[0]
            .secret_ref
            .as_ref()
            .unwrap()
            .name,
        "store-creds"
    );
    let env: std::collections::BTreeMap<_, _> = c
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
        .collect();
    assert_eq!(env["MODEL_URI"], target.model_uri);
    assert_eq!(env["VALIDATION_URI"], target.out_uri);
    assert_eq!(env["DATASET_URI"], "s3://bucket/models/datasets/current");
    assert_eq!(env["MIN_AGREEMENT"], "0.95");
    assert_eq!(env["MAX_P95_MS"], "250");
    assert_eq!(env["MAX_MEMORY_BYTES"], "1073741824");
    assert!(!env.contains_key("CHAMPION_URI"), "no champion yet");
    let with_champion = validation_job(
        &sm,
        &ValidationTarget {
            champion_uri: Some("s3://b/runs/x/model.safetensors"),
            ..target.clone()
        },
    )
    .unwrap();
    let c = &with_champion
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0];
    assert!(c.env.iter().flatten().any(|e| e.name == "CHAMPION_URI"
        && e.value.as_deref() == Some("s3://b/runs/x/model.safetensors")));

    // Long run ids are cut, kept apart by a hash, and stay within 63 characters.
    let long_a = format!("{}-manual-0000000a", "m".repeat(47));
    let long_b = format!("{}-manual-0000000b", "m".repeat(47));
    let (a, b) = (validation_job_name(&long_a), validation_job_name(&long_b));
    assert!(a.len() <= 63 && b.len() <= 63 && a != b, "{a} {b}");
    assert!(a.ends_with("-validate"));
    assert_eq!(validation_job_name(&long_a), a, "deterministic");

    for (q, bytes) in [
        ("512Mi", Some(536_870_912)),
        ("1G", Some(1_000_000_000)),
        ("1.5Gi", Some(1_610_612_736)),
        ("134217728", Some(134_217_728)),
        ("lots", None),
    ] {
        assert_eq!(quantity_bytes(q), bytes, "{q}");
    }
}

fn env_map(c: &Container) -> std::collections::BTreeMap<String, String> {
    c.env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect()
}

/// Issue 19 item 3: `workers: 4` is one Indexed Job of four ranks that find rank 0 through
/// the Job's headless Service; the Job retries no pod (the operator restarts the gang), keeps
/// its podFailurePolicy, and rank 0's success ends it.
#[test]
fn a_distributed_run_is_an_indexed_job_whose_rank_0_ends_it() {
    let mut sm = model();
    sm.spec.training.workers = 4;
    sm.spec.training.backoff_limit = 3;
    let job = training_job(&sm, SECOND, None).unwrap();
    assert!(is_gang(&job));
    assert_eq!(job.metadata.name.as_deref(), Some(SECOND));
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
    assert_eq!((spec.completions, spec.parallelism), (Some(4), Some(4)));
    assert_eq!(
        spec.backoff_limit,
        Some(0),
        "a failed rank fails the Job: the operator restarts the whole gang, not one pod"
    );
    let rules = &spec.success_policy.as_ref().unwrap().rules;
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].succeeded_indexes.as_deref(), Some("0"));
    assert_eq!(rules[0].succeeded_count, None);
    let policy = spec.pod_failure_policy.as_ref().unwrap();
    assert_eq!(
        (
            policy.rules[0].action.as_str(),
            policy.rules[1].action.as_str()
        ),
        ("Ignore", "FailJob"),
        "evictions ignored, permanent exit codes final, as for one rank"
    );
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.subdomain.as_deref(), Some(SECOND));
    let c = &pod.containers[0];
    let env = env_map(c);
    assert_eq!(env["WORKERS"], "4");
    assert_eq!(env["MASTER_ADDR"], format!("{SECOND}-0.{SECOND}"));
    assert_eq!(env["MASTER_PORT"], "29500");
    assert!(
        !env.contains_key("RANK"),
        "the rank is the pod's completion index, set by the Job controller"
    );
    let port = &c.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("rendezvous"), 29500)
    );
    assert_hardened(pod, c);

    // One rank: today's Job, untouched.
    let single = training_job(&model(), SECOND, None).unwrap();
    assert!(!is_gang(&single));
    let spec = single.spec.unwrap();
    assert_eq!(
        (spec.completion_mode, spec.completions, spec.success_policy),
        (None, None, None)
    );
    assert_eq!(spec.backoff_limit, Some(1));
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.subdomain, None);
    assert_eq!(pod.containers[0].ports, None);
    assert!(!env_map(&pod.containers[0]).contains_key("WORKERS"));
}

/// A gang restart is a new Job of the same run (the trainer resumes from the run's
/// checkpoints), named after its attempt; names leave room for the pods' hostnames.
#[test]
fn gang_restarts_are_new_jobs_of_the_same_run() {
    let mut sm = model();
    sm.spec.training.workers = 2;
    let job = training_job_attempt(&sm, SECOND, 2, None).unwrap();
    assert_eq!(
        job.metadata.name.as_deref(),
        Some("homer-20261104-000000-r2")
    );
    assert_eq!(attempt_of(&job), 2);
    assert_eq!(attempt_of(&training_job(&sm, SECOND, None).unwrap()), 0);
    assert_eq!(
        job.metadata.labels.as_ref().unwrap()["face2simpson.io/run-id"],
        SECOND
    );
    let args = job.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    let i = args.iter().position(|a| a == "--run-id").unwrap();
    assert_eq!(
        args[i + 1],
        SECOND,
        "the same run: its checkpoints are found"
    );

    // `<job>-<index>` is the pods' hostname, a DNS label: with ranks, a 63-character run id
    // is cut and hashed, and distinct ids stay distinct.
    let long = format!("{}-20261104-000000", "m".repeat(47));
    assert_eq!(long.len(), 63);
    assert_eq!(training_job_name(&long, 0, 1), long, "one rank: the run id");
    for (workers, attempt) in [(2, 0), (10, 0), (11, 1), (1000, 12)] {
        let name = training_job_name(&long, attempt, workers);
        let hostname = format!("{name}-{}", workers - 1);
        assert!(hostname.len() <= 63, "{hostname}");
        assert!(!name.ends_with('-') && !name.contains("--"), "{name}");
    }
    let other = format!("{}-20261104-000001", "m".repeat(47));
    assert_ne!(
        training_job_name(&long, 0, 2),
        training_job_name(&other, 0, 2)
    );
    assert_ne!(
        training_job_name(&long, 1, 2),
        training_job_name(&long, 2, 2)
    );
    assert_eq!(training_job_name("short", 3, 8), "short-r3");
}

/// The ranks find rank 0 as `<job>-0.<job>`: a headless Service named after the Job, owned by
/// it (it goes with it), selecting its pods, publishing them before they are ready.
#[test]
fn the_rendezvous_service_is_headless_and_goes_with_its_job() {
    let mut sm = model();
    sm.spec.training.workers = 2;
    let mut job = training_job(&sm, SECOND, None).unwrap();
    assert!(
        rendezvous_service(&job).is_err(),
        "needs the created Job's uid"
    );
    job.metadata.uid = Some("job-uid".into());
    let svc = rendezvous_service(&job).unwrap();
    assert_eq!(svc.metadata.name.as_deref(), Some(SECOND));
    assert_eq!(svc.metadata.namespace.as_deref(), Some(NS));
    let owner = &svc.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("Job", SECOND, "job-uid")
    );
    let labels = svc.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["face2simpson.io/model"], NAME);
    assert_eq!(labels["app.kubernetes.io/component"], "training");
    assert_eq!(
        labels["app.kubernetes.io/managed-by"], "face2simpson-operator",
        "in the operator's watch cache"
    );
    let spec = svc.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(spec.publish_not_ready_addresses, Some(true));
    assert_eq!(
        spec.selector.unwrap()["batch.kubernetes.io/job-name"],
        SECOND
    );
    assert_eq!(spec.ports.unwrap()[0].port, 29500);
}

/// Issue 19 item 4: with a queue the Job is Kueue's to start: created suspended with the
/// queue label; priorityClassName reaches the pods and wins over the pod overrides.
#[test]
fn a_queued_run_is_created_suspended_for_kueue() {
    let mut sm = model();
    sm.spec.training.queue_name = Some("gpu-queue".into());
    sm.spec.training.priority_class_name = Some("training-low".into());
    sm.spec.training.pod_overrides.priority_class_name = Some("override".into());
    let job = training_job(&sm, SECOND, None).unwrap();
    assert_eq!(
        job.metadata.labels.as_ref().unwrap()["kueue.x-k8s.io/queue-name"],
        "gpu-queue"
    );
    let spec = job.spec.unwrap();
    assert_eq!(spec.suspend, Some(true));
    let template = spec.template;
    assert!(
        !template
            .metadata
            .unwrap()
            .labels
            .unwrap()
            .contains_key("kueue.x-k8s.io/queue-name"),
        "Kueue reads the Job's label, not the pods'"
    );
    assert_eq!(
        template.spec.unwrap().priority_class_name.as_deref(),
        Some("training-low")
    );

    let plain = training_job(&model(), SECOND, None).unwrap();
    assert_eq!(plain.spec.unwrap().suspend, None, "no queue: runs at once");
    assert!(
        !plain
            .metadata
            .labels
            .unwrap()
            .contains_key("kueue.x-k8s.io/queue-name")
    );
}

/// Issue 17 item 3: every selector of the inference pods names the model's uid, which the pods
/// carry; a pod of another release (or of an earlier model of the same name) with the same
/// instance and component labels is selected by none of them.
#[test]
fn inference_selectors_name_the_model_uid() {
    use std::collections::BTreeMap;
    let mut sm = model();
    sm.spec.inference.autoscaling = Some(
        serde_json::from_value(serde_json::json!({"minReplicas": 2, "maxReplicas": 4})).unwrap(),
    );
    let d = inference_deployment(&sm, &champion("homer-20261101-000000", 0.8)).unwrap();
    let spec = d.spec.unwrap();
    let pod_labels = spec.template.metadata.unwrap().labels.unwrap();
    assert_eq!(pod_labels[MODEL_UID_LABEL], UID);
    let deployment = spec.selector.match_labels.unwrap();
    let service = inference_service(&sm)
        .unwrap()
        .spec
        .unwrap()
        .selector
        .unwrap();
    let pdb = inference_pdb(&sm)
        .unwrap()
        .unwrap()
        .spec
        .unwrap()
        .selector
        .unwrap()
        .match_labels
        .unwrap();
    let selects = |selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>| {
        selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    let foreign = BTreeMap::from([
        ("app.kubernetes.io/instance".to_owned(), NAME.to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            "inference".to_owned(),
        ),
    ]);
    for selector in [&deployment, &service, &pdb] {
        assert_eq!(selector[MODEL_UID_LABEL], UID, "{selector:?}");
        assert!(selects(selector, &pod_labels), "{selector:?}");
        assert!(!selects(selector, &foreign), "{selector:?}");
    }
    assert_eq!(deployment, service);
    assert_eq!(deployment, pdb);

    // While an old Deployment is replaced, the Service selects what old and new pods share,
    // and still not a pod with only the instance and component labels.
    let legacy = inference_service_selecting(&sm, PodSelection::Legacy)
        .unwrap()
        .spec
        .unwrap()
        .selector
        .unwrap();
    assert!(!legacy.contains_key(MODEL_UID_LABEL));
    assert!(selects(&legacy, &pod_labels), "the new pods");
    assert!(!selects(&legacy, &foreign));
    assert_eq!(
        legacy_replica_sets_selector(NAME),
        "app.kubernetes.io/instance=homer,app.kubernetes.io/component=inference,!face2simpson.io/model-uid"
    );
}
