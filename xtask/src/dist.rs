//! `cargo xtask dist`: what an operator installs, in `target/dist/`: the release binaries
//! (`bin/`), shell completions for bash, zsh and fish (`completions/`), man pages (`man/man1/`),
//! and the systemd units of `dist/` (`systemd/`). Completions and man pages come from the binaries
//! themselves (`peer completions SHELL`, `peer man DIR`, and the tracker's equivalents), so they
//! always describe the flags that were built.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context};

/// The binaries shipped, and the arguments that make each print its completions for a shell and
/// write its man pages into a folder.
const BINARIES: &[Binary] = &[
    Binary { name: "peer", completions: &["completions"], man: &["man"] },
    Binary { name: "tracker", completions: &["--completions"], man: &["--man"] },
];

struct Binary {
    name: &'static str,
    completions: &'static [&'static str],
    man: &'static [&'static str],
}

/// The file name a shell expects a program's completions under.
type FileName = fn(&str) -> String;

/// Shells, and where each looks for completions.
const SHELLS: &[(&str, FileName)] =
    &[("bash", |b| b.to_owned()), ("zsh", |b| format!("_{b}")), ("fish", |b| format!("{b}.fish"))];

pub(crate) fn run() -> anyhow::Result<()> {
    let root = workspace_root()?;
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "peer", "-p", "tracker"])
        .current_dir(&root)
        .status()
        .context("run cargo build")?;
    ensure!(status.success(), "cargo build --release failed");
    let out = root.join("target").join("dist");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clear {}", out.display()))?;
    }
    let (bin, man, systemd) = (out.join("bin"), out.join("man").join("man1"), out.join("systemd"));
    for b in BINARIES {
        let built = root.join("target").join("release").join(b.name);
        std::fs::create_dir_all(&bin)?;
        std::fs::copy(&built, bin.join(b.name)).with_context(|| format!("copy {}", built.display()))?;
        for (shell, file) in SHELLS {
            let dir = out.join("completions").join(shell);
            std::fs::create_dir_all(&dir)?;
            let text = output(&built, b.completions, &[shell])?;
            std::fs::write(dir.join(file(b.name)), text)?;
        }
        std::fs::create_dir_all(&man)?;
        output(&built, b.man, &[man.to_str().context("a non-UTF-8 path")?])?;
    }
    std::fs::create_dir_all(&systemd)?;
    for unit in std::fs::read_dir(root.join("dist")).context("read dist/")? {
        let unit = unit?.path();
        if unit.extension().is_some_and(|e| e == "service") {
            let name = unit.file_name().context("a unit file without a name")?;
            std::fs::copy(&unit, systemd.join(name))?;
        }
    }
    println!("target/dist/");
    for entry in walk(&out)? {
        println!("  {}", entry.strip_prefix(&out).unwrap_or(&entry).display());
    }
    Ok(())
}

/// What `bin ARGS EXTRA` prints on stdout; an error if it fails.
fn output(bin: &Path, args: &[&str], extra: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = Command::new(bin).args(args).args(extra).output().with_context(|| format!("run {}", bin.display()))?;
    ensure!(
        out.status.success(),
        "{} {:?} failed: {}",
        bin.display(),
        [args, extra].concat(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).context("xtask has no parent folder")
}

fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}
