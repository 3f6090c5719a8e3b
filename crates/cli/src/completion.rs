//! `skiff completion bash|zsh|fish`: the script a shell sources, and the
//! job, node and allocation names it completes from the cluster.
//!
//! The mechanism is clap_complete's dynamic completion. The script is a
//! few lines: on each TAB the shell runs `SKIFF_COMPLETE=<shell> skiff --
//! <the words typed>`, and `main` answers that ([`answer_if_asked`]) from
//! the same clap command tree the parser uses, before anything else runs.
//! So the subcommands and flags offered never drift from the binary, and
//! the arguments that name a job, a node or an allocation (found by their
//! value name, [`names_for`]) get candidates read from the cluster: stale
//! reads from the server that `--server`/`SKIFF_SERVER` names, at most
//! [`FETCH_LIMIT`], and nothing at all (no error in the shell) when no
//! server answers.
//!
//! Imports only `args` (how to reach the cluster) of the binary's rooms.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Arg, Args, Command, ValueEnum};
use clap_complete::engine::{ArgValueCandidates, CompletionCandidate};
use clap_complete::env::EnvCompleter;
use clap_complete::CompleteEnv;
use skiff_client::{Client, ClientConfig};

use crate::args::ClientOpts;
use skiff_model::{AllocStatus, JobType};

/// The variable that asks the binary for completions instead of running a
/// command (a name of our own, so that a `COMPLETE` set for some other
/// program does not turn skiff into a completer).
pub const ENV_VAR: &str = "SKIFF_COMPLETE";

/// The longest a TAB waits for the cluster's names. A completion that
/// hangs the shell is worse than none; a stale list read from a server on
/// the same network answers in milliseconds.
pub const FETCH_LIMIT: Duration = Duration::from_secs(2);

/// Stands for the completer in clap_complete's bash script until it is
/// quoted in (no word the script template replaces is part of it).
const SELF: &str = "SKIFF_PATH_TO_SELF";

/// As many characters of an allocation id as `skiff get allocs` shows.
const SHORT_ID: usize = 8;

const INSTALL: &str = "\
Install (the script calls skiff on each TAB, so regenerate it after upgrading skiff):
  bash   source <(skiff completion bash)               # in ~/.bashrc
         skiff completion bash > /etc/bash_completion.d/skiff
  zsh    mkdir -p ~/.zfunc && skiff completion zsh > ~/.zfunc/_skiff
         # and in ~/.zshrc, before compinit: fpath=(~/.zfunc $fpath)
         # or, after compinit: source <(skiff completion zsh)
  fish   skiff completion fish > ~/.config/fish/completions/skiff.fish

Job, node and allocation names are read from the cluster that --server or
SKIFF_SERVER names (default http://127.0.0.1:7700) as typed on the command
line being completed: stale reads, at most 2 s, nothing when no server answers.";

#[derive(Args)]
#[command(after_help = INSTALL)]
pub struct CompletionArgs {
    /// The shell to print the completion script for.
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// What kind of name an argument takes, and so what a TAB offers for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Names {
    Jobs,
    Nodes,
    /// Every allocation (`skiff logs`: a finished one's output is useful).
    Allocs,
    /// Only running allocations (`skiff exec`).
    RunningAllocs,
}

/// `skiff completion SHELL`: prints the script to stdout.
pub fn print_script(args: CompletionArgs) -> anyhow::Result<()> {
    let argv0 = std::env::args_os().next().unwrap_or_else(|| "skiff".into());
    let cwd = std::env::current_dir().ok();
    let mut out = Vec::new();
    script(args.shell, &completer_for(&argv0, cwd.as_deref()), &mut out)?;
    std::io::stdout().write_all(&out)?;
    Ok(())
}

/// The script that registers `completer` as the completer of `skiff` in
/// `shell`.
pub fn script(shell: Shell, completer: &str, out: &mut dyn Write) -> std::io::Result<()> {
    let env: &dyn EnvCompleter = match shell {
        Shell::Bash => &clap_complete::env::Bash,
        Shell::Zsh => &clap_complete::env::Zsh,
        Shell::Fish => &clap_complete::env::Fish,
    };
    if shell == Shell::Bash {
        // clap_complete's bash script puts the completer, already quoted,
        // inside double quotes: a path with a space would not run. Quote
        // it here instead, for bash, once.
        let mut script = Vec::new();
        env.write_registration(ENV_VAR, "skiff", "skiff", SELF, &mut script)?;
        let quoted = format!("'{}'", completer.replace('\'', r"'\''"));
        let script = String::from_utf8_lossy(&script).replace(&format!("\"{SELF}\""), &quoted);
        return out.write_all(script.as_bytes());
    }
    env.write_registration(ENV_VAR, "skiff", "skiff", completer, out)?;
    if shell == Shell::Zsh {
        // Loaded from fpath, the file is the body of `_skiff`: the first
        // TAB runs it, which only defines the completer; call it then too
        // (as kubectl's script does). Sourced, `funcstack[1]` is the file.
        writeln!(
            out,
            "if [ \"$funcstack[1]\" = \"_skiff\" ]; then\n    \
             _clap_dynamic_completer_skiff \"$@\"\nfi"
        )?;
    }
    Ok(())
}

/// The program the script runs on each TAB: skiff as it was called to print
/// the script (a bare name is looked up in PATH again; a relative path is
/// made absolute, since the shell's directory changes).
pub fn completer_for(argv0: &std::ffi::OsStr, cwd: Option<&Path>) -> String {
    let path = PathBuf::from(argv0);
    let path = match cwd {
        Some(cwd) if path.is_relative() && path.components().count() > 1 => cwd.join(path),
        _ => path,
    };
    path.to_string_lossy().into_owned()
}

/// Answers a completion request (`SKIFF_COMPLETE=<shell> skiff -- WORDS`)
/// and exits; returns when the binary was not called for completions.
pub fn answer_if_asked(cli: fn() -> Command) {
    if std::env::var_os(ENV_VAR).is_some() {
        // Whatever goes wrong while completing, the shell's line is no
        // place for a panic message: the TAB offers nothing instead.
        std::panic::set_hook(Box::new(|_| {}));
    }
    CompleteEnv::with_factory(move || with_cluster_names(cli()))
        .var(ENV_VAR)
        .complete();
}

/// `cmd` with every argument that names a job, node or allocation given
/// candidates from the cluster.
pub fn with_cluster_names(cmd: Command) -> Command {
    let name = cmd.get_name().to_string();
    cmd.mut_args(|arg| match names_for(&name, &arg) {
        Some(names) => arg.add(ArgValueCandidates::new(move || fetch(names))),
        None => arg,
    })
    .mut_subcommands(with_cluster_names)
}

/// What `arg` of the (sub)command `command` names, by its value name:
/// `JOB`, `NODE` or `ALLOC` (as `<JOB>` in the help, and as `--job` and
/// `--node` filters are called).
pub fn names_for(command: &str, arg: &Arg) -> Option<Names> {
    if !arg.get_action().takes_values() {
        return None;
    }
    let value_name = match arg.get_value_names().and_then(|v| v.first()) {
        Some(v) => v.to_string(),
        None => arg.get_id().as_str().to_uppercase(),
    };
    match (command, value_name.as_str()) {
        (_, "JOB") => Some(Names::Jobs),
        (_, "NODE") => Some(Names::Nodes),
        ("exec", "ALLOC") => Some(Names::RunningAllocs),
        (_, "ALLOC") => Some(Names::Allocs),
        _ => None,
    }
}

/// The names of one kind, from the server the command line names; empty
/// when none answers within [`FETCH_LIMIT`].
fn fetch(names: Names) -> Vec<CompletionCandidate> {
    let env = std::env::var("SKIFF_SERVER").ok();
    let words = typed_words(std::env::args_os());
    let opts = ClientOpts {
        server: servers_in(&words, env.as_deref()),
        config: option_in(&words, "config")
            .pop()
            .or_else(|| std::env::var("SKIFF_CONFIG").ok())
            .map(PathBuf::from),
        stale: true,
        namespace: option_in(&words, "namespace")
            .pop()
            .or_else(|| std::env::var("SKIFF_NAMESPACE").ok()),
        all_namespaces: false,
    };
    let Ok(config) = opts.client_config() else {
        return Vec::new();
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    runtime
        .block_on(async { tokio::time::timeout(FETCH_LIMIT, ask(names, &config)).await })
        .ok()
        .flatten()
        .unwrap_or_default()
}

async fn ask(names: Names, config: &ClientConfig) -> Option<Vec<CompletionCandidate>> {
    let mut client = Client::connect_config(config).await.ok()?.stale(true);
    let candidates = match names {
        Names::Jobs => {
            let mut jobs = client.list_jobs().await.ok()?;
            jobs.sort_by(|a, b| a.0.name().cmp(b.0.name()));
            jobs.iter()
                .map(|(job, s)| {
                    let kind = job.spec.job_type;
                    let mut help =
                        format!("{}, {}/{} running", kind.as_str(), s.running, s.desired);
                    match (kind, s.state.as_str()) {
                        (_, "") => {}
                        (JobType::Batch, state) => help.push_str(&format!(", {state}")),
                        (JobType::Service, state) => help.push_str(&format!(", rollout {state}")),
                    }
                    CompletionCandidate::new(job.name()).help(Some(help.into()))
                })
                .collect()
        }
        Names::Nodes => {
            let mut nodes = client.list_nodes().await.ok()?;
            nodes.sort_by(|a, b| a.node.name.cmp(&b.node.name));
            nodes
                .iter()
                .map(|n| {
                    CompletionCandidate::new(&n.node.name).help(Some(n.node.status_text().into()))
                })
                .collect()
        }
        Names::Allocs | Names::RunningAllocs => {
            let mut allocs = client.list_allocs(None, None).await.ok()?;
            allocs.sort_by(|a, b| (&a.job, a.replica, &a.id).cmp(&(&b.job, b.replica, &b.id)));
            let ids: Vec<&str> = allocs.iter().map(|a| a.id.as_str()).collect();
            let short = unique_prefixes(&ids, SHORT_ID);
            allocs
                .iter()
                .zip(short)
                .filter(|(a, _)| names == Names::Allocs || a.status == AllocStatus::Running)
                .map(|(a, id)| {
                    let help = format!(
                        "{} #{} on {}, {}",
                        a.job,
                        a.replica,
                        a.node,
                        a.status.as_str()
                    );
                    CompletionCandidate::new(id).help(Some(help.into()))
                })
                .collect()
        }
    };
    Some(candidates)
}

/// The words of the command line being completed: what follows the `--`
/// that the script puts before them (`skiff -- skiff describe job w`).
fn typed_words(args: impl IntoIterator<Item = OsString>) -> Vec<String> {
    args.into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .skip_while(|a| a != "--")
        .skip(1)
        .collect()
}

/// The values of `--NAME` in a command typed as `words` (program name
/// first), up to a `--` of its own (after it, `skiff exec ID -- cmd`, the
/// words are the container's).
fn option_in(words: &[String], name: &str) -> Vec<String> {
    let mut given = Vec::new();
    let mut rest = words.iter().skip(1);
    let flag = format!("--{name}");
    let prefix = format!("--{name}=");
    while let Some(w) = rest.next() {
        if w == "--" {
            break;
        } else if *w == flag {
            given.extend(rest.next().cloned());
        } else if let Some(v) = w.strip_prefix(&prefix) {
            given.push(v.to_string());
        }
    }
    given
}

/// The servers a command typed as `words` names: its `--server` options,
/// else `SKIFF_SERVER` (`env`); comma-separated lists are split, as the
/// commands do. Empty: the configuration file's servers (or the default).
pub fn servers_in(words: &[String], env: Option<&str>) -> Vec<String> {
    let given = option_in(words, "server");
    let list = if given.is_empty() {
        env.unwrap_or_default().to_string()
    } else {
        given.join(",")
    };
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// For each of `ids`, in order, its shortest prefix of at least `min`
/// characters that no other id starts with: what `skiff get allocs` shows
/// (8 characters) unless two ids share those.
pub fn unique_prefixes(ids: &[&str], min: usize) -> Vec<String> {
    let mut sorted: Vec<&str> = ids.to_vec();
    sorted.sort_unstable();
    let common = |a: &str, b: &str| a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    ids.iter()
        .map(|id| {
            let at = sorted.binary_search(id).unwrap_or(0);
            let before = at.checked_sub(1).map_or(0, |i| common(sorted[i], id) + 1);
            let after = sorted.get(at + 1).map_or(0, |n| common(n, id) + 1);
            let mut len = min.max(before).max(after).min(id.len());
            while !id.is_char_boundary(len) {
                len += 1;
            }
            id[..len].to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::CommandFactory;

    use super::*;

    /// `(command path, argument id, names)` for every argument of the real
    /// command tree that completes names from the cluster.
    fn name_arguments(cmd: &Command, path: &str, out: &mut BTreeSet<(String, String, String)>) {
        for arg in cmd.get_arguments() {
            if let Some(names) = names_for(cmd.get_name(), arg) {
                out.insert((
                    path.to_string(),
                    arg.get_id().to_string(),
                    format!("{names:?}"),
                ));
            }
        }
        for sub in cmd.get_subcommands() {
            name_arguments(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn job_node_and_allocation_arguments_complete_names_from_the_cluster_and_no_others() {
        let mut found = BTreeSet::new();
        name_arguments(&crate::Cli::command(), "skiff", &mut found);
        let want: BTreeSet<(String, String, String)> = [
            ("skiff describe job", "name", "Jobs"),
            ("skiff delete job", "name", "Jobs"),
            ("skiff rollout status", "job", "Jobs"),
            ("skiff rollout history", "job", "Jobs"),
            ("skiff rollout undo", "job", "Jobs"),
            ("skiff rollout pause", "job", "Jobs"),
            ("skiff rollout resume", "job", "Jobs"),
            ("skiff rollout promote", "job", "Jobs"),
            ("skiff scale", "job", "Jobs"),
            ("skiff get allocs", "job", "Jobs"),
            ("skiff get endpoints", "job", "Jobs"),
            ("skiff describe node", "name", "Nodes"),
            ("skiff describe alloc", "id", "Allocs"),
            ("skiff node cordon", "name", "Nodes"),
            ("skiff node drain", "name", "Nodes"),
            ("skiff node uncordon", "name", "Nodes"),
            ("skiff node remove", "name", "Nodes"),
            ("skiff node gpu reset", "node", "Nodes"),
            ("skiff cordon", "name", "Nodes"),
            ("skiff drain", "name", "Nodes"),
            ("skiff uncordon", "name", "Nodes"),
            ("skiff get allocs", "node", "Nodes"),
            ("skiff image ls", "node", "Nodes"),
            ("skiff image pull", "node", "Nodes"),
            ("skiff watch", "job", "Jobs"),
            ("skiff watch", "node", "Nodes"),
            ("skiff events", "job", "Jobs"),
            ("skiff events", "node", "Nodes"),
            ("skiff top nodes", "job", "Jobs"),
            ("skiff top nodes", "node", "Nodes"),
            ("skiff top allocs", "job", "Jobs"),
            ("skiff top allocs", "node", "Nodes"),
            ("skiff logs", "alloc", "Allocs"),
            ("skiff exec", "alloc", "RunningAllocs"),
        ]
        .into_iter()
        .map(|(p, a, n)| (p.to_string(), a.to_string(), n.to_string()))
        .collect();
        let missing: Vec<_> = want.difference(&found).collect();
        let extra: Vec<_> = found.difference(&want).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "missing: {missing:#?}\nunexpected: {extra:#?}"
        );
    }

    #[test]
    fn every_name_argument_gets_candidates_attached_and_no_other_argument_does() {
        fn check(cmd: &Command) {
            for arg in cmd.get_arguments() {
                assert_eq!(
                    arg.get::<ArgValueCandidates>().is_some(),
                    names_for(cmd.get_name(), arg).is_some(),
                    "{} {}",
                    cmd.get_name(),
                    arg.get_id()
                );
            }
            cmd.get_subcommands().for_each(check);
        }
        check(&with_cluster_names(crate::Cli::command()));
    }

    #[test]
    fn the_name_arguments_show_what_they_name_in_the_help() {
        let mut cmd = crate::Cli::command();
        for (path, want) in [
            (&["describe", "job"][..], "<JOB>"),
            (&["describe", "node"][..], "<NODE>"),
            (&["delete", "job"][..], "<JOB>"),
            (&["node", "cordon"][..], "<NODE>"),
            (&["logs"][..], "<ALLOC>"),
            (&["exec"][..], "<ALLOC>"),
        ] {
            let mut sub = &mut cmd;
            for p in path {
                sub = sub.find_subcommand_mut(p).unwrap();
            }
            let usage = sub.render_usage().to_string();
            assert!(usage.contains(want), "{path:?}: {usage}");
        }
    }

    fn script_text(shell: Shell) -> String {
        let mut out = Vec::new();
        script(shell, "/opt/skiff bin/skiff", &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_bash_script_asks_skiff_for_the_words_on_each_tab() {
        let s = script_text(Shell::Bash);
        assert!(s.contains("SKIFF_COMPLETE=\"bash\""), "{s}");
        assert!(
            s.contains("'/opt/skiff bin/skiff' -- \"${words[@]}\""),
            "{s}"
        );
        assert!(s.contains("-F _clap_complete_skiff skiff"), "{s}");
        let mut out = Vec::new();
        script(Shell::Bash, "/opt/o'neil/skiff", &mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains(r"'/opt/o'\''neil/skiff' -- "), "{s}");
    }

    #[test]
    fn the_zsh_script_registers_for_skiff_and_completes_on_the_first_tab_from_fpath() {
        let s = script_text(Shell::Zsh);
        assert!(s.starts_with("#compdef skiff\n"), "{s}");
        assert!(s.contains("SKIFF_COMPLETE=\"zsh\""), "{s}");
        assert!(
            s.contains("'/opt/skiff bin/skiff' -- \"${words[@]}\""),
            "{s}"
        );
        assert!(
            s.contains("compdef _clap_dynamic_completer_skiff skiff"),
            "{s}"
        );
        assert!(
            s.contains("if [ \"$funcstack[1]\" = \"_skiff\" ]; then"),
            "{s}"
        );
    }

    #[test]
    fn the_fish_script_asks_skiff_for_the_words_on_each_tab() {
        let s = script_text(Shell::Fish);
        assert!(s.contains("--command skiff"), "{s}");
        assert!(
            s.contains("SKIFF_COMPLETE=fish '/opt/skiff bin/skiff' --"),
            "{s}"
        );
        assert!(s.contains("commandline --current-token"), "{s}");
    }

    #[test]
    fn the_completer_is_skiff_as_called_with_a_relative_path_made_absolute() {
        let cwd = Path::new("/home/op");
        assert_eq!(completer_for("skiff".as_ref(), Some(cwd)), "skiff");
        assert_eq!(
            completer_for("./target/debug/skiff".as_ref(), Some(cwd)),
            "/home/op/./target/debug/skiff"
        );
        assert_eq!(
            completer_for("/usr/local/bin/skiff".as_ref(), Some(cwd)),
            "/usr/local/bin/skiff"
        );
    }

    fn words(line: &str) -> Vec<String> {
        line.split(' ').map(String::from).collect()
    }

    #[test]
    fn names_come_from_the_servers_the_command_line_names_else_skiff_server_else_the_config() {
        let env = Some("http://a:7700,http://b:7700");
        assert_eq!(
            servers_in(&words("skiff describe job --server http://x:1 w"), env),
            ["http://x:1"]
        );
        assert_eq!(
            servers_in(&words("skiff logs --server=http://x:1,http://y:2 "), env),
            ["http://x:1", "http://y:2"]
        );
        assert_eq!(
            servers_in(&words("skiff scale w"), env),
            ["http://a:7700", "http://b:7700"]
        );
        assert!(servers_in(&words("skiff scale w"), None).is_empty());
        assert!(servers_in(&words("skiff exec 3f -- prog --server http://x:1"), None).is_empty());
        assert_eq!(
            option_in(&words("skiff get jobs --config /c/admin.conf"), "config"),
            ["/c/admin.conf"]
        );
    }

    #[test]
    fn the_typed_words_are_those_after_the_scripts_double_dash() {
        let args = ["/bin/skiff", "--", "skiff", "exec", "3f", "--", "ls"].map(OsString::from);
        assert_eq!(typed_words(args), words("skiff exec 3f -- ls"));
    }

    #[test]
    fn allocation_ids_complete_to_eight_characters_or_as_many_as_tell_them_apart() {
        let ids = [
            "3f2a9c11aaaa",
            "77aa0000bbbb",
            "3f2a9c11abcd",
            "3f2a9c12ffff",
            "ab",
        ];
        assert_eq!(
            unique_prefixes(&ids, 8),
            ["3f2a9c11aa", "77aa0000", "3f2a9c11ab", "3f2a9c12", "ab"]
        );
    }
}
