//! The command line: `keygate serve`, `keygate keys
//! create|list|show|update|revoke|rotate|expire|usage|import`, `keygate signing-keys
//! list|rotate`, `keygate roles create|list|show|update|delete` and `keygate audit`.
//!
//! The client commands are a thin client of the REST API; they never touch the database.
//! Every client command takes `--json` (print the service's JSON answer instead of text);
//! `serve` does not (its logs are always JSON lines). Output to a closed pipe
//! (`keygate audit --json | head`) ends the command quietly.
//!
//! [`args`] holds the clap definitions, [`client`] the REST client, [`print`](mod@print) the output;
//! every other file is one command. This file only declares them (and the output macros).

/// `println!` for the CLI: a closed stdout (the reader of a pipe went away) ends the process
/// quietly with success instead of panicking.
macro_rules! outln {
    () => {
        $crate::cli::print::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::print::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for the CLI, with the same handling of a closed stdout as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::print::write_stdout(format_args!($($arg)*))
    };
}

pub mod args;
mod audit;
mod blocks;
pub mod client;
mod import;
mod keys;
mod limits;
mod pools;
pub mod print;
mod roles;
mod sign;
mod signing_keys;
mod webhooks;

pub use args::{
    AuditArgs, BlocksArgs, BlocksCommand, Cli, ClientArgs, Command, CreateArgs, ImportArgs,
    KeysArgs, KeysCommand, LimitArgs, ListArgs, RoleArgs, RoleUpdateArgs, RolesArgs, RolesCommand,
    RotateArgs, SignArgs, SigningKeysArgs, SigningKeysCommand, UpdateArgs, UsageArgs,
};
pub use args::{WebhooksArgs, WebhooksCommand};
pub use audit::run_audit;
pub use blocks::run_blocks;
pub use client::{CliError, DEFAULT_ADMIN_KEY_FILE};
pub use keys::run_keys;
pub use pools::run_pools;
pub use roles::run_roles;
pub use sign::run_sign;
pub use signing_keys::run_signing_keys;
pub use webhooks::run_webhooks;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use clap::Parser;

    use crate::cli::client::{connect, query_escape, Transport};
    use crate::cli::keys::create_body;
    use crate::service::validate::parse_duration;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("3600"), Some(3600));
        assert_eq!(parse_duration("3600s"), Some(3600));
        assert_eq!(parse_duration("90m"), Some(5400));
        assert_eq!(parse_duration("12h"), Some(43_200));
        assert_eq!(parse_duration("30d"), Some(2_592_000));
        assert_eq!(parse_duration("0"), Some(0));
        for bad in [
            "",
            "h",
            "12x",
            "-5s",
            "1.5h",
            "12hh",
            "99999999999999999999d",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn escapes_query_values() {
        assert_eq!(query_escape("a b&c=d"), "a%20b%26c%3Dd");
        assert_eq!(query_escape("123.abc"), "123.abc");
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_the_expire_command() {
        let cli = Cli::try_parse_from(["keygate", "keys", "expire", "aaaaaaaaaaaaaaaa"]).unwrap();
        let Command::Keys(KeysArgs {
            command: KeysCommand::Expire { id },
            ..
        }) = cli.command
        else {
            panic!("not keys expire")
        };
        assert_eq!(id, "aaaaaaaaaaaaaaaa");
    }

    #[test]
    fn json_flag_works_before_and_after_the_subcommand() {
        for argv in [
            ["keygate", "keys", "--json", "show", "aaaaaaaaaaaaaaaa"],
            ["keygate", "keys", "show", "aaaaaaaaaaaaaaaa", "--json"],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Keys(keys) = cli.command else {
                panic!("not keys")
            };
            assert!(keys.client.json);
        }
    }

    #[test]
    fn parses_role_commands_and_key_roles() {
        let cli = Cli::try_parse_from([
            "keygate", "keys", "create", "--name", "n", "--role", "analyst", "--role", "ops",
        ])
        .unwrap();
        let Command::Keys(KeysArgs {
            command: KeysCommand::Create(create),
            ..
        }) = cli.command
        else {
            panic!("not keys create")
        };
        let body = create_body(create).unwrap();
        assert_eq!(body["roles"], serde_json::json!(["analyst", "ops"]));
        let cli = Cli::try_parse_from([
            "keygate",
            "roles",
            "create",
            "analyst",
            "--scope",
            "models:read",
            "--scope",
            "datasets:read",
        ])
        .unwrap();
        let Command::Roles(RolesArgs {
            command: RolesCommand::Create(role),
            ..
        }) = cli.command
        else {
            panic!("not roles create")
        };
        assert_eq!(role.name, "analyst");
        assert_eq!(role.scopes, ["models:read", "datasets:read"]);
        for argv in [
            &["keygate", "roles", "list"][..],
            &["keygate", "roles", "show", "analyst", "--json"],
            &["keygate", "roles", "update", "analyst", "--clear-scopes"],
            &["keygate", "roles", "delete", "analyst"],
            &[
                "keygate",
                "keys",
                "update",
                "aaaaaaaaaaaaaaaa",
                "--clear-roles",
            ],
        ] {
            assert!(Cli::try_parse_from(argv).is_ok(), "{argv:?}");
        }
        assert!(Cli::try_parse_from([
            "keygate",
            "keys",
            "update",
            "aaaaaaaaaaaaaaaa",
            "--role",
            "a",
            "--clear-roles"
        ])
        .is_err());
    }

    #[test]
    fn parses_jwt_and_signing_key_commands() {
        let cli = Cli::try_parse_from([
            "keygate",
            "keys",
            "create",
            "--name",
            "n",
            "--format",
            "jwt",
            "--algorithm",
            "EdDSA",
            "--expires-in",
            "30d",
        ])
        .unwrap();
        let Command::Keys(KeysArgs {
            command: KeysCommand::Create(create),
            ..
        }) = cli.command
        else {
            panic!("not keys create")
        };
        let body = create_body(create).unwrap();
        assert_eq!(body["format"], "jwt");
        assert_eq!(body["algorithm"], "EdDSA");
        assert_eq!(body["expires_in"], 2_592_000);
        let cli = Cli::try_parse_from([
            "keygate",
            "signing-keys",
            "rotate",
            "--algorithm",
            "RS256",
            "--json",
        ])
        .unwrap();
        let Command::SigningKeys(args) = cli.command else {
            panic!("not signing-keys")
        };
        assert!(args.client.json);
        assert!(matches!(
            args.command,
            SigningKeysCommand::Rotate { algorithm: Some(ref a) } if a == "RS256"
        ));
    }

    #[test]
    fn plain_http_carries_the_admin_key_only_to_loopback_unless_insecure() {
        for server in [
            "http://127.0.0.1:8080",
            "http://127.9.9.9:8080/",
            "http://localhost:8080",
            "http://LOCALHOST",
            "http://[::1]:8080",
            "http://[::ffff:127.0.0.1]:8080",
        ] {
            assert_eq!(
                Transport::for_server(server, false).unwrap(),
                Transport::Loopback,
                "{server}"
            );
        }
        for server in [
            "http://keygate.example.com:8080",
            "http://10.1.2.3:8080",
            "http://0.0.0.0:8080",
            "http://[2001:db8::1]:8080",
            "http://localhost.example.com",
            "http://127.0.0.1.example.com",
        ] {
            let Err(CliError::Usage(message)) = Transport::for_server(server, false) else {
                panic!("{server} was allowed without --insecure");
            };
            assert!(
                message.contains("refusing to send the admin key over plain http://")
                    && message.contains("--insecure")
                    && message.contains("https://"),
                "{message}"
            );
            assert_eq!(
                Transport::for_server(server, true).unwrap(),
                Transport::InsecureHttp,
                "{server}"
            );
        }
        assert_eq!(
            Transport::for_server("https://keygate.example.com", false).unwrap(),
            Transport::Https
        );
        for bad in ["keygate.example.com:8080", "ftp://keygate.example.com", ""] {
            assert!(
                matches!(Transport::for_server(bad, true), Err(CliError::Usage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_refused_server_is_refused_before_the_admin_key_is_read() {
        let cli = Cli::try_parse_from([
            "keygate",
            "keys",
            "list",
            "--server",
            "http://keygate.example.com:8080",
            "--admin-key-file",
            "/nonexistent/admin.key",
        ])
        .unwrap();
        let Command::Keys(keys) = cli.command else {
            panic!("not keys")
        };
        let Err(CliError::Usage(message)) = connect(&keys.client) else {
            panic!("connect accepted plain http to a remote host");
        };
        assert!(message.contains("refusing"), "{message}");
    }

    #[test]
    fn parses_the_transport_flags_anywhere() {
        let cli = Cli::try_parse_from([
            "keygate",
            "keys",
            "--ca-cert",
            "/etc/keygate/ca.pem",
            "list",
            "--insecure",
        ])
        .unwrap();
        let Command::Keys(keys) = cli.command else {
            panic!("not keys")
        };
        assert_eq!(
            keys.client.ca_cert.as_deref(),
            Some(Path::new("/etc/keygate/ca.pem"))
        );
        assert!(keys.client.insecure);
    }
}
