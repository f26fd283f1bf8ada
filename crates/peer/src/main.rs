//! peer binary (in progress)
fn main() {}
