//! The `iothub` binary's subcommands besides `serve`: the config file ([`config_file`]) and the
//! admin client of a running hub ([`admin`] over [`client`], printing with [`output`], exiting
//! with the codes of [`exit`]).

pub mod admin;
pub mod client;
pub mod config_file;
pub mod dev_certs;
pub mod exit;
pub mod output;
