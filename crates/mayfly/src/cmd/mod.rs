//! One module per subcommand.

pub mod agent;
pub mod agents;
pub mod api_client;
pub mod atomic_file;
pub mod audit;
pub mod bench;
pub mod bench_control_plane;
pub mod chaos;
pub mod doctor;
pub mod github;
pub mod image;
pub mod init;
pub mod keys;
pub mod local_ca;
pub mod quickstart;
pub mod server;
pub mod sim;
pub mod token;
pub mod usage;
pub mod vm;
