//! peer's config file: which key sets which flag (`proto::config_file` reads and checks it). Top
//! level keys are the node's options and apply to every command that has them; `[serve]` and
//! `[download]` hold those commands' own. `peer default-config` prints them all.

use proto::config_file::{ConfigFile, Key};

/// peer's config file and its keys.
pub(crate) fn file() -> ConfigFile {
    let top = [
        "tracker",
        "log_format",
        "threads",
        "share",
        "state_dir",
        "listen",
        "announce",
        "upload_rate",
        "download_rate",
        "pipeline",
        "max_sources",
        "max_uploads",
        "max_uploads_per_ip",
        "read_back",
    ];
    let serve = ["http", "http_token", "stats_every", "settle"];
    let download = ["parallel", "timeout", "stall_timeout", "wait", "replace", "linger"];
    let mut keys: Vec<Key> = top.iter().map(|k| Key::new(None, k, k)).collect();
    keys.extend(serve.iter().map(|k| Key::new(Some("serve"), k, k)));
    keys.push(Key::negated(Some("serve"), "watch", "no_watch"));
    keys.extend(download.iter().map(|k| Key::new(Some("download"), k, k)));
    ConfigFile { program: "peer", env: "P2P_CONFIG", keys }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::{Command, CommandFactory};

    use super::*;

    fn cmd() -> Command {
        super::super::Cli::command()
    }

    fn try_apply(text: &str) -> Result<Command, String> {
        file().apply_text(cmd(), Path::new("peer.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn values_become_defaults_and_the_command_line_wins() {
        let text = "upload_rate = \"20MiB\"\ntracker = [\"a.lab\", \"b.lab:7000\"]\n[serve]\nwatch = false\nstats_every = \"5m\"\n[download]\nparallel = 8\n";
        let c = try_apply(text).unwrap();
        let m = c.clone().try_get_matches_from(["peer", "serve"]).unwrap();
        let (_, serve) = m.subcommand().unwrap();
        assert_eq!(serve.get_one::<u64>("upload_rate"), Some(&(20 << 20)));
        assert_eq!(serve.get_one::<bool>("no_watch"), Some(&true));
        let m = c.clone().try_get_matches_from(["peer", "download", "x", "--parallel", "2"]).unwrap();
        assert_eq!(m.subcommand().unwrap().1.get_one::<usize>("parallel"), Some(&2), "the flag wins");
        let m = c.try_get_matches_from(["peer", "download", "x"]).unwrap();
        assert_eq!(m.subcommand().unwrap().1.get_one::<usize>("parallel"), Some(&8), "the file's value");
    }

    #[test]
    fn bad_files_name_the_line_and_the_key() {
        let cases = [
            ("pipeline = 8\nuplod_rate = \"1M\"\n", "peer.toml:2: unknown key `uplod_rate`"),
            ("[serve]\nstats_every = \"soon\"\n", "peer.toml:2: stats_every: "),
            ("\n\npipeline = \"eight\"\n", "peer.toml:3: pipeline: "),
            ("[download]\nlinger = [1, 2]\n", "peer.toml:2: linger: wrong type: array"),
            ("[serve]\nwatch = \"maybe\"\n", "peer.toml:2: watch: expected true or false"),
            ("listen = \n", "peer.toml:1: "),
            ("[nope]\nx = 1\n", "peer.toml:1: unknown key `nope`"),
        ];
        for (text, want) in cases {
            let Err(err) = try_apply(text) else { panic!("{text:?} was accepted") };
            assert!(err.starts_with(want), "{text:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn the_default_config_is_valid_and_lists_every_key() {
        let f = file();
        let text = f.default_config(&cmd());
        for k in &f.keys {
            assert!(text.contains(&format!("# {} = ", k.key)), "{} missing:\n{text}", k.key);
        }
        // Uncommented, it is a valid config that changes nothing.
        let uncommented: String = text
            .lines()
            .filter(|l| l.starts_with("# ") && l.contains(" = ") || l.starts_with('['))
            .map(|l| format!("{}\n", l.trim_start_matches("# ")))
            .filter(|l| !l.contains('<'))
            .collect();
        try_apply(&uncommented).unwrap();
    }
}
