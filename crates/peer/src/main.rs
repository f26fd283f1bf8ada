//! The `peer` binary: a thin command line around [`peer::Node`].

mod cli;

fn main() {
    std::process::exit(cli::main());
}
