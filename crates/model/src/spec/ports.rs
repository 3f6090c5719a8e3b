//! Parsing and validation of a task's named `ports`.

use serde_json::Value;

use crate::job::{NetworkMode, TaskSpec};
use crate::ports::PortSpec;

use super::fields::{self, as_object, as_string, check_unknown, join, kind, Errors};

/// Most named ports one task may have.
const MAX_NAMED_PORTS: usize = 32;
const PORT_FIELDS: &[&str] = &["name", "container", "host", "protocol"];

/// Reads `ports: [{name, container, host}]`; the rules are checked by
/// [`validate_ports`].
pub(super) fn parse_ports(v: &Value, path: &str, errs: &mut Errors) -> Option<Vec<PortSpec>> {
    let Value::Array(items) = v else {
        errs.push(
            path,
            format!(
                "must be a list of {{name, container, host}}, not {}",
                kind(v)
            ),
        );
        return None;
    };
    if items.len() > MAX_NAMED_PORTS {
        errs.push(
            path,
            format!("has {} items; at most {MAX_NAMED_PORTS}", items.len()),
        );
        return None;
    }
    let mut ports = Vec::new();
    let mut all_ok = true;
    for (i, item) in items.iter().enumerate() {
        let ipath = format!("{path}[{i}]");
        let Some(obj) = as_object(item, &ipath, errs) else {
            all_ok = false;
            continue;
        };
        check_unknown(obj, &ipath, PORT_FIELDS, errs);
        let name = match obj.get("name") {
            Some(n) => as_string(n, &join(&ipath, "name"), errs),
            None => {
                errs.push(&join(&ipath, "name"), "is required");
                None
            }
        };
        let container = match obj.get("container") {
            None => Some(0),
            Some(c) => fields::port(c, &join(&ipath, "container"), errs),
        };
        let host = match obj.get("host") {
            None => Some(None),
            Some(h) => {
                fields::number(h, &join(&ipath, "host"), 0, 65535, errs).map(|n| Some(n as u16))
            }
        };
        let protocol = match obj.get("protocol") {
            None => Some(crate::ports::Protocol::Tcp),
            Some(p) => {
                let ppath = join(&ipath, "protocol");
                as_string(p, &ppath, errs).and_then(|text| {
                    let parsed = crate::ports::Protocol::parse(&text);
                    if parsed.is_none() {
                        errs.push(&ppath, format!("{text:?} must be tcp or udp"));
                    }
                    parsed
                })
            }
        };
        if let (Some(name), Some(container), Some(host), Some(protocol)) =
            (name, container, host, protocol)
        {
            ports.push(PortSpec {
                name,
                container,
                host,
                protocol,
            });
        } else {
            all_ok = false;
        }
    }
    // The list's rules (names used twice) name positions: check them only
    // on a list read whole.
    Some(if all_ok { ports } else { Vec::new() })
}

/// The rules of `task.ports`, however the spec was built.
pub(super) fn validate_ports(task: &TaskSpec, path: &str, errs: &mut Errors) {
    let ppath = join(path, "ports");
    if task.ports.is_empty() {
        return;
    }
    if task.ports.len() > MAX_NAMED_PORTS {
        errs.push(
            &ppath,
            format!("has {} items; at most {MAX_NAMED_PORTS}", task.ports.len()),
        );
    }
    if task.network == NetworkMode::None {
        errs.push(
            &ppath,
            format!("a task with {path}.network: none has no ports; use bridge or host"),
        );
        return;
    }
    for (i, p) in task.ports.iter().enumerate() {
        let ipath = format!("{ppath}[{i}]");
        if !valid_name(&p.name) {
            errs.push(
                &join(&ipath, "name"),
                format!(
                    "{:?} must be 1 to 15 lower-case letters, digits or '-', starting with a letter",
                    p.name
                ),
            );
        } else if task.ports[..i].iter().any(|q| q.name == p.name) {
            errs.push(
                &join(&ipath, "name"),
                format!("{:?} is used by two ports", p.name),
            );
        }
        match task.network {
            NetworkMode::Host => match p.host {
                None => errs.push(
                    &join(&ipath, "host"),
                    "is required with network: host (a port number, or 0 for one the scheduler picks)",
                ),
                Some(h) if p.container != 0 && p.container != h => errs.push(
                    &join(&ipath, "container"),
                    format!(
                        "{} differs from host {h}: network: host cannot map ports (leave container out, or use network: bridge)",
                        p.container
                    ),
                ),
                _ => {}
            },
            _ if p.container == 0 => errs.push(
                &join(&ipath, "container"),
                "is required: the port the container listens on, 1 to 65535",
            ),
            _ => {}
        }
        if let Some(h) = p.host.filter(|&h| h > 0) {
            let earlier = task.resources.ports.contains(&h)
                || task.ports[..i].iter().any(|q| q.host == Some(h));
            if earlier {
                errs.push(
                    &join(&ipath, "host"),
                    format!("host port {h} is asked for twice"),
                );
            }
        }
    }
}

fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

#[cfg(test)]
mod tests {
    use crate::spec::errors_of;

    fn task(ports: &str, network: &str) -> Vec<String> {
        errors_of(&format!(
            "name: x\ntask:\n  image: 'oci:/i'\n  network: {network}\n  ports: {ports}\n"
        ))
    }

    #[test]
    fn a_port_is_tcp_unless_it_says_udp() {
        assert_eq!(
            task("[{name: dns, container: 53, protocol: sctp}]", "bridge"),
            ["task.ports[0].protocol: \"sctp\" must be tcp or udp"]
        );
        let spec = crate::JobSpec::from_yaml(
            "name: x\ntask: {image: 'oci:/i', ports: [{name: dns, container: 53, protocol: udp}, {name: http, container: 80}]}",
        )
        .unwrap();
        let protocols: Vec<_> = spec.task.ports.iter().map(|p| p.protocol).collect();
        use crate::ports::Protocol;
        assert_eq!(protocols, [Protocol::Udp, Protocol::Tcp]);
    }

    #[test]
    fn bad_ports_name_the_field_and_the_rule() {
        assert_eq!(
            task("[{name: HTTP, container: 80}]", "bridge"),
            ["task.ports[0].name: \"HTTP\" must be 1 to 15 lower-case letters, digits or '-', starting with a letter"]
        );
        assert_eq!(
            task("[{name: HTTP, container: 80}, {name: b, container: 70000}, {container: 1}, {name: c, container: 1, host: 99999, x: 1}]", "bridge"),
            [
                "task.ports[1].container: 70000 must be a port number from 1 to 65535",
                "task.ports[2].name: is required",
                "task.ports[3].x: unknown field; expected one of: name, container, host, protocol",
                "task.ports[3].host: 99999 must be a whole number from 0 to 65535",
            ]
        );
        assert_eq!(
            task("[{name: a, host: 0}, {name: a, container: 2, host: 80}, {name: c, container: 3, host: 80}]", "bridge"),
            [
                "task.ports[0].container: is required: the port the container listens on, 1 to 65535",
                "task.ports[1].name: \"a\" is used by two ports",
                "task.ports[2].host: host port 80 is asked for twice",
            ]
        );
        assert_eq!(
            task("[{name: a, container: 80}, {name: b, container: 81, host: 82}]", "host"),
            [
                "task.ports[0].host: is required with network: host (a port number, or 0 for one the scheduler picks)",
                "task.ports[1].container: 81 differs from host 82: network: host cannot map ports (leave container out, or use network: bridge)",
            ]
        );
        assert_eq!(
            task("[{name: a, container: 80}]", "none"),
            ["task.ports: a task with task.network: none has no ports; use bridge or host"]
        );
        for (ports, network) in [
            (
                "[{name: http, container: 8080, host: 0}, {name: m, container: 9}]",
                "bridge",
            ),
            (
                "[{name: http, host: 0}, {name: m, host: 9000, container: 9000}]",
                "host",
            ),
        ] {
            let text = format!(
                "name: x\ntask:\n  image: 'oci:/i'\n  network: {network}\n  ports: {ports}\n"
            );
            let spec = crate::JobSpec::from_yaml(&text).unwrap();
            assert_eq!(spec.task.ports.len(), 2);
        }
    }
}
