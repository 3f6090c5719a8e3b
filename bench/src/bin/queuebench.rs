//! Team queues over a simulated week: four teams submit GPU jobs to a
//! cluster of 64 fake GPUs, and the real admission code
//! (`skiff_scheduler::queues::sim::QueueSim`) decides what runs, under
//! three policies fed the same arrivals: Skiff's team queues (one cohort,
//! borrowing and reclaim), plain FIFO (one queue for everybody) and strict
//! per-team partitions (four queues, no cohort). A discrete-event loop
//! moves the simulated clock from event to event (arrivals, completions)
//! and runs one admission round at each. Prints `key=value` lines.
//!
//! ```text
//! cargo run --release -p skiff-bench --bin queuebench
//! cargo run --release -p skiff-bench --bin queuebench -- --seed 2 --days 7 --load 1.2
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use skiff_bench::Rng;
use skiff_model::queue::Queue;
use skiff_model::JobSpec;
use skiff_scheduler::queues::sim::{gpu_node, gpu_queue as queue, QueueSim};

const USAGE: &str = "usage: queuebench [--seed S] [--days D] [--load L] [--window-hours H]
       [--backfill-window MINUTES] [--lending-limit GPUS]
       [--policy all|queues|fifo|partition] [--slowest N]

Simulates D days (default 7) of GPU job submissions from 4 teams (team-a
submits twice as much as each of the others) on 8 nodes x 8 fake GPUs,
seeded by S (default 1), at an offered load of L times the cluster's GPU
capacity (default 1.2), and runs the same submissions through Skiff's
admission code (QueueSim) under three policies: team queues (one cohort,
nominal 16 GPUs each, weight 1), FIFO (one queue of 64 GPUs) and strict
partitions (16 GPUs each, no cohort).

--backfill-window sets every queue's backfill window (default: the
queues' own default, 10 minutes). --lending-limit caps what each team
queue lends of its 16 GPUs (default: all of it; 0 is strict partitions).
--slowest N also prints, per policy, the N slowest 1-GPU jobs (team,
submission hour, wait, wait to first start, restarts, run time lost).

Prints key=value lines: utilization, fairness_jain (Jain's index of each
team's GPU-hours over its fair share, averaged over windows of H hours,
default 6), p50/p99_wait_s_small (1-GPU jobs), p50/p99_wait_s_large (8-GPU
jobs), preemptions, lost_gpu_h and lost_share (GPU-hours of runs later
reclaimed, and their part of all GPU-hours held: utilization counts
them), goodput (utilization without those runs), and the same keys
prefixed fifo_ and partition_.";

const NODES: usize = 8;
const GPUS_PER_NODE: usize = 8;
const CLUSTER_GPUS: u64 = (NODES * GPUS_PER_NODE) as u64;
const TEAMS: [&str; 4] = ["team-a", "team-b", "team-c", "team-d"];
/// Relative submission rates: team-a submits twice as much as the others.
const DEMAND: [f64; 4] = [2.0, 1.0, 1.0, 1.0];
/// Fair-share weights of the teams' queues (all 1).
const WEIGHT: [f64; 4] = [1.0, 1.0, 1.0, 1.0];
/// Job sizes in GPUs and their shares of jobs (Gavel's Philly-derived mix).
const SIZES: [(u32, f64); 4] = [(1, 0.70), (2, 0.10), (4, 0.15), (8, 0.05)];
/// Durations are Gavel's (10^U(1.5,3) minutes for 80% of jobs,
/// 10^U(3,4) for 20%) divided by this, so a week holds a few thousand
/// jobs and the longest runs under a day.
const DURATION_DIVISOR: f64 = 10.0;
const MINUTE_MS: f64 = 60_000.0;
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

struct Args {
    seed: u64,
    days: f64,
    load: f64,
    window_hours: f64,
    backfill: Option<Duration>,
    /// Every team queue's lending limit in GPUs (`queues` policy only).
    lending: Option<u64>,
    policies: Vec<Policy>,
    slowest: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seed: 1,
        days: 7.0,
        load: 1.2,
        window_hours: 6.0,
        backfill: None,
        lending: None,
        policies: vec![Policy::Queues, Policy::Fifo, Policy::Partition],
        slowest: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| format!("{flag}: {v:?} is not a positive number"))
        };
        match flag.as_str() {
            "--seed" => {
                args.seed = value
                    .replace('_', "")
                    .parse()
                    .map_err(|_| format!("{flag}: {value:?} is not a whole number"))?
            }
            "--days" => args.days = number(&value)?,
            "--load" => args.load = number(&value)?,
            "--window-hours" => args.window_hours = number(&value)?,
            "--backfill-window" => {
                let minutes: f64 = value
                    .parse()
                    .ok()
                    .filter(|x: &f64| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| format!("{flag}: {value:?} is not a number of minutes"))?;
                args.backfill = Some(Duration::from_secs_f64(minutes * 60.0));
            }
            "--lending-limit" => {
                let share = CLUSTER_GPUS / TEAMS.len() as u64;
                args.lending = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|n| *n <= share)
                        .ok_or_else(|| {
                            format!("{flag}: {value:?} is not a whole number of GPUs from 0 to {share} (a team's quota)")
                        })?,
                )
            }
            "--slowest" => {
                args.slowest = value
                    .parse()
                    .map_err(|_| format!("{flag}: {value:?} is not a whole number of jobs"))?
            }
            "--policy" => {
                args.policies = match value.as_str() {
                    "all" => vec![Policy::Queues, Policy::Fifo, Policy::Partition],
                    "queues" => vec![Policy::Queues],
                    "fifo" => vec![Policy::Fifo],
                    "partition" => vec![Policy::Partition],
                    other => {
                        return Err(format!(
                            "{other:?} is not a policy; expected all, queues, fifo or partition"
                        ))
                    }
                }
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

fn job(name: &str, queue: &str, gpus: u32) -> JobSpec {
    JobSpec::from_yaml(&format!(
        "name: {name}\ntype: batch\nqueue: {queue}\nreplicas: 1\ntask: {{image: 'oci:/i', resources: {{cpu: 1, memory: 1Gi, gpus: {gpus}}}}}\n"
    ))
    .expect("a valid job")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// One cohort of four queues, nominal 16 GPUs each, weight 1.
    Queues,
    /// One queue of 64 GPUs that every team submits to.
    Fifo,
    /// Four queues of 16 GPUs each, no cohort: nobody borrows.
    Partition,
}

impl Policy {
    fn prefix(self) -> &'static str {
        match self {
            Policy::Queues => "",
            Policy::Fifo => "fifo_",
            Policy::Partition => "partition_",
        }
    }

    /// The policy's queues; `lending`: each team queue lends at most that
    /// many GPUs of its quota.
    fn queues(self, lending: Option<u64>) -> Vec<Queue> {
        let share = CLUSTER_GPUS / TEAMS.len() as u64;
        match self {
            Policy::Queues => TEAMS
                .iter()
                .map(|t| {
                    let mut q = queue(t, Some("lab"), share);
                    if let Some(n) = lending {
                        q.lending_limit = Queue::from_yaml(&format!(
                            "name: x\nnamespaces: ['*']\nnominal: {{gpus: {{any: {share}}}}}\nlending_limit: {{gpus: {{any: {n}}}}}\n"
                        ))
                        .expect("a valid lending limit")
                        .lending_limit;
                    }
                    q
                })
                .collect(),
            Policy::Fifo => vec![queue("fifo", None, CLUSTER_GPUS)],
            Policy::Partition => TEAMS.iter().map(|t| queue(t, None, share)).collect(),
        }
    }

    fn queue_of(self, team: usize) -> &'static str {
        match self {
            Policy::Fifo => "fifo",
            Policy::Queues | Policy::Partition => TEAMS[team],
        }
    }
}

/// One submission of the workload.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    team: usize,
    at_ms: u64,
    gpus: u32,
    duration_ms: u64,
}

/// Uniform in [0, 1).
fn unit(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// An index drawn with probability proportional to `weights`.
fn pick(rng: &mut Rng, weights: &[f64]) -> usize {
    let mut u = unit(rng) * weights.iter().sum::<f64>();
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    weights.len() - 1
}

/// Mean of 10^U(a,b).
fn mean_pow10(a: f64, b: f64) -> f64 {
    (10f64.powf(b) - 10f64.powf(a)) / ((b - a) * std::f64::consts::LN_10)
}

/// The week's submissions: one Poisson stream whose rate makes the
/// expected GPU-time submitted `load` times the cluster's capacity, each
/// job's team drawn by [`DEMAND`], its size by [`SIZES`], its duration
/// from the heavy-tailed mix.
fn workload(seed: u64, days: f64, load: f64) -> Vec<Arrival> {
    let mut rng = Rng::new(seed);
    let mean_minutes = (0.8 * mean_pow10(1.5, 3.0) + 0.2 * mean_pow10(3.0, 4.0)) / DURATION_DIVISOR;
    let mean_gpus: f64 = SIZES.iter().map(|(g, p)| f64::from(*g) * p).sum();
    let per_minute = load * CLUSTER_GPUS as f64 / (mean_gpus * mean_minutes);
    let end_ms = days * DAY_MS as f64;
    let mut out = Vec::new();
    let mut t = 0.0f64;
    loop {
        t += -(1.0 - unit(&mut rng)).ln() / per_minute * MINUTE_MS;
        if t >= end_ms {
            break;
        }
        let team = pick(&mut rng, &DEMAND);
        let size = pick(&mut rng, &SIZES.map(|s| s.1));
        let (lo, hi) = if unit(&mut rng) < 0.8 {
            (1.5, 3.0)
        } else {
            (3.0, 4.0)
        };
        let minutes = 10f64.powf(lo + (hi - lo) * unit(&mut rng)) / DURATION_DIVISOR;
        out.push(Arrival {
            team,
            at_ms: t as u64,
            gpus: SIZES[size].0,
            duration_ms: (minutes * MINUTE_MS).round().max(1.0) as u64,
        });
    }
    out
}

/// Weighted max-min fair split of `capacity` among `demand` (water
/// filling): a team asking less than its weighted share gets what it asks,
/// the rest is split again among the others by weight.
fn water_fill(capacity: f64, demand: &[f64; 4], weight: &[f64; 4]) -> [f64; 4] {
    let mut fair = [0.0; 4];
    let mut open: Vec<usize> = (0..4).filter(|&i| demand[i] > 0.0).collect();
    let mut left = capacity;
    while !open.is_empty() && left > 1e-12 {
        let total_w: f64 = open.iter().map(|&i| weight[i]).sum();
        let sated: Vec<usize> = open
            .iter()
            .copied()
            .filter(|&i| demand[i] - fair[i] <= left * weight[i] / total_w)
            .collect();
        if sated.is_empty() {
            for &i in &open {
                fair[i] += left * weight[i] / total_w;
            }
            break;
        }
        for &i in &sated {
            left -= demand[i] - fair[i];
            fair[i] = demand[i];
        }
        open.retain(|i| !sated.contains(i));
    }
    fair
}

/// Jain's index of `x`: 1 when all are equal, 1/n at worst.
fn jain(x: &[f64]) -> f64 {
    let sum: f64 = x.iter().sum();
    let sq: f64 = x.iter().map(|v| v * v).sum();
    if sq == 0.0 {
        1.0
    } else {
        sum * sum / (x.len() as f64 * sq)
    }
}

/// The `p`-th percentile (0..=100) by nearest rank.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A job as the simulation follows it.
#[derive(Debug, Clone)]
struct Rec {
    key: String,
    running: bool,
    done: bool,
    /// Bumped when a run is cut short, so its completion event is stale.
    generation: u32,
    started_ms: u64,
    /// The start of its last (completed) run.
    final_start_ms: Option<u64>,
    first_start_ms: Option<u64>,
    /// Run time thrown away by reclaims.
    lost_ms: u64,
}

/// Integrals over the measured window.
struct Meter {
    from_ms: u64,
    to_ms: u64,
    window_ms: u64,
    /// GPU-ms held, all teams.
    used: f64,
    /// Of `used`, GPU-ms of runs later cut short by a reclaim.
    lost: f64,
    /// Per window: GPU-ms each team held, and its fair share of GPU-ms.
    got: Vec<[f64; 4]>,
    fair: Vec<[f64; 4]>,
}

impl Meter {
    fn new(from_ms: u64, to_ms: u64, window_ms: u64) -> Meter {
        let n = (to_ms - from_ms).div_ceil(window_ms) as usize;
        Meter {
            from_ms,
            to_ms,
            window_ms,
            used: 0.0,
            lost: 0.0,
            got: vec![[0.0; 4]; n],
            fair: vec![[0.0; 4]; n],
        }
    }

    /// A run of `gpus` GPUs from `a` to `b` was cut short: what it held
    /// in the measured span is lost.
    fn lose(&mut self, a: u64, b: u64, gpus: u32) {
        let (a, b) = (a.max(self.from_ms), b.min(self.to_ms));
        if a < b {
            self.lost += (u64::from(gpus) * (b - a)) as f64;
        }
    }

    /// The state (`running` and `pending` GPUs per team) held from `a`
    /// to `b`.
    fn add(&mut self, a: u64, b: u64, running: &[u64; 4], pending: &[u64; 4]) {
        let (mut a, b) = (a.max(self.from_ms), b.min(self.to_ms));
        if a >= b {
            return;
        }
        let demand: [f64; 4] =
            std::array::from_fn(|i| (running[i] + pending[i]).min(CLUSTER_GPUS) as f64);
        let fair = water_fill(CLUSTER_GPUS as f64, &demand, &WEIGHT);
        let total: u64 = running.iter().sum();
        self.used += (total * (b - a)) as f64;
        while a < b {
            let w = ((a - self.from_ms) / self.window_ms) as usize;
            let end = (self.from_ms + (w as u64 + 1) * self.window_ms).min(b);
            let dt = (end - a) as f64;
            for i in 0..4 {
                self.got[w][i] += running[i] as f64 * dt;
                self.fair[w][i] += fair[i] * dt;
            }
            a = end;
        }
    }
}

/// What one policy's run measured.
struct Outcome {
    utilization: f64,
    /// Utilisation without the runs later cut short by reclaims.
    goodput: f64,
    fairness: Vec<f64>,
    /// Waits by job size ([`SIZES`] order).
    waits_s: [Vec<f64>; 4],
    /// Waits of 1-GPU jobs by team.
    small_waits_s: [Vec<f64>; 4],
    preemptions: u64,
    /// Of the preemptions, those made for a queue that borrows (fair
    /// sharing) rather than one taking back its nominal quota.
    by_borrowers: u64,
    /// The most times one job was reclaimed.
    most_restarts: u32,
    /// The slowest 1-GPU jobs, slowest first (`--slowest`).
    slowest: Vec<String>,
    lost_gpu_h: f64,
    gpu_h_by_team: [f64; 4],
    rounds: u64,
    makespan_ms: u64,
    wall_s: f64,
}

/// How one run is set up, beyond the policy.
#[derive(Debug, Clone, Copy)]
struct Setup {
    days: f64,
    window_ms: u64,
    /// Every queue's backfill window; `None`: the queues' default.
    backfill: Option<Duration>,
    /// Every team queue's lending limit in GPUs; `None`: no limit.
    lending: Option<u64>,
    /// How many of the slowest 1-GPU jobs to describe.
    slowest: usize,
}

fn simulate(policy: Policy, arrivals: &[Arrival], setup: Setup) -> Outcome {
    let started = Instant::now();
    let nodes = (0..NODES)
        .map(|i| gpu_node(&format!("n{i}"), GPUS_PER_NODE))
        .collect();
    let mut queues = policy.queues(setup.lending);
    for q in &mut queues {
        q.backfill_window = setup.backfill;
    }
    let mut sim = QueueSim::new(nodes, queues);
    let end_ms = (setup.days * DAY_MS as f64) as u64;
    // The first seventh (day 1 of a week) fills the cluster; not measured.
    let mut meter = Meter::new(end_ms / 7, end_ms, setup.window_ms);
    let mut recs: Vec<Rec> = Vec::with_capacity(arrivals.len());
    let mut by_key: HashMap<String, usize> = HashMap::with_capacity(arrivals.len());
    // Completions: (time, job, generation).
    let mut ends: BinaryHeap<Reverse<(u64, usize, u32)>> = BinaryHeap::new();
    let (mut running, mut pending) = ([0u64; 4], [0u64; 4]);
    let mut gpu_ms_by_team = [0f64; 4];
    let (mut lost_gpu_ms, mut by_borrowers) = (0f64, 0u64);
    let (mut next, mut last_ms, mut rounds) = (0usize, 0u64, 0u64);
    loop {
        let t = match (arrivals.get(next), ends.peek()) {
            (None, None) => break,
            (Some(a), None) => a.at_ms,
            (None, Some(Reverse(e))) => e.0,
            (Some(a), Some(Reverse(e))) => a.at_ms.min(e.0),
        };
        meter.add(last_ms, t, &running, &pending);
        last_ms = t;
        sim.now_ms = t;
        while let Some(&Reverse((at, j, generation))) = ends.peek() {
            if at > t {
                break;
            }
            ends.pop();
            let rec = &mut recs[j];
            if rec.generation != generation || !rec.running {
                continue;
            }
            rec.running = false;
            rec.done = true;
            let a = &arrivals[j];
            running[a.team] -= u64::from(a.gpus);
            gpu_ms_by_team[a.team] += (u64::from(a.gpus) * a.duration_ms) as f64;
            sim.finish(&rec.key);
        }
        while let Some(a) = arrivals.get(next) {
            if a.at_ms > t {
                break;
            }
            let name = format!("j{next:06}-{}", TEAMS[a.team]);
            let key = sim.submit(job(&name, policy.queue_of(a.team), a.gpus));
            by_key.insert(key.clone(), next);
            recs.push(Rec {
                key,
                running: false,
                done: false,
                generation: 0,
                started_ms: 0,
                final_start_ms: None,
                first_start_ms: None,
                lost_ms: 0,
            });
            pending[a.team] += u64::from(a.gpus);
            next += 1;
        }
        rounds += 1;
        for d in sim.round() {
            let Some(adm) = d.admission else {
                continue;
            };
            for victim in &adm.reclaimed {
                let j = by_key[victim];
                let (a, rec) = (&arrivals[j], &mut recs[j]);
                assert!(rec.running, "reclaimed job {victim} was not running");
                // It waits again and will start over.
                rec.running = false;
                rec.generation += 1;
                rec.lost_ms += t - rec.started_ms;
                running[a.team] -= u64::from(a.gpus);
                pending[a.team] += u64::from(a.gpus);
                meter.lose(rec.started_ms, t, a.gpus);
                let ran = ((t - rec.started_ms) * u64::from(a.gpus)) as f64;
                lost_gpu_ms += ran;
                gpu_ms_by_team[a.team] += ran;
                if adm.borrowing {
                    by_borrowers += 1;
                }
            }
            let j = by_key[&d.job];
            let (a, rec) = (&arrivals[j], &mut recs[j]);
            assert!(!rec.running && !rec.done, "job {} admitted twice", d.job);
            rec.running = true;
            rec.started_ms = t;
            rec.final_start_ms = Some(t);
            rec.first_start_ms.get_or_insert(t);
            running[a.team] += u64::from(a.gpus);
            pending[a.team] -= u64::from(a.gpus);
            ends.push(Reverse((t + a.duration_ms, j, rec.generation)));
        }
    }
    assert_eq!(recs.len(), arrivals.len());
    assert!(recs.iter().all(|r| r.done), "every job ran to its end");

    let mut waits_s: [Vec<f64>; 4] = Default::default();
    let mut small_waits_s: [Vec<f64>; 4] = Default::default();
    for (a, r) in arrivals.iter().zip(&recs) {
        let start = r.final_start_ms.expect("every job started");
        let size = SIZES.iter().position(|s| s.0 == a.gpus).expect("a size");
        let wait = (start - a.at_ms) as f64 / 1e3;
        waits_s[size].push(wait);
        if a.gpus == 1 {
            small_waits_s[a.team].push(wait);
        }
    }
    let mut small: Vec<(u64, usize)> = (0..recs.len())
        .filter(|&j| arrivals[j].gpus == 1)
        .map(|j| (recs[j].final_start_ms.unwrap_or(0) - arrivals[j].at_ms, j))
        .collect();
    small.sort_by_key(|&(w, j)| (Reverse(w), j));
    let s = |ms: u64| ms / 1000;
    let slowest = small
        .iter()
        .take(setup.slowest)
        .map(|&(wait, j)| {
            let (a, r) = (&arrivals[j], &recs[j]);
            format!(
                "{} submitted_h={:.1} wait_s={} first_start_wait_s={} restarts={} lost_run_s={} duration_s={}",
                TEAMS[a.team].replace('-', "_"),
                a.at_ms as f64 / HOUR_MS as f64,
                s(wait),
                s(r.first_start_ms.unwrap_or(0) - a.at_ms),
                r.generation,
                s(r.lost_ms),
                s(a.duration_ms),
            )
        })
        .collect();
    for w in waits_s.iter_mut().chain(&mut small_waits_s) {
        w.sort_by(f64::total_cmp);
    }
    let fairness = meter
        .got
        .iter()
        .zip(&meter.fair)
        .filter_map(|(got, fair)| {
            let x: Vec<f64> = (0..4)
                .filter(|&i| fair[i] > 0.0)
                .map(|i| got[i] / fair[i])
                .collect();
            (!x.is_empty()).then(|| jain(&x))
        })
        .collect();
    let span = CLUSTER_GPUS as f64 * (meter.to_ms - meter.from_ms).max(1) as f64;
    Outcome {
        utilization: meter.used / span,
        goodput: (meter.used - meter.lost) / span,
        fairness,
        waits_s,
        small_waits_s,
        preemptions: sim.preemptions,
        by_borrowers,
        most_restarts: recs.iter().map(|r| r.generation).max().unwrap_or(0),
        slowest,
        lost_gpu_h: lost_gpu_ms / HOUR_MS as f64,
        gpu_h_by_team: gpu_ms_by_team.map(|v| v / HOUR_MS as f64),
        rounds,
        makespan_ms: last_ms,
        wall_s: started.elapsed().as_secs_f64(),
    }
}

impl Outcome {
    fn fairness_mean(&self) -> f64 {
        self.fairness.iter().sum::<f64>() / self.fairness.len().max(1) as f64
    }

    fn p99_small(&self) -> f64 {
        percentile(&self.waits_s[0], 99.0)
    }
}

fn report(prefix: &str, o: &Outcome) {
    println!("{prefix}utilization={:.3}", o.utilization);
    println!("{prefix}goodput={:.3}", o.goodput);
    println!("{prefix}fairness_jain={:.3}", o.fairness_mean());
    println!(
        "{prefix}fairness_jain_min={:.3}",
        o.fairness.iter().copied().fold(1.0, f64::min)
    );
    for (size, w) in SIZES.iter().zip(&o.waits_s) {
        let name = match size.0 {
            1 => "small".to_string(),
            8 => "large".to_string(),
            g => format!("{g}gpu"),
        };
        println!("{prefix}p50_wait_s_{name}={:.3}", percentile(w, 50.0));
        println!("{prefix}p99_wait_s_{name}={:.3}", percentile(w, 99.0));
    }
    let mut all: Vec<f64> = o.waits_s.iter().flatten().copied().collect();
    all.sort_by(f64::total_cmp);
    println!("{prefix}p50_wait_s_all={:.3}", percentile(&all, 50.0));
    println!("{prefix}p99_wait_s_all={:.3}", percentile(&all, 99.0));
    for (team, w) in TEAMS.iter().zip(&o.small_waits_s) {
        let team = team.replace('-', "_");
        println!("{prefix}p99_wait_s_small_{team}={:.3}", percentile(w, 99.0));
    }
    println!("{prefix}preemptions={}", o.preemptions);
    println!("{prefix}preemptions_for_borrowers={}", o.by_borrowers);
    println!("{prefix}most_restarts_one_job={}", o.most_restarts);
    println!("{prefix}lost_gpu_h={:.3}", o.lost_gpu_h);
    let total: f64 = o.gpu_h_by_team.iter().sum();
    // Of the GPU-hours held (what `utilization` counts), the part spent
    // on runs later reclaimed.
    println!("{prefix}lost_share={:.3}", o.lost_gpu_h / total.max(1e-9));
    for (team, h) in TEAMS.iter().zip(o.gpu_h_by_team) {
        let team = team.replace('-', "_");
        println!("{prefix}gpu_h_{team}={h:.3}");
        println!("{prefix}share_{team}={:.3}", h / total.max(1e-9));
    }
    println!("{prefix}rounds={}", o.rounds);
    println!(
        "{prefix}makespan_h={:.3}",
        o.makespan_ms as f64 / HOUR_MS as f64
    );
    println!("{prefix}wall_s={:.3}", o.wall_s);
    for (i, line) in o.slowest.iter().enumerate() {
        println!("{prefix}slowest_small_{}={line}", i + 1);
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}\n");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(if e.is_empty() { 0 } else { 2 });
        }
    };
    let arrivals = workload(args.seed, args.days, args.load);
    let setup = Setup {
        days: args.days,
        window_ms: (args.window_hours * HOUR_MS as f64).max(1.0) as u64,
        backfill: args.backfill,
        lending: args.lending,
        slowest: args.slowest,
    };
    println!("seed={}", args.seed);
    println!("days={:.3}", args.days);
    println!("load={:.3}", args.load);
    println!("gpus={CLUSTER_GPUS}");
    println!("window_hours={:.3}", args.window_hours);
    if let Some(n) = args.lending {
        println!("lending_limit_gpus={n}");
    }
    let backfill = args
        .backfill
        .unwrap_or(skiff_model::queue::DEFAULT_BACKFILL_WINDOW);
    println!("backfill_window_min={:.3}", backfill.as_secs_f64() / 60.0);
    println!("jobs={}", arrivals.len());
    for (size, _) in SIZES {
        println!(
            "jobs_{size}gpu={}",
            arrivals.iter().filter(|a| a.gpus == size).count()
        );
    }
    let capacity_ms = CLUSTER_GPUS as f64 * args.days * DAY_MS as f64;
    let offered = |team: Option<usize>| {
        arrivals
            .iter()
            .filter(|a| team.is_none_or(|t| a.team == t))
            .map(|a| f64::from(a.gpus) * a.duration_ms as f64)
            .sum::<f64>()
            / capacity_ms
    };
    println!("offered_load={:.3}", offered(None));
    for (i, team) in TEAMS.iter().enumerate() {
        println!(
            "offered_load_{}={:.3}",
            team.replace('-', "_"),
            offered(Some(i))
        );
    }
    let mut results = Vec::new();
    for &policy in &args.policies {
        let o = simulate(policy, &arrivals, setup);
        report(policy.prefix(), &o);
        results.push((policy, o));
    }
    let find = |p: Policy| results.iter().find(|r| r.0 == p).map(|r| &r.1);
    if let (Some(q), Some(f)) = (find(Policy::Queues), find(Policy::Fifo)) {
        println!(
            "utilization_vs_fifo={:.3}",
            q.utilization / f.utilization.max(1e-9)
        );
        println!("goodput_vs_fifo={:.3}", q.goodput / f.goodput.max(1e-9));
        println!(
            "target_utilization_within_5pct_of_fifo={}",
            q.utilization >= 0.95 * f.utilization
        );
        println!(
            "target_fairness_at_least_0_95={}",
            q.fairness_mean() >= 0.95
        );
        println!(
            "target_p99_wait_small_below_fifo={}",
            q.p99_small() < f.p99_small()
        );
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn water_filling_gives_small_demands_what_they_ask_and_splits_the_rest() {
        let equal = [1.0; 4];
        assert_eq!(water_fill(64.0, &[64.0; 4], &equal), [16.0; 4]);
        assert_eq!(
            water_fill(64.0, &[64.0, 4.0, 10.0, 0.0], &equal),
            [50.0, 4.0, 10.0, 0.0]
        );
        assert_eq!(
            water_fill(64.0, &[40.0, 40.0, 8.0, 0.0], &equal),
            [28.0, 28.0, 8.0, 0.0]
        );
        assert_eq!(
            water_fill(64.0, &[64.0, 64.0, 0.0, 0.0], &[3.0, 1.0, 1.0, 1.0]),
            [48.0, 16.0, 0.0, 0.0]
        );
    }

    #[test]
    fn jain_is_one_when_equal_and_one_over_n_when_one_gets_all() {
        assert!((jain(&[0.5, 0.5, 0.5]) - 1.0).abs() < 1e-12);
        assert!((jain(&[1.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn the_workload_is_seeded_and_near_its_offered_load() {
        let a = workload(7, 7.0, 1.2);
        assert_eq!(a.len(), workload(7, 7.0, 1.2).len());
        let gpu_ms: f64 = a
            .iter()
            .map(|j| f64::from(j.gpus) * j.duration_ms as f64)
            .sum();
        let load = gpu_ms / (CLUSTER_GPUS as f64 * 7.0 * DAY_MS as f64);
        assert!((0.9..1.5).contains(&load), "{load}");
        assert!(a.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    }
}
