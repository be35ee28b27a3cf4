//! The generated CRD: in sync with crds/, and carrying what `kubectl` users rely on.
#![allow(clippy::unwrap_used)]

use face2simpson_operator::SimpsonModel;
use kube::CustomResourceExt;
use serde_json::Value;

#[test]
fn checked_in_crd_is_in_sync() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/simpsonmodel.yaml");
    let generated = face2simpson_operator::crd::crd_yaml().unwrap();
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "crds/simpsonmodel.yaml is out of date: run `make crds`"
    );
}

fn schema() -> Value {
    let crd = serde_json::to_value(face2simpson_operator::crd::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

#[test]
fn crd_identity_and_printer_columns() {
    let crd = serde_json::to_value(SimpsonModel::crd()).unwrap();
    assert_eq!(crd["metadata"]["name"], "simpsonmodels.face2simpson.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "sm");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "Phase",
            "Champion-Acc",
            "Last-Run",
            "Decision",
            "Next-Run",
            "Summary",
            "Queued",
            "Age"
        ]
    );
    // The decision summary only with `kubectl get sm -o wide`.
    let summary = &version["additionalPrinterColumns"][5];
    assert_eq!(summary["priority"], 1);
    assert_eq!(summary["jsonPath"], ".status.lastRun.summary");
    // How long a run waits in its queue: `-o wide` too, as an age.
    let queued = &version["additionalPrinterColumns"][6];
    assert_eq!(
        (&queued["priority"], &queued["type"], &queued["jsonPath"]),
        (
            &1.into(),
            &"date".into(),
            &".status.lastRun.queuedSince".into()
        )
    );
}

#[test]
fn schema_has_storage_schedule_gate_and_status() {
    let s = schema();
    let spec = &s["properties"]["spec"]["properties"];
    for field in [
        "storageUri",
        "storageSecretRef",
        "dataset",
        "schedule",
        "training",
        "promotion",
        "inference",
    ] {
        assert!(spec[field].is_object(), "spec.{field} missing");
    }
    for field in [
        "interval",
        "cron",
        "timeZone",
        "suspend",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
        "historyLimit",
    ] {
        assert!(
            spec["schedule"]["properties"][field].is_object(),
            "schedule.{field} missing"
        );
    }
    assert_eq!(spec["schedule"]["properties"]["interval"]["default"], "72h");
    for field in [
        "minImprovement",
        "minAccuracy",
        "minTestImages",
        "minSignificance",
        "maxClassRecallDrop",
        "dryRun",
    ] {
        assert!(
            spec["promotion"]["properties"][field].is_object(),
            "promotion.{field} missing"
        );
    }
    assert_eq!(spec["training"]["properties"]["batchSize"]["default"], 32);
    assert_eq!(
        spec["training"]["properties"]["labelSmoothing"]["default"],
        0.1
    );
    assert_eq!(spec["training"]["properties"]["gpus"]["default"], 1);
    assert_eq!(
        spec["inference"]["properties"]["progressDeadlineSeconds"]["default"],
        600
    );
    assert_eq!(
        spec["promotion"]["properties"]["metricsDeadlineSeconds"]["default"],
        14400
    );
    let drop = &spec["promotion"]["properties"]["maxClassRecallDrop"];
    assert_eq!(
        (drop["default"].as_f64(), drop["maximum"].as_f64()),
        (Some(0.1), Some(1.0))
    );
    let last_run = &s["properties"]["status"]["properties"]["lastRun"]["properties"];
    assert_eq!(last_run["summary"]["type"], "string");
    let comparison = &last_run["comparison"]["properties"];
    for field in [
        "difference",
        "ciLow",
        "ciHigh",
        "mcnemarP",
        "testImages",
        "classes",
    ] {
        assert!(
            comparison[field].is_object(),
            "lastRun.comparison.{field} missing"
        );
    }
    assert_eq!(
        spec["schedule"]["properties"]["retryBackoffSeconds"]["default"],
        900
    );
    assert_eq!(spec["dataset"]["default"], "datasets/current");
    let status = &s["properties"]["status"]["properties"];
    for field in [
        "conditions",
        "phase",
        "champion",
        "previousChampion",
        "lastRun",
        "nextRunAt",
        "history",
        "observedGeneration",
        "lastTrainRequest",
        "lastRollbackRequest",
        "lastPromoteRequest",
    ] {
        assert!(status[field].is_object(), "status.{field} missing");
    }
    for field in ["runId", "accuracy", "modelUri", "promotedAt"] {
        assert!(
            status["champion"]["properties"][field].is_object(),
            "champion.{field} missing"
        );
    }
    for field in [
        "runId",
        "jobName",
        "startedAt",
        "finishedAt",
        "accuracy",
        "championAccuracy",
        "championRunId",
        "modelUri",
        "decision",
        "reason",
    ] {
        assert!(
            status["lastRun"]["properties"][field].is_object(),
            "lastRun.{field} missing"
        );
    }
}

/// Item 15: the API server refuses bad specs up front, and no `uint32`/`uint64` format is
/// left (the API server warns about them from Kubernetes 1.34).
#[test]
fn schema_refuses_bad_specs() {
    let s = schema();
    let text = s.to_string();
    assert!(
        !text.contains("\"uint32\"") && !text.contains("\"uint64\""),
        "unsigned formats in the CRD"
    );
    let spec = &s["properties"]["spec"]["properties"];
    let bounds = |v: &Value| (v["minimum"].as_f64(), v["maximum"].as_f64());
    let inf = &spec["inference"]["properties"];
    assert_eq!(bounds(&inf["replicas"]), (Some(0.0), None));
    assert_eq!(bounds(&inf["port"]), (Some(1.0), Some(65535.0)));
    assert_eq!(
        inf["serviceType"]["enum"],
        serde_json::json!(["ClusterIP", "NodePort", "LoadBalancer"])
    );
    let gate = &spec["promotion"]["properties"];
    assert_eq!(bounds(&gate["minAccuracy"]), (Some(0.0), Some(1.0)));
    assert_eq!(bounds(&gate["minImprovement"]), (Some(0.0), Some(1.0)));
    assert_eq!(bounds(&gate["minTestImages"]), (Some(0.0), None));
    assert_eq!(bounds(&gate["minSignificance"]), (Some(0.0), Some(1.0)));
    assert_eq!(gate["minSignificance"]["exclusiveMinimum"], true);
    let training = &spec["training"]["properties"];
    assert_eq!(bounds(&training["imageSize"]), (Some(32.0), Some(1024.0)));
    assert_eq!(bounds(&training["batchSize"]), (Some(2.0), None));
    assert_eq!(bounds(&training["gpus"]), (Some(0.0), None));
    assert_eq!(bounds(&training["workers"]), (Some(1.0), Some(1000.0)));
    assert_eq!(training["workers"]["default"], 1);
    assert_eq!(bounds(&training["maxQueuedSeconds"]), (Some(1.0), None));
    // A queue name is a label value: Kueue reads it from kueue.x-k8s.io/queue-name.
    assert_eq!(training["queueName"]["maxLength"], 63);
    assert!(training["queueName"]["pattern"].is_string());
    let schedule = &spec["schedule"]["properties"];
    assert!(schedule["interval"]["pattern"].is_string());
    assert!(schedule["cron"]["pattern"].is_string());
    assert_eq!(bounds(&schedule["historyLimit"]), (Some(1.0), None));

    let status = &s["properties"]["status"]["properties"];
    assert!(
        status["phase"]["enum"]
            .as_array()
            .unwrap()
            .contains(&"RollingOut".into())
    );
    assert!(
        status["phase"]["enum"]
            .as_array()
            .unwrap()
            .contains(&"Queued".into())
    );
    let last_run = &status["lastRun"]["properties"];
    for field in ["restarts", "queuedSeconds", "preemptions"] {
        assert_eq!(bounds(&last_run[field]), (Some(0.0), None), "{field}");
    }
    assert_eq!(last_run["queuedSince"]["format"], "date-time");
    assert!(
        status["lastRun"]["properties"]["trigger"]["enum"]
            .as_array()
            .unwrap()
            .contains(&"Retry".into())
    );
    assert!(
        status["history"]["items"]["properties"]["decision"]["enum"]
            .as_array()
            .unwrap()
            .contains(&"RolloutFailed".into())
    );

    // Child names are <name>-inference: the name must be a DNS label of at most 53 characters.
    let rule = s["x-kubernetes-validations"][0]["rule"].as_str().unwrap();
    assert!(
        rule.contains("self.metadata.name.size() <= 53") && rule.contains("matches("),
        "{rule}"
    );
}

/// Every property has a description, so `kubectl explain` is useful everywhere.
#[test]
fn every_field_is_described() {
    fn walk(path: &str, v: &Value, missing: &mut Vec<String>) {
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                let here = format!("{path}.{name}");
                if prop
                    .get("description")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    missing.push(here.clone());
                }
                walk(&here, prop, missing);
            }
        }
        if let Some(items) = v.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let s = schema();
    let mut missing = Vec::new();
    for part in ["spec", "status"] {
        walk(part, &s["properties"][part], &mut missing);
    }
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:#?}"
    );
}

/// Every SimpsonModel in examples/ is what the operator's own types accept, with a valid
/// schedule. (scripts/check-packaging.py also validates them against the CRD's schema.)
#[test]
fn example_manifests_parse() {
    use serde::Deserialize;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut models = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap();
            if value["kind"] == "SimpsonModel" {
                let sm: SimpsonModel = serde_json::from_value(value)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                face2simpson_operator::schedule::Schedule::from_spec(&sm.spec.schedule).unwrap();
                models.push((path.file_name().unwrap().to_owned(), sm));
            }
        }
    }
    assert!(models.len() >= 3, "examples: {models:?}");
    let (_, s3) = models.iter().find(|(f, _)| f == "s3.yaml").unwrap();
    assert_eq!(s3.spec.schedule.interval, "72h");
    assert_eq!(s3.spec.promotion.min_accuracy, 0.8);
    assert_eq!(
        s3.spec.training.learning_rate, 1e-3,
        "unset hyperparameters take their defaults"
    );
}

/// The operator must never link libtorch: walk Cargo.lock from the operator package.
#[test]
fn operator_does_not_depend_on_libtorch() {
    let lock =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap();
    let mut deps: std::collections::HashMap<String, Vec<String>> = Default::default();
    for block in lock.split("[[package]]").skip(1) {
        let name = block
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .unwrap()
            .trim_matches('"')
            .to_owned();
        let list = block
            .split("dependencies = [")
            .nth(1)
            .map(|rest| rest.split(']').next().unwrap_or(""));
        let children = list
            .into_iter()
            .flat_map(|l| l.lines())
            .filter_map(|l| {
                l.trim()
                    .trim_end_matches(',')
                    .trim_matches('"')
                    .split(' ')
                    .next()
                    .map(str::to_owned)
            })
            .filter(|n| !n.is_empty())
            .collect();
        deps.entry(name)
            .or_default()
            .extend::<Vec<String>>(children);
    }
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec!["face2simpson-operator".to_owned()];
    while let Some(n) = todo.pop() {
        if seen.insert(n.clone()) {
            todo.extend(deps.get(&n).cloned().unwrap_or_default());
        }
    }
    assert!(
        seen.contains("kube"),
        "the walk found the operator's dependencies"
    );
    for banned in [
        "tch",
        "torch-sys",
        "face2simpson-model",
        "face2simpson-trainer",
    ] {
        assert!(!seen.contains(banned), "the operator depends on {banned}");
    }
}

/// deploy/operator.yaml holds valid objects, and its RBAC grants what the operator calls.
#[test]
fn deploy_manifest_is_valid_and_grants_the_needed_verbs() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::rbac::v1::ClusterRole;
    use serde::Deserialize;

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/operator.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment"
        ]
    );
    let role: ClusterRole = serde_json::from_value(docs[2].clone()).unwrap();
    let allowed = |group: &str, resource: &str, verb: &str| {
        role.rules.iter().flatten().any(|r| {
            r.api_groups.iter().flatten().any(|g| g == group)
                && r.resources.iter().flatten().any(|x| x == resource)
                && r.verbs.iter().any(|v| v == verb)
        })
    };
    for (group, resource, verb) in [
        ("face2simpson.io", "simpsonmodels", "watch"),
        ("face2simpson.io", "simpsonmodels", "get"),
        ("face2simpson.io", "simpsonmodels/status", "patch"),
        ("batch", "jobs", "list"),
        ("batch", "jobs", "get"),
        ("batch", "jobs", "create"),
        ("batch", "jobs", "delete"),
        ("apps", "deployments", "get"),
        ("apps", "deployments", "patch"),
        ("apps", "deployments", "delete"),
        ("apps", "replicasets", "list"),
        ("apps", "replicasets", "delete"),
        ("", "services", "get"),
        ("", "services", "patch"),
        ("", "secrets", "get"),
        ("autoscaling", "horizontalpodautoscalers", "get"),
        ("autoscaling", "horizontalpodautoscalers", "patch"),
        ("autoscaling", "horizontalpodautoscalers", "delete"),
        ("policy", "poddisruptionbudgets", "get"),
        ("policy", "poddisruptionbudgets", "patch"),
        ("policy", "poddisruptionbudgets", "delete"),
        ("events.k8s.io", "events", "create"),
    ] {
        assert!(
            allowed(group, resource, verb),
            "RBAC lacks {verb} on {group}/{resource}"
        );
    }
    let d: Deployment = serde_json::from_value(docs[4].clone()).unwrap();
    let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );
}

/// Issue 17: a status written by a newer operator, with values this one does not know, is
/// read (the model stays readable, not InvalidSpec), and written back as it came, while the
/// schema still lists the known values only.
#[test]
fn status_values_from_a_newer_version_are_kept_not_fatal() {
    use face2simpson_operator::crd::{Phase, Trigger, Verdict};
    use kube::core::DeserializeGuard;

    let status = serde_json::json!({
        "phase": "SomethingNew",
        "lastRun": {
            "runId": "homer-1", "jobName": "homer-1", "trigger": "NewTrigger",
            "startedAt": "2026-11-01T00:00:00Z", "decision": "NewKind",
        },
        "history": [{
            "runId": "homer-1", "decision": "NewKind", "reason": "from the future",
            "decidedAt": "2026-11-01T01:00:00Z",
        }],
    });
    let model = serde_json::json!({
        "apiVersion": "face2simpson.io/v1alpha1",
        "kind": "SimpsonModel",
        "metadata": {"name": "homer", "namespace": "simpsons"},
        "spec": {
            "storageUri": "s3://b/p",
            "training": {"image": "t:1"},
            "inference": {"image": "i:1"},
        },
        "status": status,
    });
    let guard: DeserializeGuard<SimpsonModel> = serde_json::from_value(model).unwrap();
    let sm = guard
        .0
        .expect("a newer status must not make the model unreadable");
    let read = sm.status.clone().unwrap();
    assert_eq!(read.phase, Some(Phase::Unrecognized("SomethingNew".into())));
    let run = read.last_run.as_ref().unwrap();
    assert_eq!(run.trigger, Trigger::Unrecognized("NewTrigger".into()));
    assert_eq!(run.decision, Some(Verdict::Unrecognized("NewKind".into())));
    assert_eq!(run.decision.as_ref().unwrap(), &"NewKind");
    assert_eq!(read.history[0].decision.to_string(), "NewKind");
    // Written back word for word.
    let written = serde_json::to_value(&read).unwrap();
    assert_eq!(written["phase"], status["phase"]);
    assert_eq!(written["lastRun"]["trigger"], "NewTrigger");
    assert_eq!(written["lastRun"]["decision"], "NewKind");
    assert_eq!(written["history"][0]["decision"], "NewKind");
    // Known values are still the variants, not text.
    let known: Verdict = serde_json::from_value(serde_json::json!("Promote")).unwrap();
    assert_eq!(known, Verdict::Promote);
    assert_eq!(serde_json::to_value(Phase::Serving).unwrap(), "Serving");
    // Not a string at all is still an error (the guard reports it).
    assert!(serde_json::from_value::<Verdict>(serde_json::json!(3)).is_err());

    // The schema lists the known values only.
    let s = schema();
    let status = &s["properties"]["status"]["properties"];
    let phases = status["phase"]["enum"].as_array().unwrap();
    assert!(phases.contains(&serde_json::json!("Serving")));
    assert!(!phases.iter().any(|p| p == "Unrecognized" || p.is_null()));
    let decisions = status["lastRun"]["properties"]["decision"]["enum"]
        .as_array()
        .unwrap();
    assert!(decisions.contains(&serde_json::json!("Promote")));
    assert!(!decisions.iter().any(|p| p == "Unrecognized"));
}
