//! Criterion bench for what every server does per replicated job write,
//! without Raft or the network: decode the command, apply it to the state
//! machine, encode each changed record (for watchers and the save), and
//! write the changed records to sled once per `SAVE_BATCH` writes (under
//! raftbench's load the store saves about every third compaction of 20,000
//! entries). The command is applied owned, as the Raft thread does; one
//! write in three is answered (the server that proposed it builds the
//! reply). The workload is raftbench's: 1,000 jobs with `replicas: 0`,
//! each write a new env value, so each write is a new version and a
//! rollout, and each job already has a full history.
//!
//! `check_at_apply` times the shape check every command gets again at
//! apply (`skiff_store::check`), for the same job write.
//!
//! `cargo bench -p skiff-store --bench state_write` (it lives here, not in
//! bench/, because it drives the store's internals directly).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use skiff_model::JobSpec;
use skiff_store::command::{self, Decoded};
use skiff_store::statedb::{self, StateDb, Unsaved};
use skiff_store::{Command, State, Table};

const JOBS: usize = 1_000;
const SAVE_BATCH: usize = 60_000;

/// raftbench's job: `replicas: 0`, one 256-byte env value ending in `n`.
fn spec(template: &JobSpec, name: &str, n: u64) -> JobSpec {
    let mut spec = template.clone();
    spec.name = name.to_string();
    let value: String = std::iter::repeat_n('a', 256).collect();
    spec.task.env.insert("V".into(), format!("{value}{n}"));
    spec
}

struct Machine {
    state: State,
    db: StateDb,
    unsaved: Unsaved,
    index: u64,
    writes: usize,
    template: JobSpec,
    _dir: tempfile::TempDir,
}

impl Machine {
    fn new() -> Machine {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = StateDb::open(
            statedb::open_db(sled::Config::new().path(dir.path().join("state")))
                .expect("sled opens"),
        )
        .expect("state tree");
        let mut m = Machine {
            state: State::default(),
            db,
            unsaved: Unsaved::new(),
            index: 0,
            writes: 0,
            template: JobSpec::from_yaml(
                "name: b\nreplicas: 0\ntask: {image: 'oci:/bench', env: {V: ''}}",
            )
            .expect("bench spec is valid"),
            _dir: dir,
        };
        // Every job with a full history, as after a while of raftbench.
        for n in 0..12 {
            for j in 0..JOBS {
                m.write(j, n);
            }
        }
        m
    }

    fn write(&mut self, job: usize, n: u64) {
        self.index += 1;
        let data = command::encode(&Command::UpsertJob {
            spec: spec(&self.template, &format!("b{job}"), n),
        });
        let Decoded::Command(c) = command::decode(&data) else {
            panic!("command decodes")
        };
        self.state
            .apply_owned(self.index, *c, self.index.is_multiple_of(3));
        for (table, key) in std::mem::take(&mut self.state.changes) {
            let value = statedb::record_json(&self.state, table, &key);
            self.unsaved.insert((table, key), value);
        }
        self.writes += 1;
        if self.writes.is_multiple_of(SAVE_BATCH) {
            let capacity = self.unsaved.len();
            let records = std::mem::replace(&mut self.unsaved, Unsaved::with_capacity(capacity));
            let (index, unblock) = (self.state.index, self.state.last_unblock_index);
            self.db
                .commit(records, index, unblock)
                .expect("sled writes");
        }
    }
}

fn bench(c: &mut Criterion) {
    if std::env::var("SIZES").is_ok() {
        sizes();
        return;
    }
    let mut m = Machine::new();
    let mut g = c.benchmark_group("state_write");
    g.sample_size(10);
    g.throughput(Throughput::Elements(SAVE_BATCH as u64));
    let mut n = 100;
    let mut job = 0;
    // One iteration: a save interval's worth of writes and the save.
    g.bench_function("job_new_version", |b| {
        b.iter(|| {
            for _ in 0..SAVE_BATCH {
                job = (job + 7) % JOBS;
                n += 1;
                m.write(job, n);
            }
        })
    });
    // What checking a command again at apply costs of that write.
    let cmd = Command::UpsertJob {
        spec: spec(&m.template, "b1", 1),
    };
    g.throughput(Throughput::Elements(1));
    g.bench_function("check_at_apply", |b| {
        b.iter(|| skiff_store::check::check(std::hint::black_box(&cmd)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
#[allow(dead_code)]
fn sizes() {
    let mut m = Machine::new();
    m.write(1, 999);
    for (t, k) in [
        (Table::Job, "b1".to_string()),
        (Table::History, "b1".into()),
    ] {
        let v = statedb::record_json(&m.state, t, &k).unwrap();
        println!("{t:?} {k} {} {v}", v.len());
    }
    let h = &m.state.histories["b1"];
    let k = format!("b1/{}", h.versions.last().unwrap().version);
    let v = statedb::record_json(&m.state, Table::History, &k).unwrap();
    println!("version {} {v}", v.len());
    let d = m.state.deployments["b1"].last().unwrap().id.clone();
    let v = statedb::record_json(&m.state, Table::Deployment, &format!("b1/{d}")).unwrap();
    println!("deployment {} {v}", v.len());
    let v = statedb::record_json(&m.state, Table::Deployment, "b1").unwrap();
    println!("deployment idx {} {v}", v.len());
}
