//! `skiff registry login|ls|logout`: the registry logins a namespace
//! holds (admin only). The servers keep the password sealed with their
//! secrets key and hand it only to the nodes that run the namespace's
//! allocations, which use it for that namespace's images alone.

use anyhow::Context;
use clap::Subcommand;

use super::connect;
use crate::args::ClientOpts;
use crate::output::{emit, print_list, Format};

#[derive(Subcommand)]
pub enum RegistryCmd {
    /// Store a namespace's login for a registry (admin only; -n names the
    /// namespace, `default` unless given). The password or access token
    /// is read from standard input, never from a flag, so it stays out of
    /// shell history and process lists. Setting it again replaces it.
    #[command(after_help = "Example:\n  \
        skiff registry login -n ml registry.lab:5000 --username ci-bot --password-stdin < token.txt")]
    Login {
        /// The registry as image references name it: HOST[:PORT]
        /// (`docker.io` for Docker Hub).
        registry: String,
        /// The user name the registry knows.
        #[arg(short, long)]
        username: String,
        /// Read the password from standard input (required; one line, its
        /// line ending dropped).
        #[arg(long, required = true)]
        password_stdin: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List the registry logins namespaces hold (one namespace with -n,
    /// every one by default), without passwords (admin only).
    #[command(alias = "list")]
    Ls {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Forget a namespace's login for a registry (admin only; -n names the
    /// namespace).
    Logout {
        /// HOST[:PORT].
        registry: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// One line from `input`, its line ending dropped; an error when empty.
fn password_from(mut input: impl std::io::Read) -> anyhow::Result<String> {
    let mut text = String::new();
    input
        .read_to_string(&mut text)
        .context("cannot read the password from standard input")?;
    let line = text.strip_suffix('\n').unwrap_or(&text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.is_empty() {
        anyhow::bail!("--password-stdin: standard input held no password");
    }
    if line.contains('\n') {
        anyhow::bail!("--password-stdin: give one line (the password or token), not several");
    }
    Ok(line.to_string())
}

pub async fn registry(cmd: RegistryCmd) -> anyhow::Result<()> {
    match cmd {
        RegistryCmd::Login {
            registry,
            username,
            password_stdin: _,
            client,
        } => {
            let password = password_from(std::io::stdin().lock())?;
            let ns = client.namespace();
            connect(&client)
                .await?
                .set_registry_login(&ns, &registry, &username, &password)
                .await?;
            emit(&format!(
                "namespace/{ns}: login for {registry} as {username} stored (sealed)\n"
            ));
        }
        RegistryCmd::Ls { output, client } => {
            let ns = client.namespace.clone().unwrap_or_default();
            let logins = connect(&client).await?.list_registry_logins(&ns).await?;
            print_list(
                output,
                &logins,
                &["NAMESPACE", "REGISTRY", "USERNAME", "SET"],
                4,
                |l| {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    let ago = std::time::Duration::from_millis(now.saturating_sub(l.set_at_ms));
                    vec![
                        l.namespace.clone(),
                        l.registry.clone(),
                        l.username.clone(),
                        format!("{} ago", crate::output::age(ago)),
                    ]
                },
            )?;
        }
        RegistryCmd::Logout { registry, client } => {
            let ns = client.namespace();
            connect(&client)
                .await?
                .delete_registry_login(&ns, &registry)
                .await?;
            emit(&format!("namespace/{ns}: login for {registry} removed\n"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_one_line_from_standard_input() {
        assert_eq!(password_from("s3cret\n".as_bytes()).unwrap(), "s3cret");
        assert_eq!(password_from("s3cret\r\n".as_bytes()).unwrap(), "s3cret");
        assert_eq!(password_from("s3cret".as_bytes()).unwrap(), "s3cret");
        assert!(password_from("".as_bytes()).is_err());
        assert!(password_from("\n".as_bytes()).is_err());
        let e = password_from("a\nb\n".as_bytes()).unwrap_err();
        assert!(e.to_string().contains("one line"), "{e}");
    }
}
