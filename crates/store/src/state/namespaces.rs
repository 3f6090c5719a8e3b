//! Namespaces in the state machine: an admin's description of each (its
//! policy and quota), and admission of a job's new spec against them.
//! Admission runs here, at apply, so it is serialised with every other
//! write: concurrent applies can never together exceed a quota.

use skiff_model::namespace::{Namespace, Usage};
use skiff_model::{split_job_key, JobSpec, DEFAULT_NAMESPACE};

use super::access_record::ACCESS_KEY;
use super::refusal::Refusal;
use super::table::Table;
use super::{Outcome, State};

impl State {
    pub(super) fn put_namespace(&mut self, ns: &Namespace) -> Outcome {
        if self.access.namespaces.get(&ns.name) != Some(ns) {
            self.access.namespaces.insert(ns.name.clone(), ns.clone());
            self.touch(Table::Access, ACCESS_KEY);
        }
        Outcome::AccessChanged
    }

    pub(super) fn delete_namespace(&mut self, name: &str) -> Outcome {
        let jobs = self.jobs_in(name).count();
        if jobs > 0 {
            return Outcome::Refused(Refusal::NamespaceInUse {
                name: name.to_string(),
                jobs,
            });
        }
        if self.access.namespaces.remove(name).is_none() {
            return Outcome::Refused(Refusal::NamespaceMissing {
                name: name.to_string(),
            });
        }
        self.access.registry_logins.remove(name);
        self.touch(Table::Access, ACCESS_KEY);
        Outcome::AccessChanged
    }

    /// Whether jobs may live in `ns`: `default` always, others once an
    /// admin described them.
    pub fn namespace_exists(&self, ns: &str) -> bool {
        ns == DEFAULT_NAMESPACE || self.access.namespaces.contains_key(ns)
    }

    /// The jobs of namespace `ns`, by key.
    pub fn jobs_in<'a>(
        &'a self,
        ns: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a skiff_model::Job)> + 'a {
        self.jobs
            .iter()
            .filter(move |(key, _)| split_job_key(key).0 == ns)
    }

    /// What the jobs of `ns` other than `except` hold against its quota.
    pub fn namespace_usage(&self, ns: &str, except: &str) -> Usage {
        let mut used = Usage::default();
        for (key, job) in self.jobs_in(ns) {
            if key != except {
                used.add(&Usage::of_job(&job.spec));
            }
        }
        used
    }

    /// Checks `spec`, about to become the spec of job `key`, against its
    /// namespace: the namespace exists, its policy allows the
    /// capabilities, and its quota holds the job with everything else.
    pub(super) fn admit(&self, key: &str, spec: &JobSpec) -> Result<(), Refusal> {
        let name = spec.namespace.as_str();
        if !self.namespace_exists(name) {
            return Err(Refusal::NamespaceMissing {
                name: name.to_string(),
            });
        }
        let Some(ns) = self.access.namespaces.get(name) else {
            // `default`, undescribed: Docker's capabilities, no host
            // network, no quota.
            skiff_model::namespace::check_network(name, false, spec)
                .map_err(|why| Refusal::PolicyDenied { why })?;
            skiff_model::namespace::check_capabilities(name, &[], spec)
                .map_err(|why| Refusal::PolicyDenied { why })?;
            return self.admit_to_queue(spec);
        };
        skiff_model::namespace::check_network(name, ns.policy.host_network, spec)
            .map_err(|why| Refusal::PolicyDenied { why })?;
        ns.check_capabilities(spec)
            .map_err(|why| Refusal::PolicyDenied { why })?;
        if !ns.quota.is_empty() {
            ns.check_quota(&self.namespace_usage(name, key), spec)
                .map_err(|why| Refusal::QuotaExceeded { why })?;
        }
        self.admit_to_queue(spec)
    }

    /// Why an upsert of `spec` would be refused now (its namespace, policy,
    /// quota or queue), without applying anything: `skiff plan`.
    pub fn refusal_of(&self, spec: &JobSpec) -> Option<Refusal> {
        self.admit(&spec.key(), spec).err()
    }

    /// A job naming a queue: the queue exists and lets the job's
    /// namespace submit.
    fn admit_to_queue(&self, spec: &JobSpec) -> Result<(), Refusal> {
        let Some(name) = &spec.queue else {
            return Ok(());
        };
        let Some(q) = self.access.queues.get(name) else {
            return Err(Refusal::QueueMissing { name: name.clone() });
        };
        if !q.admits_namespace(&spec.namespace) {
            return Err(Refusal::PolicyDenied {
                why: format!(
                    "queue: namespace {:?} may not submit to queue {name:?} (it admits {}); an admin adds it with `skiff queue apply`",
                    spec.namespace,
                    q.namespaces.join(", ")
                ),
            });
        }
        Ok(())
    }

    pub(super) fn put_queue(&mut self, q: &skiff_model::queue::Queue) -> Outcome {
        if self.access.queues.get(&q.name) != Some(q) {
            self.access.queues.insert(q.name.clone(), q.clone());
            self.touch(Table::Access, ACCESS_KEY);
        }
        Outcome::AccessChanged
    }

    pub(super) fn delete_queue(&mut self, name: &str) -> Outcome {
        let named: Vec<&str> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.spec.queue.as_deref() == Some(name))
            .map(|(k, _)| k.as_str())
            .collect();
        if !named.is_empty() {
            return Outcome::Refused(Refusal::QueueInUse {
                name: name.to_string(),
                jobs: named.len(),
                named: named.iter().take(5).map(|k| k.to_string()).collect(),
            });
        }
        if self.access.queues.remove(name).is_none() {
            return Outcome::Refused(Refusal::QueueMissing {
                name: name.to_string(),
            });
        }
        self.touch(Table::Access, ACCESS_KEY);
        Outcome::AccessChanged
    }

    pub(super) fn put_sync(&mut self, source: &skiff_model::sync::SyncSource) -> Outcome {
        use skiff_model::sync::SyncRecord;
        match self.access.syncs.get_mut(&source.name) {
            Some(r) if r.source == *source => return Outcome::AccessChanged,
            Some(r) => {
                // Another place to read from: what runs is no longer that
                // place's commit, so the next look applies rather than
                // calls the differences drift.
                let moved = (
                    &r.source.repo,
                    &r.source.branch,
                    &r.source.path,
                    &r.source.namespace,
                ) != (
                    &source.repo,
                    &source.branch,
                    &source.path,
                    &source.namespace,
                );
                if moved {
                    r.status.commit.clear();
                }
                r.source = source.clone();
            }
            None => {
                self.access.syncs.insert(
                    source.name.clone(),
                    SyncRecord {
                        source: source.clone(),
                        status: Default::default(),
                    },
                );
            }
        }
        self.touch(Table::Access, ACCESS_KEY);
        Outcome::AccessChanged
    }

    pub(super) fn delete_sync(&mut self, name: &str) -> Outcome {
        if self.access.syncs.remove(name).is_none() {
            return Outcome::Refused(Refusal::SyncMissing {
                name: name.to_string(),
            });
        }
        self.touch(Table::Access, ACCESS_KEY);
        Outcome::AccessChanged
    }

    pub(super) fn report_sync(
        &mut self,
        name: &str,
        status: &skiff_model::sync::SyncStatus,
    ) -> Outcome {
        let Some(r) = self.access.syncs.get_mut(name) else {
            return Outcome::Refused(Refusal::SyncMissing {
                name: name.to_string(),
            });
        };
        if r.status != *status {
            r.status = status.clone();
            self.touch(Table::Access, ACCESS_KEY);
        }
        Outcome::AccessChanged
    }
}

#[cfg(test)]
mod tests {
    use skiff_model::namespace::{Namespace, Policy, Quota};

    use super::super::tests::spec;
    use super::*;
    use crate::command::Command;

    fn in_ns(ns: &str, name: &str, replicas: u32) -> JobSpec {
        let mut s = spec(name, replicas, "64Mi");
        s.namespace = ns.to_string();
        s
    }

    fn refusal(o: Outcome) -> Refusal {
        match o {
            Outcome::Refused(r) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_host_network_needs_the_namespaces_leave_except_for_a_gang() {
        let mut s = State::default();
        let mut host = in_ns("default", "web", 1);
        host.task.network = skiff_model::NetworkMode::Host;
        let upsert = |spec: &JobSpec| Command::UpsertJob { spec: spec.clone() };
        let Refusal::PolicyDenied { why } = refusal(s.apply(1, &upsert(&host))) else {
            panic!("not a policy refusal")
        };
        assert!(why.contains("task.network: host is not allowed"), "{why}");
        // A gang's ranks talk over the host's network: always allowed.
        let mut gang = host.clone();
        gang.name = "train".into();
        gang.gang = true;
        assert!(matches!(
            s.apply(2, &upsert(&gang)),
            Outcome::JobUpserted { .. }
        ));
        let allowing = Namespace {
            name: "default".into(),
            policy: Policy {
                host_network: true,
                ..Policy::default()
            },
            ..Namespace::default()
        };
        s.apply(
            3,
            &Command::PutNamespace {
                namespace: allowing,
            },
        );
        assert!(matches!(
            s.apply(4, &upsert(&host)),
            Outcome::JobUpserted { .. }
        ));
    }

    #[test]
    fn jobs_live_only_in_described_namespaces_and_keep_their_keys_apart() {
        let mut s = State::default();
        let r = refusal(s.apply(
            1,
            &Command::UpsertJob {
                spec: in_ns("lab", "web", 1),
            },
        ));
        assert_eq!(r, Refusal::NamespaceMissing { name: "lab".into() });
        let lab = Namespace {
            name: "lab".into(),
            ..Namespace::default()
        };
        s.apply(2, &Command::PutNamespace { namespace: lab });
        s.apply(
            3,
            &Command::UpsertJob {
                spec: in_ns("lab", "web", 1),
            },
        );
        s.apply(
            4,
            &Command::UpsertJob {
                spec: in_ns("default", "web", 2),
            },
        );
        assert_eq!(s.jobs["lab/web"].spec.replicas, 1);
        assert_eq!(s.jobs["web"].spec.replicas, 2);
        let r = refusal(s.apply(5, &Command::DeleteNamespace { name: "lab".into() }));
        assert_eq!(
            r,
            Refusal::NamespaceInUse {
                name: "lab".into(),
                jobs: 1
            }
        );
        s.apply(
            6,
            &Command::DeleteJob {
                name: "lab/web".into(),
            },
        );
        s.apply(7, &Command::DeleteNamespace { name: "lab".into() });
        assert!(!s.namespace_exists("lab"));
    }

    #[test]
    fn policy_and_quota_hold_on_apply_scale_and_undo() {
        let mut s = State::default();
        let lab = Namespace {
            name: "lab".into(),
            policy: Policy::default(),
            quota: Quota {
                memory_bytes: Some(256 << 20),
                allocations: Some(4),
                ..Quota::default()
            },
        };
        s.apply(1, &Command::PutNamespace { namespace: lab });
        let mut caps = in_ns("lab", "priv", 1);
        caps.task.security.cap_add = vec!["SYS_ADMIN".into()];
        let r = refusal(s.apply(2, &Command::UpsertJob { spec: caps }));
        assert!(matches!(r, Refusal::PolicyDenied { .. }), "{r}");
        assert!(r.to_string().contains("SYS_ADMIN"), "{r}");

        s.apply(
            3,
            &Command::UpsertJob {
                spec: in_ns("lab", "a", 2),
            },
        );
        // 2 x 64Mi used; 3 more would make 320Mi of 256Mi.
        let r = refusal(s.apply(
            4,
            &Command::UpsertJob {
                spec: in_ns("lab", "b", 3),
            },
        ));
        assert!(
            r.to_string()
                .contains("memory 128Mi used of 256Mi, 128Mi left"),
            "{r}"
        );
        // The job's own old spec does not count against its new one.
        s.apply(
            5,
            &Command::UpsertJob {
                spec: in_ns("lab", "a", 4),
            },
        );
        let r = refusal(s.apply(
            6,
            &Command::ScaleJob {
                name: "lab/a".into(),
                replicas: 5,
            },
        ));
        assert!(matches!(r, Refusal::QuotaExceeded { .. }), "{r}");
        assert_eq!(s.jobs["lab/a"].spec.replicas, 4);
        // The default namespace has no quota unless an admin gives it one.
        s.apply(
            7,
            &Command::UpsertJob {
                spec: in_ns("default", "big", 100),
            },
        );
    }
}
