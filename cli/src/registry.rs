//! `diplo registry …`: credentials for image registries through `RegistryService`.
//! A password is read from stdin (`--password-stdin`) or typed at a prompt that does not
//! echo it; it is never a flag value (flags end up in shell history and `ps`).

use std::io::{BufRead, IsTerminal, Read, Write};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use diplo_api::pb;
use diplo_api::pb::registry_service_client::RegistryServiceClient;
use tonic::transport::Channel;

use crate::output::Format;
use crate::status_error;

/// `diplo registry` subcommands.
#[derive(Subcommand)]
pub enum RegistryCommand {
    /// Store the credential for a registry (admin only); agents use it for their next pulls.
    Login {
        /// The registry, HOST[:PORT] (no scheme, no path).
        registry: String,
        /// User name.
        #[arg(short, long)]
        username: String,
        /// Read the password from stdin (else it is asked for on the terminal, not echoed).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete the credential for a registry (admin only).
    Logout {
        /// The registry, HOST[:PORT].
        registry: String,
    },
    /// The stored credentials: registry, user name, last change (never a password).
    Ls,
}

/// Runs one `registry` subcommand.
pub async fn run(mut client: RegistryServiceClient<Channel>, command: RegistryCommand, format: Format) -> Result<()> {
    match command {
        RegistryCommand::Login { registry, username, password_stdin } => {
            let password = read_password(password_stdin)?;
            let request = pb::RegistryLoginRequest { registry: registry.clone(), username: username.clone(), password };
            let created = client.login(request).await.map_err(status_error)?.into_inner().created;
            println!("{} credential for {registry} (user {username})", if created { "Stored" } else { "Replaced" });
        }
        RegistryCommand::Logout { registry } => {
            client.logout(pb::RegistryLogoutRequest { registry: registry.clone() }).await.map_err(status_error)?;
            println!("Removed the credential for {registry}");
        }
        RegistryCommand::Ls => {
            let logins = client.list(pb::ListRegistryLoginsRequest {}).await.map_err(status_error)?.into_inner().logins;
            let time = |t: Option<prost_types::Timestamp>| {
                t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0)).map_or("-".to_owned(), |at| at.to_rfc3339())
            };
            let list: Vec<_> = logins
                .iter()
                .map(|l| serde_json::json!({"registry": l.registry, "username": l.username, "updated_at": time(l.updated_at)}))
                .collect();
            crate::output::print(format, &serde_json::Value::Array(list), || {
                let rows = logins.iter().map(|l| [l.registry.clone(), l.username.clone(), time(l.updated_at)]);
                crate::output::table(["REGISTRY", "USERNAME", "UPDATED"], rows)
            })?;
        }
    }
    Ok(())
}

/// The password: all of stdin with `--password-stdin` (one trailing line break
/// dropped), else typed at a prompt on the terminal with echo off.
fn read_password(from_stdin: bool) -> Result<String> {
    let stdin = std::io::stdin();
    let password = if from_stdin {
        let mut text = String::new();
        stdin.lock().read_to_string(&mut text).context("cannot read the password from stdin")?;
        strip_line_break(text)
    } else if stdin.is_terminal() {
        prompt_without_echo(&stdin)?
    } else {
        bail!("no password: pass --password-stdin and write it to stdin, or run on a terminal to be asked for it");
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(password)
}

fn strip_line_break(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

/// Asks for the password on stderr and reads one line from the terminal with echo off,
/// restoring the terminal afterwards.
fn prompt_without_echo(stdin: &std::io::Stdin) -> Result<String> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    eprint!("Password: ");
    let _ = std::io::stderr().flush();
    let saved = tcgetattr(stdin).context("cannot read the terminal settings")?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(stdin, OptionalActions::Now, &quiet).context("cannot turn the terminal's echo off")?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = tcsetattr(stdin, OptionalActions::Now, &saved);
    read.context("cannot read the password")?;
    Ok(strip_line_break(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_line_break_is_dropped() {
        assert_eq!(strip_line_break("pw\n".into()), "pw");
        assert_eq!(strip_line_break("pw\r\n".into()), "pw");
        assert_eq!(strip_line_break("pw".into()), "pw");
        assert_eq!(strip_line_break("pw \n\n".into()), "pw \n");
    }
}
