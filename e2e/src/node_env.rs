//! A container's environment as the kubelet builds it: `envFrom` first, then `env` in order
//! (later entries may refer to earlier ones with `$(NAME)`), values from Secrets, ConfigMaps
//! and the downward API.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, Pod, Secret};
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
        other => bail!("the node stand-in does not support fieldRef {other}"),
    })
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
    bail!(
        "the node stand-in does not support env {}'s valueFrom",
        var.name
    )
}

/// The environment of `container`, with `0.0.0.0:<containerPort>` values rewritten to the
/// host port the stand-in gave that container port.
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
    for (_, value) in env.iter_mut() {
        for (container_port, host_port) in ports {
            if *value == format!("0.0.0.0:{container_port}") {
                *value = format!("127.0.0.1:{host_port}");
            }
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::expand;

    fn env() -> Vec<(String, String)> {
        vec![("A".into(), "1".into()), ("B".into(), "two".into())]
    }

    #[test]
    fn expands_like_the_kubelet() {
        assert_eq!(expand("x=$(A),y=$(B)", &env()), "x=1,y=two");
        assert_eq!(expand("$$(A) $(C) $ end", &env()), "$(A) $(C) $ end");
        assert_eq!(expand("$(A", &env()), "$(A");
    }
}
