//! The `peer` binary: a thin command line around [`peer::Node`].

mod cli;

#[tokio::main]
async fn main() {
    std::process::exit(cli::main().await);
}
