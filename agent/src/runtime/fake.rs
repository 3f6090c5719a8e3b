//! A recording fake of the [`Runtime`]: it remembers every call in order
//! and answers from what the test scripted, so the reconciler's executor,
//! its stop escalation and adoption run without runc and without root.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{ContainerState, ExecOutput, Runtime, RuntimeError};
use crate::shim::ShimArgs;

/// One call the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Start(ShimArgs),
    Kill { id: String, signal: String },
    Delete { id: String, force: bool },
    State { id: String },
    Exec { id: String, command: Vec<String> },
}

type KillHook = Box<dyn Fn(&str, &str) + Send + Sync>;

/// The fake runtime. Every verb succeeds unless [`FakeRuntime::fail`]
/// says otherwise; `state` knows only what [`FakeRuntime::set_state`] set.
#[derive(Default)]
pub struct FakeRuntime {
    calls: Mutex<Vec<Call>>,
    states: Mutex<HashMap<String, ContainerState>>,
    failing: Mutex<HashMap<&'static str, String>>,
    exec: Mutex<Vec<ExecOutput>>,
    on_kill: Mutex<Option<KillHook>>,
}

impl FakeRuntime {
    pub fn new() -> FakeRuntime {
        FakeRuntime::default()
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The calls that were not `state` queries.
    pub fn actions(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| !matches!(c, Call::State { .. }))
            .collect()
    }

    /// What `state` reports for container `id` until it is deleted.
    pub fn set_state(&self, id: &str, status: &str) {
        self.states.lock().unwrap().insert(
            id.to_string(),
            ContainerState {
                id: id.to_string(),
                pid: 4242,
                status: status.to_string(),
            },
        );
    }

    /// Makes every later call of `verb` (`start`, `kill`, `delete`,
    /// `state`, `exec`) fail with `message`.
    pub fn fail(&self, verb: &'static str, message: &str) {
        self.failing
            .lock()
            .unwrap()
            .insert(verb, message.to_string());
    }

    /// Runs `hook(id, signal)` on every kill (the test's container reacts).
    pub fn on_kill(&self, hook: impl Fn(&str, &str) + Send + Sync + 'static) {
        *self.on_kill.lock().unwrap() = Some(Box::new(hook));
    }

    /// What `exec` answers, one per call, the last one again once it is
    /// the only one left.
    pub fn answer_exec(&self, outputs: Vec<ExecOutput>) {
        *self.exec.lock().unwrap() = outputs;
    }

    fn record(&self, call: Call, verb: &'static str, id: &str) -> Result<(), RuntimeError> {
        self.calls.lock().unwrap().push(call);
        match self.failing.lock().unwrap().get(verb) {
            Some(message) => Err(RuntimeError::Failed {
                verb,
                id: id.to_string(),
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }
}

impl Runtime for FakeRuntime {
    async fn start(&self, args: &ShimArgs) -> Result<(), RuntimeError> {
        self.record(Call::Start(args.clone()), "start", &args.id)?;
        self.set_state(&args.id, "running");
        Ok(())
    }

    async fn kill(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        let call = Call::Kill {
            id: id.to_string(),
            signal: signal.to_string(),
        };
        self.record(call, "kill", id)?;
        if let Some(hook) = &*self.on_kill.lock().unwrap() {
            hook(id, signal);
        }
        Ok(())
    }

    async fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let call = Call::Delete {
            id: id.to_string(),
            force,
        };
        self.record(call, "delete", id)?;
        self.states.lock().unwrap().remove(id);
        Ok(())
    }

    async fn state(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError> {
        self.record(Call::State { id: id.to_string() }, "state", id)?;
        Ok(self.states.lock().unwrap().get(id).cloned())
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        _timeout: Option<Duration>,
    ) -> Result<ExecOutput, RuntimeError> {
        let call = Call::Exec {
            id: id.to_string(),
            command: command.to_vec(),
        };
        self.record(call, "exec", id)?;
        let mut outputs = self.exec.lock().unwrap();
        Ok(match outputs.len() {
            0 => ExecOutput::default(),
            1 => outputs[0].clone(),
            _ => outputs.remove(0),
        })
    }
}
