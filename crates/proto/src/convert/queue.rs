//! Team queues on the wire and in the model. The wire form is read
//! leniently (absent parts are empty); the servers validate the result
//! (a backfill window that is not a duration is refused there, naming
//! the field).

use skiff_model::namespace::Quota;
use skiff_model::queue as m;

use crate::pb;

fn quota_to_wire(q: &Quota) -> Option<pb::NamespaceQuota> {
    (!q.is_empty()).then(|| pb::NamespaceQuota {
        cpu_millis: q.cpu_millis,
        memory_bytes: q.memory_bytes,
        allocations: q.allocations,
        gpus: q.gpus.clone().into_iter().collect(),
    })
}

fn quota_from_wire(q: Option<pb::NamespaceQuota>) -> Quota {
    let q = q.unwrap_or_default();
    Quota {
        cpu_millis: q.cpu_millis,
        memory_bytes: q.memory_bytes,
        allocations: q.allocations,
        gpus: q.gpus.into_iter().collect(),
    }
}

impl From<&m::Queue> for pb::Queue {
    fn from(q: &m::Queue) -> Self {
        pb::Queue {
            name: q.name.clone(),
            cohort: q.cohort.clone().unwrap_or_default(),
            weight: Some(q.weight),
            namespaces: q.namespaces.clone(),
            nominal: quota_to_wire(&q.nominal),
            borrowing_limit: quota_to_wire(&q.borrowing_limit),
            lending_limit: quota_to_wire(&q.lending_limit),
            backfill_window: q
                .backfill_window
                .map(skiff_model::duration::format_duration),
        }
    }
}

impl TryFrom<pb::Queue> for m::Queue {
    type Error = String;
    /// Fails only on a backfill window that is not a duration; the
    /// message names the field.
    fn try_from(q: pb::Queue) -> Result<Self, String> {
        let backfill_window = match q.backfill_window {
            Some(text) => Some(
                skiff_model::duration::parse_duration(&text)
                    .map_err(|rule| format!("backfill_window: {rule}"))?,
            ),
            None => None,
        };
        Ok(m::Queue {
            name: q.name,
            cohort: (!q.cohort.is_empty()).then_some(q.cohort),
            weight: q.weight.unwrap_or(1),
            namespaces: q.namespaces,
            nominal: quota_from_wire(q.nominal),
            borrowing_limit: quota_from_wire(q.borrowing_limit),
            lending_limit: quota_from_wire(q.lending_limit),
            backfill_window,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_survives_the_wire() {
        let q = m::Queue::from_yaml(
            "name: team-a\ncohort: lab\nweight: 3\nnamespaces: [team-a, ml]\nnominal: {cpu: 8, memory: 4Gi, gpus: {H100: 4, any: 1}}\nborrowing_limit: {gpus: {H100: 2}}\nlending_limit: {memory: 1Gi}\nbackfill_window: 90s\n",
        )
        .unwrap();
        assert_eq!(m::Queue::try_from(pb::Queue::from(&q)).unwrap(), q);
        let bare = m::Queue::from_yaml("name: b\nnamespaces: ['*']\n").unwrap();
        assert_eq!(m::Queue::try_from(pb::Queue::from(&bare)).unwrap(), bare);
        let bad = pb::Queue {
            backfill_window: Some("soon".into()),
            ..pb::Queue::from(&bare)
        };
        assert!(m::Queue::try_from(bad)
            .unwrap_err()
            .starts_with("backfill_window:"));
    }
}
