//! A container's environment as the kubelet builds it: `envFrom` first, then `env` in order
//! (later entries may refer to earlier ones with `$(NAME)`), values from Secrets, ConfigMaps
//! and the downward API.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, Pod, ResourceFieldSelector, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::Api;
use kube::{Client, ResourceExt};

/// Expands `$(NAME)` from `env`; `$$(NAME)` is a literal `$(NAME)`; unknown names stay as
/// written — the kubelet's rules.
pub fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(end) = tail.strip_prefix("$(").and_then(|t| t.find(')')) {
            let name = &tail[2..2 + end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&tail[..3 + end]),
            }
            rest = &tail[3 + end..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// [`expand`] over a list of arguments.
pub fn expand_all(args: &[String], env: &[(String, String)]) -> Vec<String> {
    args.iter().map(|a| expand(a, env)).collect()
}

fn set(env: &mut Vec<(String, String)>, name: String, value: String) {
    env.retain(|(k, _)| *k != name);
    env.push((name, value));
}

async fn secret(client: &Client, ns: &str, name: &str) -> Result<Option<Secret>> {
    Ok(Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?)
}

async fn config_map(client: &Client, ns: &str, name: &str) -> Result<Option<ConfigMap>> {
    Ok(Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?)
}

fn secret_values(secret: &Secret) -> BTreeMap<String, String> {
    let mut values: BTreeMap<String, String> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    values.extend(secret.string_data.clone().unwrap_or_default());
    values
}

fn field(pod: &Pod, path: &str) -> Result<String> {
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "spec.nodeName" => crate::node::NODE_NAME.to_owned(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.hostIP" => "127.0.0.1".to_owned(),
        other => {
            // `metadata.annotations['<key>']` and `metadata.labels['<key>']`: how the Job
            // controller hands an Indexed Job's pod its JOB_COMPLETION_INDEX.
            let (map, key) = if let Some(k) = keyed(other, "metadata.annotations") {
                (pod.annotations(), k)
            } else if let Some(k) = keyed(other, "metadata.labels") {
                (pod.labels(), k)
            } else {
                bail!("the node stand-in does not support fieldRef {other}")
            };
            map.get(key).cloned().unwrap_or_default()
        }
    })
}

/// `key` of a field path `<map>['<key>']`.
fn keyed<'a>(path: &'a str, map: &str) -> Option<&'a str> {
    path.strip_prefix(map)?
        .strip_prefix("['")?
        .strip_suffix("']")
}

/// Pods behind a headless Service answer as `<hostname>.<subdomain>` (or with
/// `.<namespace>.svc[.cluster.local]`) in cluster DNS. Every pod here lives on loopback, so an env
/// value naming a pod under this pod's own subdomain becomes `127.0.0.1` — once that headless
/// Service exists, as with real DNS; until then the container waits.
async fn resolve_service_names(
    client: &Client,
    pod: &Pod,
    env: &mut [(String, String)],
) -> Result<()> {
    let Some(subdomain) = pod.spec.as_ref().and_then(|s| s.subdomain.clone()) else {
        return Ok(());
    };
    let ns = pod.namespace().unwrap_or_default();
    let suffixes = [
        format!(".{subdomain}"),
        format!(".{subdomain}.{ns}.svc"),
        format!(".{subdomain}.{ns}.svc.cluster.local"),
    ];
    let names_a_pod = |value: &str| {
        suffixes.iter().any(|s| {
            value
                .strip_suffix(s.as_str())
                .is_some_and(|host| !host.is_empty() && !host.contains(['.', ':', '/']))
        })
    };
    let Some(name) = env.iter().map(|(_, v)| v).find(|v| names_a_pod(v)).cloned() else {
        return Ok(());
    };
    let service = Api::<Service>::namespaced(client.clone(), &ns)
        .get_opt(&subdomain)
        .await?;
    let headless = service
        .and_then(|s| s.spec)
        .and_then(|s| s.cluster_ip)
        .is_some_and(|ip| ip == "None");
    ensure!(
        headless,
        "{name} does not resolve: no headless Service {ns}/{subdomain}"
    );
    for (_, value) in env.iter_mut() {
        if names_a_pod(value) {
            *value = "127.0.0.1".to_owned();
        }
    }
    Ok(())
}

/// What the stand-in node has to give, which an unset limit resolves to (as the kubelet
/// resolves it to the node's allocatable).
const NODE_ALLOCATABLE_CPU: &str = "2";
const NODE_ALLOCATABLE_MEMORY: &str = "8Gi";

/// A quantity (`250m`, `2`, `512Mi`, `1G`, `1.5`) as a number of base units.
fn quantity(q: &str) -> Result<f64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let q = q.trim();
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(s, f)| q.strip_suffix(s).map(|n| (n, *f)))
        .unwrap_or((q, 1.0));
    let n: f64 = number
        .parse()
        .with_context(|| format!("not a quantity: {q:?}"))?;
    Ok(n * scale)
}

/// `resourceFieldRef`: the container's request or limit in units of the divisor, rounded up
/// as the kubelet does; an unset limit is the node's allocatable, an unset request the limit.
fn resource_field(pod: &Pod, r: &ResourceFieldSelector) -> Result<String> {
    let spec = pod.spec.as_ref().context("pod without spec")?;
    let container = spec
        .containers
        .iter()
        .find(|c| r.container_name.as_deref().is_none_or(|n| n == c.name))
        .with_context(|| format!("no container {:?}", r.container_name))?;
    let resources = container.resources.clone().unwrap_or_default();
    let get = |map: &Option<BTreeMap<String, Quantity>>, name: &str| {
        map.as_ref().and_then(|m| m.get(name)).map(|q| q.0.clone())
    };
    let (kind, name) = r
        .resource
        .split_once('.')
        .with_context(|| format!("unsupported resourceFieldRef {}", r.resource))?;
    let allocatable = match name {
        "cpu" => NODE_ALLOCATABLE_CPU,
        "memory" => NODE_ALLOCATABLE_MEMORY,
        other => bail!("the node stand-in does not support resourceFieldRef {kind}.{other}"),
    };
    let limit = get(&resources.limits, name).unwrap_or_else(|| allocatable.to_owned());
    let value = match kind {
        "limits" => limit,
        "requests" => get(&resources.requests, name).unwrap_or(limit),
        other => bail!("the node stand-in does not support resourceFieldRef {other}.{name}"),
    };
    let divisor = r.divisor.as_ref().map_or("1", |d| d.0.as_str());
    let units = quantity(&value)? / quantity(divisor)?;
    Ok(format!("{}", units.ceil() as u64))
}

async fn value_of(
    client: &Client,
    pod: &Pod,
    var: &EnvVar,
    env: &[(String, String)],
) -> Result<Option<String>> {
    let ns = pod.namespace().unwrap_or_default();
    let Some(from) = &var.value_from else {
        return Ok(Some(expand(var.value.as_deref().unwrap_or(""), env)));
    };
    if let Some(r) = &from.secret_key_ref {
        let values = secret(client, &ns, &r.name)
            .await?
            .map(|s| secret_values(&s));
        return match values.and_then(|v| v.get(&r.key).cloned()) {
            Some(v) => Ok(Some(v)),
            None if r.optional == Some(true) => Ok(None),
            None => bail!("secret {}/{} has no key {}", ns, r.name, r.key),
        };
    }
    if let Some(r) = &from.config_map_key_ref {
        let values = config_map(client, &ns, &r.name).await?.and_then(|c| c.data);
        return match values.and_then(|v| v.get(&r.key).cloned()) {
            Some(v) => Ok(Some(v)),
            None if r.optional == Some(true) => Ok(None),
            None => bail!("configmap {}/{} has no key {}", ns, r.name, r.key),
        };
    }
    if let Some(r) = &from.field_ref {
        return field(pod, &r.field_path).map(Some);
    }
    if let Some(r) = &from.resource_field_ref {
        return resource_field(pod, r).map(Some);
    }
    bail!(
        "the node stand-in does not support env {}'s valueFrom",
        var.name
    )
}

/// The environment of `container`, with `0.0.0.0:<containerPort>` values rewritten to the
/// host port the stand-in gave that container port. In a pod behind a headless Service
/// (`subdomain`), names of that Service's pods become `127.0.0.1`, and a value that is exactly a
/// declared containerPort becomes its host port, which the stand-in gives every pod of that
/// subdomain alike: on a network each pod has its own address and the same port (one rank
/// listens on it, the others connect), on loopback they share one.
pub async fn resolve(
    client: &Client,
    pod: &Pod,
    container: &Container,
    ports: &BTreeMap<i32, u16>,
) -> Result<Vec<(String, String)>> {
    let ns = pod.namespace().unwrap_or_default();
    let mut env = Vec::new();
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        if let Some(r) = &source.secret_ref {
            match secret(client, &ns, &r.name).await? {
                Some(s) => secret_values(&s)
                    .into_iter()
                    .for_each(|(k, v)| set(&mut env, format!("{prefix}{k}"), v)),
                None if r.optional == Some(true) => {}
                None => bail!("secret \"{}\" not found", r.name),
            }
        }
        if let Some(r) = &source.config_map_ref {
            match config_map(client, &ns, &r.name).await? {
                Some(c) => c
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .for_each(|(k, v)| set(&mut env, format!("{prefix}{k}"), v)),
                None if r.optional == Some(true) => {}
                None => bail!("configmap \"{}\" not found", r.name),
            }
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(value) = value_of(client, pod, var, &env)
            .await
            .with_context(|| format!("env {}", var.name))?
        {
            set(&mut env, var.name.clone(), value);
        }
    }
    let behind_service = pod.spec.as_ref().is_some_and(|s| s.subdomain.is_some());
    for (_, value) in env.iter_mut() {
        for (container_port, host_port) in ports {
            if *value == format!("0.0.0.0:{container_port}") {
                *value = format!("127.0.0.1:{host_port}");
            } else if behind_service && *value == container_port.to_string() {
                *value = host_port.to_string();
            }
        }
    }
    resolve_service_names(client, pod, &mut env).await?;
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};

    fn pod(resources: ResourceRequirements) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "inference".into(),
                    resources: Some(resources),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn selector(resource: &str, divisor: &str) -> ResourceFieldSelector {
        ResourceFieldSelector {
            container_name: Some("inference".into()),
            resource: resource.into(),
            divisor: Some(Quantity(divisor.into())),
        }
    }

    #[test]
    fn resource_fields_resolve_like_the_kubelet() {
        let q = |s: &str| Quantity(s.into());
        let p = pod(ResourceRequirements {
            requests: Some([("cpu".into(), q("250m")), ("memory".into(), q("512Mi"))].into()),
            ..Default::default()
        });
        let get = |r, d| resource_field(&p, &selector(r, d)).unwrap();
        assert_eq!(get("requests.cpu", "1m"), "250");
        assert_eq!(get("requests.memory", "1"), "536870912");
        // No limits: the node's allocatable.
        assert_eq!(get("limits.cpu", "1m"), "2000");
        assert_eq!(get("limits.memory", "1"), "8589934592");
        // Rounded up to the divisor.
        assert_eq!(get("requests.cpu", "1"), "1");
        assert!(resource_field(&p, &selector("requests.storage", "1")).is_err());
    }

    fn env() -> Vec<(String, String)> {
        vec![("A".into(), "1".into()), ("B".into(), "two".into())]
    }

    #[test]
    fn field_refs_read_annotations_and_labels() {
        let mut p = pod(ResourceRequirements::default());
        p.metadata.annotations = Some(
            [(
                "batch.kubernetes.io/job-completion-index".to_owned(),
                "1".to_owned(),
            )]
            .into(),
        );
        p.metadata.labels = Some([("app".to_owned(), "trainer".to_owned())].into());
        assert_eq!(
            field(
                &p,
                "metadata.annotations['batch.kubernetes.io/job-completion-index']"
            )
            .unwrap(),
            "1"
        );
        assert_eq!(field(&p, "metadata.labels['app']").unwrap(), "trainer");
        assert_eq!(field(&p, "metadata.labels['absent']").unwrap(), "");
        assert!(field(&p, "metadata.annotations").is_err());
    }

    #[test]
    fn expands_like_the_kubelet() {
        assert_eq!(expand("x=$(A),y=$(B)", &env()), "x=1,y=two");
        assert_eq!(expand("$$(A) $(C) $ end", &env()), "$(A) $(C) $ end");
        assert_eq!(expand("$(A", &env()), "$(A");
    }
}
