//! Every command is checked again when it is applied, whoever proposed it.
//! The API checks requests before proposing, but an entry can also reach
//! the log from a follower's forwarded proposal or an older server, so
//! the state machine refuses, the same way on every server, any command
//! that breaks a rule: a bad entry never enters the state.
//!
//! The rules here are the shapes of things (names, ids, sizes); the rules
//! that depend on the state (does the job exist, does the plan fit) stay
//! with the state's rooms.

use skiff_model::error::clipped;
use skiff_model::registration::{check_node_name, check_registration, Registration};

use crate::command::{Command, Joiner, NodeRegistration, PlanCommand};

/// The longest free text a command may carry (reasons, messages).
pub const MAX_TEXT: usize = 4096;
/// The most ids one command may name (a plan, a drain, a status report).
pub const MAX_IDS: usize = 100_000;
/// The longest object name (jobs, nodes, tokens), as the API's rule.
const MAX_NAME: usize = 253;

/// Checks the shape of `command`; the error names the field and the rule.
pub fn check(command: &Command) -> Result<(), String> {
    match command {
        Command::UpsertJob { spec } => spec.validate().map_err(|e| e.to_string()),
        Command::DeleteJob { name } | Command::ScaleJob { name, .. } => name_rule("name", name),
        Command::ControlRollout { job, .. } | Command::UndoRollout { job, .. } => {
            name_rule("job", job)
        }
        Command::RegisterNode { registration } => registration_rule(registration),
        Command::ApplyPlan { plan } => plan_rule(plan),
        Command::UpdateAllocStatus { node, updates, .. } => {
            node_rule(node)?;
            count_rule("updates", updates.len())?;
            for u in updates {
                alloc_id_rule("updates.alloc_id", &u.alloc_id)?;
                text_rule("updates.message", &u.message)?;
            }
            Ok(())
        }
        Command::SetNodeEligibility { name, .. }
        | Command::FinishDrain { node: name }
        | Command::RemoveNode { name } => node_rule(name),
        Command::SetNodeStatus { name, reason, .. } => {
            node_rule(name)?;
            text_rule("reason", reason)
        }
        Command::MigrateAllocs {
            node,
            alloc_ids,
            reason,
        } => {
            node_rule(node)?;
            text_rule("reason", reason)?;
            count_rule("alloc_ids", alloc_ids.len())?;
            alloc_ids
                .iter()
                .try_for_each(|id| alloc_id_rule("alloc_ids", id))
        }
        Command::CollectAllocs { alloc_ids } => {
            count_rule("alloc_ids", alloc_ids.len())?;
            alloc_ids
                .iter()
                .try_for_each(|id| alloc_id_rule("alloc_ids", id))
        }
        Command::RegisterServer { info } => {
            if info.id == 0 {
                return Err("id: a server id is at least 1".into());
            }
            address_rule("api_addr", &info.api_addr)?;
            address_rule("peer_addr", &info.peer_addr)
        }
        Command::UpdateDeployment { update } => {
            name_rule("job", &update.job)?;
            name_rule("deployment_id", &update.deployment_id)?;
            count_rule("healthy", update.healthy.len())?;
            count_rule("unhealthy", update.unhealthy.len())?;
            update
                .healthy
                .iter()
                .chain(&update.unhealthy)
                .try_for_each(|id| alloc_id_rule("healthy", id))
        }
        Command::SetCa { ca } | Command::RenewCa { ca } => {
            if ca.cert_pem.is_empty() || ca.key_pem.is_empty() {
                return Err("ca: a certificate and its key are both required".into());
            }
            Ok(())
        }
        Command::CreateToken { token } => {
            name_rule("id", &token.id)?;
            hash_rule("secret_hash", &token.secret_hash)?;
            text_rule("description", &token.description)
        }
        Command::RevokeToken { id } => name_rule("id", id),
        Command::CreateUser { user } => {
            node_rule(&user.name)?;
            count_rule("namespaces", user.namespaces.len())?;
            user.namespaces.iter().try_for_each(|ns| {
                skiff_model::check_dns_label(ns)
                    .map_err(|rule| format!("namespaces: {ns:?} {rule}"))
            })
        }
        Command::RevokeUser { name } => node_rule(name),
        Command::CreateUserToken { token } => {
            name_rule("id", &token.id)?;
            node_rule(&token.user)?;
            hash_rule("secret_hash", &token.secret_hash)
        }
        Command::RevokeUserToken { id } => name_rule("id", id),
        Command::PutNamespace { namespace } => namespace.validate().map_err(|e| e.to_string()),
        Command::DeleteNamespace { name } => {
            skiff_model::check_dns_label(name).map_err(|rule| format!("name: {name:?} {rule}"))
        }
        Command::SetSecretsKey { key_id } => key_id_rule(key_id),
        Command::PutQueue { queue } => queue.validate().map_err(|e| e.to_string()),
        Command::PutSync { source } => source.validate().map_err(|e| e.to_string()),
        Command::DeleteSync { name } | Command::ReportSync { name, .. } => {
            skiff_model::check_dns_label(name).map_err(|rule| format!("name: {name:?} {rule}"))
        }
        Command::DeleteQueue { name } => {
            skiff_model::check_dns_label(name).map_err(|rule| format!("name: {name:?} {rule}"))
        }
        Command::PutRegistryLogin { namespace, login } => {
            skiff_model::check_dns_label(namespace)
                .map_err(|rule| format!("namespace: {namespace:?} {rule}"))?;
            skiff_model::registry_ref::check_registry_host(&login.registry)
                .map_err(|rule| format!("registry: {rule}"))?;
            skiff_model::registry_ref::check_registry_username(&login.username)
                .map_err(|rule| format!("username: {rule}"))?;
            key_id_rule(&login.key_id)?;
            if login.sealed.is_empty()
                || login.sealed.len() > SEALED_MAX
                || !login.sealed.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(format!("sealed: must be 1 to {SEALED_MAX} hex digits"));
            }
            Ok(())
        }
        Command::DeleteRegistryLogin {
            namespace,
            registry,
        } => {
            skiff_model::check_dns_label(namespace)
                .map_err(|rule| format!("namespace: {namespace:?} {rule}"))?;
            skiff_model::registry_ref::check_registry_host(registry)
                .map(|_| ())
                .map_err(|rule| format!("registry: {rule}"))
        }
        Command::Join {
            token_id,
            secret_hash,
            joiner,
            ..
        } => {
            name_rule("token_id", token_id)?;
            hash_rule("secret_hash", secret_hash)?;
            match joiner {
                Joiner::Node { name } => node_rule(name),
                Joiner::Server { id: 0 } => Err("joiner: a server id is at least 1".into()),
                Joiner::Server { .. } => Ok(()),
            }
        }
    }
}

fn name_rule(field: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("{field}: must be 1 to {MAX_NAME} characters"));
    }
    Ok(())
}

fn node_rule(name: &str) -> Result<(), String> {
    check_node_name(name).map_err(|e| e.to_string())
}

fn text_rule(field: &str, text: &str) -> Result<(), String> {
    if text.len() > MAX_TEXT {
        return Err(format!("{field}: must be at most {MAX_TEXT} bytes"));
    }
    Ok(())
}

fn count_rule(field: &str, n: usize) -> Result<(), String> {
    if n > MAX_IDS {
        return Err(format!("{field}: at most {MAX_IDS} in one command"));
    }
    Ok(())
}

/// An allocation id: the leader makes 32 lowercase hex digits; the state
/// accepts 1 to 64 letters, digits, '-', '_' or '.' not starting with a
/// dot, so an id can never name another path where it becomes a
/// directory name on a node.
pub fn valid_alloc_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn alloc_id_rule(field: &str, id: &str) -> Result<(), String> {
    if valid_alloc_id(id) {
        Ok(())
    } else {
        Err(format!(
            "{field}: {:?} is not an allocation id (1 to 64 letters, digits, '-', '_' or '.', not starting with '.')",
            clipped(id)
        ))
    }
}

/// A secret's hash (sha256 in hex from the servers): short and printable.
fn hash_rule(field: &str, hash: &str) -> Result<(), String> {
    if !hash.is_empty() && hash.len() <= 128 && hash.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(format!("{field}: must be 1 to 128 printable characters"))
    }
}

fn address_rule(field: &str, addr: &str) -> Result<(), String> {
    let ok = !addr.is_empty()
        && addr.len() <= MAX_NAME
        && addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!("{field}: {:?} must be HOST:PORT", clipped(addr)))
    }
}

fn registration_rule(r: &NodeRegistration) -> Result<(), String> {
    node_rule(&r.name)?;
    check_registration(&Registration {
        labels: &r.labels,
        capacity: r.capacity,
        reserved: r.reserved,
        address: &r.address,
        gpus: &r.gpus,
        gpu_links: &r.gpu_links,
    })
    .map_err(|e| e.to_string())?;
    if r.image_roots.len() > 64 {
        return Err("image_roots: at most 64 directories".into());
    }
    r.dynamic_ports
        .check()
        .map_err(|rule| format!("dynamic_ports: {rule}"))?;
    for root in &r.image_roots {
        if !root.starts_with('/') || root.len() > 4096 || root.split('/').any(|c| c == "..") {
            return Err(format!(
                "image_roots: {:?} must be an absolute path without `..`",
                clipped(root)
            ));
        }
    }
    if !r.subnet.is_empty() {
        skiff_model::subnet::Subnet::parse(&r.subnet).map_err(|e| format!("subnet: {e}"))?;
    }
    text_rule("agent_version", &r.agent_version)
}

fn plan_rule(plan: &PlanCommand) -> Result<(), String> {
    name_rule("eval_id", &plan.eval_id)?;
    name_rule("job", &plan.job)?;
    text_rule("explanation", &plan.explanation)?;
    count_rule(
        "placements",
        plan.placements.len() + plan.stops.len() + plan.evictions.len(),
    )?;
    for p in &plan.placements {
        alloc_id_rule("placements.id", &p.id)?;
        node_rule(&p.placement.node)?;
    }
    for s in plan.stops.iter().chain(&plan.evictions) {
        alloc_id_rule("stops.alloc_id", &s.alloc_id)?;
    }
    Ok(())
}

/// Most hex digits of a sealed registry password (8 KiB of password,
/// sealed).
const SEALED_MAX: usize = 2 * (8 * 1024 + 64);

fn key_id_rule(id: &str) -> Result<(), String> {
    if id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(format!("key_id: {id:?} must be 16 lowercase hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::AllocUpdate;

    #[test]
    fn a_status_report_for_a_forged_allocation_id_is_refused_naming_the_field() {
        let cmd = Command::UpdateAllocStatus {
            node: "n1".into(),
            updates: vec![AllocUpdate {
                alloc_id: "../../../victim".into(),
                ..AllocUpdate::default()
            }],
            at_ms: 0,
        };
        let err = check(&cmd).unwrap_err();
        assert!(err.starts_with("updates.alloc_id:"), "{err}");
        let ok = Command::UpdateAllocStatus {
            node: "n1".into(),
            updates: vec![AllocUpdate {
                alloc_id: "0123456789abcdef0123456789abcdef".into(),
                ..AllocUpdate::default()
            }],
            at_ms: 0,
        };
        check(&ok).unwrap();
    }

    #[test]
    fn huge_names_and_texts_are_refused() {
        let big = "x".repeat(50 * 1024);
        let err = check(&Command::SetNodeStatus {
            name: big.clone(),
            status: skiff_model::NodeStatus::Ready,
            reason: String::new(),
        })
        .unwrap_err();
        assert!(err.starts_with("name:"), "{err}");
        let err = check(&Command::SetNodeStatus {
            name: "n1".into(),
            status: skiff_model::NodeStatus::Ready,
            reason: big,
        })
        .unwrap_err();
        assert!(err.starts_with("reason:"), "{err}");
        let err = check(&Command::DeleteJob {
            name: String::new(),
        })
        .unwrap_err();
        assert!(err.starts_with("name:"), "{err}");
    }

    #[test]
    fn a_server_address_must_be_host_and_port() {
        let info = |api: &str| Command::RegisterServer {
            info: crate::ServerInfo {
                id: 2,
                api_addr: api.into(),
                peer_addr: "127.0.0.1:7701".into(),
            },
        };
        check(&info("127.0.0.1:7700")).unwrap();
        check(&info("[::1]:7700")).unwrap();
        assert!(check(&info("nowhere"))
            .unwrap_err()
            .starts_with("api_addr:"));
    }
}
