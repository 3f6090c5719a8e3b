//! How the client API says no: one place that turns a broken rule or a
//! refusal into a gRPC status. Every INVALID_ARGUMENT names its fields in
//! the message (`field: rule`, one per line) and again as
//! google.rpc.BadRequest field violations in the status details, which
//! gRPC's richer error model lets any client decode.

use skiff_model::error::clipped;
use skiff_model::SpecError;
use skiff_store::{Outcome, Refusal};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// INVALID_ARGUMENT for one field of the request.
pub(crate) fn invalid(field: &str, rule: impl Into<String>) -> Status {
    let rule = rule.into();
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {rule}"),
        ErrorDetails::with_bad_request_violation(field, rule),
    )
}

/// A refused spec: every broken rule, in the message and as field
/// violations whose fields are paths of the request
/// (`spec.task.resources.cpu_millis`).
pub(crate) fn invalid_spec(e: &SpecError) -> Status {
    let violations: Vec<FieldViolation> = e
        .field_errors()
        .iter()
        .map(|f| FieldViolation::new(skiff_proto::wire_field(&f.field), f.message.clone()))
        .collect();
    let violations = if violations.is_empty() {
        vec![FieldViolation::new("spec", e.to_string())]
    } else {
        violations
    };
    Status::with_error_details(
        Code::InvalidArgument,
        e.to_string(),
        ErrorDetails::with_bad_request(violations),
    )
}

/// The status for a command the state machine refused, with its reason:
/// NOT_FOUND when it names a job or node that does not exist,
/// PERMISSION_DENIED when a namespace's policy forbids it,
/// RESOURCE_EXHAUSTED when its quota does not hold it, otherwise
/// FAILED_PRECONDITION (the job or rollout is not in a state the command
/// applies to).
pub(crate) fn refusal_status(refusal: &Refusal) -> Status {
    if refusal.is_not_found() {
        Status::not_found(refusal.to_string())
    } else if refusal.is_invalid() {
        Status::invalid_argument(refusal.to_string())
    } else if refusal.is_already_exists() {
        Status::already_exists(refusal.to_string())
    } else if refusal.is_policy_denied() {
        Status::permission_denied(refusal.to_string())
    } else if refusal.is_quota_exceeded() {
        Status::resource_exhausted(refusal.to_string())
    } else {
        Status::failed_precondition(refusal.to_string())
    }
}

/// A refusal as its status; any other outcome a command should not have
/// had as INTERNAL.
pub(crate) fn not_done(outcome: Outcome) -> Status {
    match outcome {
        Outcome::Refused(why) => refusal_status(&why),
        other => Status::internal(format!("unexpected outcome {other:?}")),
    }
}

/// The namespace a request names: empty means `default`; else a DNS
/// label.
pub(crate) fn namespace_of(ns: &str) -> Result<&str, Status> {
    if ns.is_empty() {
        return Ok(skiff_model::DEFAULT_NAMESPACE);
    }
    skiff_model::check_dns_label(ns)
        .map_err(|rule| invalid("namespace", format!("{:?} {rule}", clipped(ns))))?;
    Ok(ns)
}

/// The namespace a list or watch is narrowed to (empty: none).
pub(crate) fn namespace_filter(ns: &str) -> Result<&str, Status> {
    if ns.is_empty() {
        Ok(ns)
    } else {
        namespace_of(ns)
    }
}

/// The namespace a list or watch reads: the one given, and with a job
/// named but no namespace, `default` (where the job is named); empty when
/// neither narrows it.
pub(crate) fn listed_namespace(job: &str, ns: &str) -> Result<String, Status> {
    if job.is_empty() {
        namespace_filter(ns).map(str::to_string)
    } else {
        namespace_of(ns).map(str::to_string)
    }
}

/// The key of the job a request names by `name` in namespace `ns`.
pub(crate) fn job_key(ns: &str, name: &str) -> Result<String, Status> {
    check_name("name", name)?;
    Ok(skiff_model::job_key(namespace_of(ns)?, name))
}

/// A name the request must carry: present, and not absurdly long.
pub(crate) fn check_name(field: &str, name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(invalid(field, "is required"));
    }
    if name.len() > 253 {
        return Err(invalid(field, "must be at most 253 characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_maps_to_the_code_of_its_kind() {
        for (refusal, code) in [
            (Refusal::job_not_found("web"), Code::NotFound),
            (Refusal::node_not_found("n1"), Code::NotFound),
            (
                Refusal::NoRollout { job: "web".into() },
                Code::FailedPrecondition,
            ),
            (
                Refusal::AlreadyRuns {
                    job: "web".into(),
                    version: 2,
                },
                Code::FailedPrecondition,
            ),
            (
                Refusal::NodeNameTaken { node: "n1".into() },
                Code::AlreadyExists,
            ),
            (
                Refusal::Invalid {
                    why: "name: too long".into(),
                },
                Code::InvalidArgument,
            ),
        ] {
            let status = refusal_status(&refusal);
            assert_eq!(status.code(), code, "{refusal}");
            assert_eq!(status.message(), refusal.to_string());
        }
    }

    #[test]
    fn a_broken_spec_names_every_field_in_the_message_and_the_details() {
        let err = skiff_model::JobSpec::from_yaml(
            "name: Web\nreplicas: 5000\ntask: {image: 'oci:/i', stop_grace: 5}",
        )
        .unwrap_err();
        let status = invalid_spec(&err);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("name:"), "{}", status.message());
        let bad = status
            .get_details_bad_request()
            .expect("BadRequest details");
        let fields: Vec<&str> = bad
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(
            fields,
            ["spec.name", "spec.replicas", "spec.task.stop_grace_ms"],
            "{}",
            status.message()
        );
        let one = invalid("name", "is required");
        assert_eq!(one.message(), "name: is required");
        let bad = one.get_details_bad_request().unwrap();
        assert_eq!(bad.field_violations[0].field, "name");
    }
}
