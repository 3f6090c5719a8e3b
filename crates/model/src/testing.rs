//! Generators of job specs for property tests (proptest), for this crate's
//! tests and, with the `testing` feature, other crates' (the wire
//! conversions check that a spec means the same on every path).

use std::time::Duration;

use proptest::collection::{btree_map, btree_set, vec};
use proptest::option;
use proptest::prelude::*;

use crate::gpu::GpuFilter;
use crate::job::{
    Amount, GangFailure, ImageRef, JobSpec, JobType, NetworkMode, TaskSpec, UpdateSpec,
    MIN_MEMORY_BYTES,
};
use crate::lifecycle::{
    Backoff, Probe, ProbeAction, Probes, RestartPolicy, RestartSpec, Security, UserId,
    CAPABILITIES, SIGNALS,
};
use crate::placement::{Affinity, Constraint, ConstraintOp, Spread};
use crate::resources::TaskResources;

/// Text an operator might write anywhere, YAML's awkward words included.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\u{0}]{0,12}",
        Just("yes".to_string()),
        Just("null".to_string()),
        Just("~".to_string()),
        Just("1.50".to_string()),
        Just("- a: b".to_string()),
        Just("#x".to_string()),
    ]
}

fn label() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9./_-]{0,15}"
}

fn ms(range: std::ops::RangeInclusive<u64>) -> impl Strategy<Value = Duration> {
    range.prop_map(Duration::from_millis)
}

fn constraint() -> impl Strategy<Value = Constraint> {
    let number = prop_oneof![Just("8"), Just("-3"), Just("1.5")].prop_map(str::to_string);
    (
        label(),
        0..ConstraintOp::ALL.len(),
        vec(text(), 1..4),
        number,
    )
        .prop_map(|(label, op, values, number)| {
            let op = ConstraintOp::ALL[op];
            let values = match op.arity() {
                (0, 0) => Vec::new(),
                _ if op.is_numeric() => vec![number],
                (1, 1) => values[..1].to_vec(),
                _ => values,
            };
            Constraint { label, op, values }
        })
}

fn update() -> impl Strategy<Value = UpdateSpec> {
    let amount = prop_oneof![
        (0u32..5).prop_map(Amount::Count),
        (0u32..=100).prop_map(Amount::Percent)
    ];
    (
        amount.clone(),
        amount,
        0u64..60_000,
        0u64..300_000,
        0u64..300_000,
        any::<bool>(),
        0u32..3,
    )
        .prop_filter("the rollout can move", |(u, s, ..)| {
            !(u.is_zero() && s.is_zero())
        })
        .prop_map(
            |(u, s, healthy, deadline, progress, auto_rollback, canary)| {
                let healthy_deadline = (healthy + 1).max(1000) + deadline;
                UpdateSpec {
                    max_unavailable: u,
                    max_surge: s,
                    min_healthy: Duration::from_millis(healthy),
                    healthy_deadline: Duration::from_millis(healthy_deadline),
                    progress_deadline: Duration::from_millis(healthy_deadline + progress),
                    auto_rollback,
                    canary,
                }
            },
        )
}

fn probe(readiness: bool) -> impl Strategy<Value = Probe> {
    let action = prop_oneof![
        ("[a-z/]{1,8}", vec(text(), 0..3)).prop_map(|(first, rest)| ProbeAction::Exec {
            command: std::iter::once(first).chain(rest).collect()
        }),
        ("/[a-z0-9/._-]{0,10}", 1u16..).prop_map(|(path, port)| ProbeAction::Http { path, port }),
        (1u16..).prop_map(|port| ProbeAction::Tcp { port }),
    ];
    let success = if readiness { 1u32..=1000 } else { 1u32..=1 };
    (
        action,
        ms(100..=60_000),
        ms(10..=10_000),
        success,
        1u32..=1000,
        ms(0..=60_000),
    )
        .prop_map(
            |(action, period, timeout, success_threshold, failure_threshold, initial_delay)| {
                Probe {
                    action,
                    period,
                    timeout,
                    success_threshold,
                    failure_threshold,
                    initial_delay,
                }
            },
        )
}

fn security() -> impl Strategy<Value = Security> {
    let cap = (0..CAPABILITIES.len()).prop_map(|i| CAPABILITIES[i].to_string());
    let drop = prop_oneof![cap.clone(), Just("ALL".to_string())];
    (
        any::<bool>(),
        option::of((any::<u32>(), any::<u32>()).prop_map(|(uid, gid)| UserId { uid, gid })),
        vec(cap, 0..3),
        vec(drop, 0..3),
    )
        .prop_map(|(read_only_rootfs, user, cap_add, cap_drop)| Security {
            read_only_rootfs,
            user,
            cap_add,
            cap_drop,
        })
}

fn resources() -> impl Strategy<Value = TaskResources> {
    let filter = (
        option::of("[A-Za-z0-9 -]{1,12}"),
        prop_oneof![Just(0u64), 1u64..(80 << 30)],
        any::<bool>(),
        option::of(prop_oneof![
            Just("1g.10gb"),
            Just("3g.40gb"),
            Just("1c.2g.20gb")
        ]),
    );
    (
        1u64..=1_024_000,
        MIN_MEMORY_BYTES..(1 << 40),
        0u32..4,
        filter,
        btree_set(1u16..=65535, 0..3).prop_map(|p| p.into_iter().collect::<Vec<_>>()),
    )
        .prop_map(|(cpu_millis, memory_bytes, gpus, filter, ports)| {
            let (model, min_memory_bytes, pin, mig) = filter;
            let mut r = TaskResources {
                cpu_millis,
                memory_bytes,
                gpus,
                gpu: GpuFilter::default(),
                ports,
                dynamic_ports: 0,
            };
            if gpus > 0 {
                r.gpu = GpuFilter {
                    model,
                    min_memory_bytes,
                    uuids: if pin {
                        (0..gpus).map(|i| format!("GPU-{i}")).collect()
                    } else {
                        Vec::new()
                    },
                    mig: mig.map(str::to_string),
                };
            }
            r
        })
}

fn task() -> impl Strategy<Value = TaskSpec> {
    let image = (
        "/?[a-z0-9._-]{1,8}(/[a-z0-9._-]{1,8}){0,2}",
        option::of("[A-Za-z0-9_.-]{1,10}"),
    )
        .prop_map(|(path, tag)| ImageRef {
            path,
            tag,
            registry: None,
        });
    let command = option::of(("[a-z/]{1,8}", vec(text(), 0..3)))
        .prop_map(|c| c.map(|(first, rest)| std::iter::once(first).chain(rest).collect()));
    let env = btree_map("[A-Z_][A-Z0-9_]{0,8}", text(), 0..4).prop_map(|env| {
        env.into_iter()
            .filter(|(k, _)| !k.starts_with("SKIFF_"))
            .collect()
    });
    let policy = prop_oneof![
        Just(RestartPolicy::Always),
        Just(RestartPolicy::OnFailure),
        Just(RestartPolicy::Never)
    ];
    let restart = (policy, ms(1..=60_000), ms(0..=600_000), ms(1..=86_400_000)).prop_map(
        |(policy, initial, more, reset_after)| RestartSpec {
            policy,
            backoff: Backoff {
                initial,
                max: (initial + more).min(Duration::from_secs(86_400)),
                reset_after,
            },
        },
    );
    let probes = (
        option::of(probe(false)),
        option::of(probe(true)),
        option::of(probe(false)),
    )
        .prop_map(|(liveness, readiness, startup)| Probes {
            liveness,
            readiness,
            startup,
        });
    let stop = (
        option::of((0..SIGNALS.len()).prop_map(|i| SIGNALS[i].0.to_string())),
        option::of(ms(0..=86_400_000)),
        option::of(1u32..=4 * 1024 * 1024),
    );
    (
        (
            image,
            command,
            vec(text(), 0..3),
            env,
            option::of("/[a-z0-9/]{0,10}"),
        ),
        (
            resources(),
            any::<bool>(),
            restart,
            probes,
            security(),
            stop,
        ),
    )
        .prop_map(|((image, command, args, env, workdir), rest)| {
            let (resources, host, restart, probes, security, stop) = rest;
            let (stop_signal, stop_grace, pids_limit) = stop;
            let network = if host || !resources.ports.is_empty() {
                NetworkMode::Host
            } else {
                NetworkMode::None
            };
            TaskSpec {
                image,
                command: command.unwrap_or_default(),
                args,
                env,
                workdir,
                resources,
                network,
                restart,
                probes,
                security,
                stop_signal,
                stop_grace,
                shutdown_delay: stop_grace.filter(|_| pids_limit.is_some()),
                pull: if pids_limit.is_some_and(|n| n % 2 == 0) {
                    crate::job::PullPolicy::Always
                } else {
                    crate::job::PullPolicy::IfNotPresent
                },
                // A named port the scheduler picks, on some host-network
                // tasks.
                ports: if network == NetworkMode::Host && stop_grace.is_some() {
                    vec![crate::ports::PortSpec {
                        name: "http".into(),
                        container: 0,
                        host: Some(0),
                        protocol: crate::ports::Protocol::Tcp,
                    }]
                } else {
                    Vec::new()
                },
                pids_limit,
            }
        })
}

/// What kind of job to build, with the fields only that kind takes.
#[derive(Debug, Clone)]
enum Kind {
    Service {
        replicas: u32,
        gang: bool,
        update: UpdateSpec,
    },
    Batch {
        completions: Option<u32>,
        parallelism: Option<u32>,
        backoff_limit: Option<u32>,
    },
    Gang {
        replicas: u32,
        backoff_limit: Option<u32>,
        failure: GangFailure,
        port: Option<u16>,
    },
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        (0u32..6, any::<bool>(), update()).prop_map(|(replicas, gang, update)| Kind::Service {
            replicas,
            gang,
            update: if gang { UpdateSpec::default() } else { update },
        }),
        (
            option::of(1u32..10),
            option::of(1u32..5),
            option::of(0u32..10)
        )
            .prop_map(|(completions, parallelism, backoff_limit)| Kind::Batch {
                completions,
                parallelism,
                backoff_limit
            }),
        (
            1u32..5,
            option::of(0u32..10),
            prop_oneof![Just(GangFailure::RestartGang), Just(GangFailure::Fail)],
            option::of(1u16..)
        )
            .prop_map(|(replicas, backoff_limit, failure, port)| Kind::Gang {
                replicas,
                backoff_limit,
                failure,
                port
            }),
    ]
}

prop_compose! {
    /// A spec every rule accepts: services, batch jobs and gangs, with
    /// every field the YAML form has, defaults and all.
    pub fn valid_spec()(
        name in "[a-z]([a-z0-9-]{0,10}[a-z0-9])?",
        kind in kind(),
        priority in 0u8..=100,
        distinct_hosts in any::<bool>(),
        constraints in vec(constraint(), 0..3),
        spread in option::of((label(), 1u32..=1000).prop_map(|(label, max_skew)| Spread { label, max_skew })),
        affinities in vec((constraint(), prop_oneof![-100i32..0, 1i32..=100]), 0..3),
        versions_kept in 1u32..=100,
        mut task in task(),
    ) -> JobSpec {
        if !matches!(kind, Kind::Service { .. }) && task.restart.policy == RestartPolicy::Always {
            // A batch job must be able to finish.
            task.restart.policy = RestartPolicy::OnFailure;
        }
        let mut spec = JobSpec::new(name, 1, task);
        spec.priority = priority;
        spec.distinct_hosts = distinct_hosts;
        spec.constraints = constraints;
        spec.spread = spread;
        spec.affinities = affinities
            .into_iter()
            .map(|(rule, weight)| Affinity { rule, weight })
            .collect();
        spec.versions_kept = versions_kept;
        match kind {
            Kind::Service { replicas, gang, mut update } => {
                spec.replicas = replicas;
                spec.gang = gang;
                update.canary = update.canary.min(replicas);
                spec.update = update;
            }
            Kind::Batch { completions, parallelism, backoff_limit } => {
                spec.job_type = JobType::Batch;
                spec.completions = completions;
                spec.parallelism = parallelism;
                spec.backoff_limit = backoff_limit;
            }
            Kind::Gang { replicas, backoff_limit, failure, port } => {
                spec.job_type = JobType::Batch;
                spec.gang = true;
                spec.replicas = replicas;
                spec.backoff_limit = backoff_limit;
                spec.gang_failure = failure;
                spec.master_port = port;
            }
        }
        spec
    }
}
