//! Load generator for the scheduler: places a synthetic workload on a
//! synthetic cluster, one evaluation per job, the way the leader does
//! (reconcile against a view, then commit the plan to it), and compares the
//! packing with a first-fit and a power-of-two-choices baseline computed
//! in the same run. Prints `key=value` lines.
//!
//! ```text
//! cargo run --release -p skiff-bench --bin schedbench -- --nodes 5000 --tasks 10000 --shape basic
//! cargo run --release -p skiff-bench --bin schedbench -- --nodes 10000 --tasks 100000 --shape mixed
//! ```

use std::process::ExitCode;
use std::time::Instant;

use skiff_bench::{first_fit, lower_bound, nodes, power_of_two, workload, Placed, Shape};
use skiff_model::{Allocation, Resources};
use skiff_scheduler::{reconcile, Algorithm, ClusterView, Config};

const USAGE: &str = "usage: schedbench --nodes N --tasks M [--shape basic|mixed] [--seed S] \
[--scheduler binpack|spread] [--candidates K]

Places M tasks on N synthetic nodes with Skiff's scheduler, one evaluation
per job, and with two baselines (first fit; power of two choices). Prints
key=value lines: placements_per_sec, nodes_used, lower_bound_nodes,
packing_ratio (nodes used / lower bound), and the same for each baseline.";

struct Args {
    nodes: usize,
    tasks: usize,
    shape: Shape,
    seed: u64,
    algorithm: Algorithm,
    candidates: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        nodes: 0,
        tasks: 0,
        shape: Shape::Basic,
        seed: 1,
        algorithm: Algorithm::Binpack,
        candidates: Config::default().candidates,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| {
            v.replace('_', "")
                .parse::<u64>()
                .map_err(|_| format!("{flag}: {v:?} is not a whole number"))
        };
        match flag.as_str() {
            "--nodes" => args.nodes = number(&value)? as usize,
            "--tasks" => args.tasks = number(&value)? as usize,
            "--seed" => args.seed = number(&value)?,
            "--candidates" => args.candidates = number(&value)?.clamp(1, 1024) as u32,
            "--shape" => args.shape = value.parse()?,
            "--scheduler" => args.algorithm = value.parse()?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.nodes == 0 || args.tasks == 0 {
        return Err("--nodes and --tasks are required and must be more than 0".into());
    }
    Ok(args)
}

/// Nanoseconds this thread has run on a CPU (Linux), if known: a rate
/// over CPU time is what one core sustains, whatever else the machine runs.
fn cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Wall-clock and on-CPU seconds of a piece of work.
struct Timer {
    wall: Instant,
    cpu: Option<u64>,
}

impl Timer {
    fn start() -> Timer {
        Timer {
            wall: Instant::now(),
            cpu: cpu_ns(),
        }
    }

    fn stop(&self) -> (f64, Option<f64>) {
        let wall = self.wall.elapsed().as_secs_f64();
        let cpu = match (self.cpu, cpu_ns()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1e9),
            _ => None,
        };
        (wall, cpu)
    }
}

/// `node-01234` -> 1234.
fn node_number(name: &str) -> usize {
    name.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `node-01234-gpu5` -> bit 5.
fn gpu_mask(uuids: &[String]) -> u64 {
    uuids
        .iter()
        .filter_map(|u| u.rsplit("gpu").next().and_then(|n| n.parse::<u32>().ok()))
        .fold(0, |m, i| m | 1 << i)
}

fn report(prefix: &str, p: &Placed, (secs, cpu): (f64, Option<f64>), bound: u64) {
    let used = p.nodes_used();
    println!(
        "{prefix}placements_per_sec={:.0}",
        p.placed as f64 / secs.max(1e-9)
    );
    if let Some(cpu) = cpu {
        println!(
            "{prefix}placements_per_cpu_sec={:.0}",
            p.placed as f64 / cpu.max(1e-9)
        );
    }
    println!("{prefix}placed={}", p.placed);
    println!("{prefix}unplaced={}", p.unplaced);
    println!("{prefix}nodes_used={used}");
    println!(
        "{prefix}packing_ratio={:.4}",
        used as f64 / bound.max(1) as f64
    );
    println!("{prefix}cpu_util={:.4}", p.util.0);
    println!("{prefix}memory_util={:.4}", p.util.1);
    println!("{prefix}gpu_util={:.4}", p.util.2);
    if p.multi_gpu > 0 {
        println!(
            "{prefix}multi_gpu_nvlink_ratio={:.4}",
            p.multi_gpu_nvlink as f64 / p.multi_gpu as f64
        );
    }
    println!("{prefix}seconds={secs:.3}");
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
    let cluster = nodes(args.shape, args.nodes);
    let jobs = workload(args.shape, args.tasks, args.seed);
    let bound = lower_bound(&cluster[0], &jobs);
    println!(
        "shape={}",
        match args.shape {
            Shape::Basic => "basic",
            Shape::Mixed => "mixed",
        }
    );
    println!("nodes={}", args.nodes);
    println!("tasks={}", args.tasks);
    println!("jobs={}", jobs.len());
    println!("scheduler={}", args.algorithm);
    println!("candidates={}", args.candidates);
    println!("lower_bound_nodes={bound}");

    // Skiff: one evaluation per job against the view, each plan committed
    // to the view as the state machine would commit it.
    let started = Instant::now();
    let no_allocs: &[Allocation] = &[];
    let mut view = ClusterView::new(&cluster, no_allocs, |_| Some(50));
    println!("view_build_ms={:.1}", started.elapsed().as_secs_f64() * 1e3);
    let cfg = Config {
        algorithm: args.algorithm,
        seed: args.seed,
        candidates: args.candidates,
        ..Config::default()
    };
    let mut plans = Vec::with_capacity(jobs.len());
    let timer = Timer::start();
    for (i, job) in jobs.iter().enumerate() {
        let plan = reconcile(&job.spec.name, Some(job), &view, &cfg);
        let ids: Vec<String> = (0..plan.placements.len())
            .map(|r| format!("{i:06}-{r}"))
            .collect();
        view.commit(job, &plan, &ids, 2);
        plans.push(plan);
    }
    let secs = timer.stop();
    let mut skiff = Placed::new(cluster.len());
    for (job, plan) in jobs.iter().zip(&plans) {
        for p in &plan.placements {
            skiff.record(
                node_number(&p.node),
                gpu_mask(&p.gpus),
                &job.spec.task.resources,
            );
        }
        skiff.unplaced += u64::from(plan.unplaced);
    }
    let (mut cap, mut used) = (Resources::ZERO, Resources::ZERO);
    for n in &cluster {
        if skiff.per_node[node_number(&n.name)] > 0 {
            let (c, u) = view.node_usage(&n.name).expect("node in view");
            cap = cap.saturating_add(c);
            used = used.saturating_add(u.amount);
        }
    }
    let ratio = |u: u64, c: u64| if c == 0 { 0.0 } else { u as f64 / c as f64 };
    skiff.util = (
        ratio(used.cpu_millis, cap.cpu_millis),
        ratio(used.memory_bytes, cap.memory_bytes),
        ratio(u64::from(used.gpus), u64::from(cap.gpus)),
    );
    report("", &skiff, secs, bound);

    let timer = Timer::start();
    let ff = first_fit(&cluster, &jobs);
    report("first_fit_", &ff, timer.stop(), bound);

    let timer = Timer::start();
    let p2 = power_of_two(&cluster, &jobs, args.seed);
    report("power_of_two_", &p2, timer.stop(), bound);
    ExitCode::SUCCESS
}
