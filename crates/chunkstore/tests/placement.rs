//! Where finished downloads land, and what scans say about what they skip.

// Test helpers, where a failure should panic.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chunkstore::Store;
use proto::limits::MIN_CHUNK_SIZE;
use proto::FileMeta;

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(131).wrapping_add(seed)).collect()
}

/// A tmpfs mounted at a folder, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path) -> Option<Mount> {
        fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(at.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A destination folder on another file system (a mount inside the share) cannot take a hard
/// link or a rename from `.p2p/partial`: the download is copied there, fsynced, checked against
/// its root hash and linked to its name, leaving no temporary behind. Skipped, saying so, where
/// mounting a tmpfs is not permitted.
#[test]
fn a_destination_on_another_file_system_gets_a_verified_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    let store = Store::open(&share).unwrap();
    let Some(_mount) = Mount::tmpfs(&share.join("mnt")) else {
        println!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    for (k, len) in [0usize, 1, 3 * MIN_CHUNK_SIZE as usize + 7].into_iter().enumerate() {
        let data = bytes(len, k as u8);
        let name = format!("mnt/sub/f{k}.bin");
        let meta = FileMeta::from_bytes(&name, MIN_CHUNK_SIZE, &data);
        let p = store.open_partial(&meta).unwrap();
        for i in 0..meta.num_chunks() {
            let (off, n) = meta.chunk_range(meta.chunk(i).unwrap());
            p.write_chunk(meta.chunk(i).unwrap(), &data[off as usize..off as usize + n as usize]).unwrap();
        }
        let path = p.finish().unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(path, store.root().join(&name));
        assert_eq!(fs::read(&path).unwrap(), data);
    }
    let mut left: Vec<_> = fs::read_dir(share.join("mnt/sub")).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(left, ["f0.bin", "f1.bin", "f2.bin"], "temporaries left behind");
    assert_eq!(fs::read_dir(share.join(".p2p/partial")).unwrap().count(), 0);
    // The hash cache knows the copies: a scan hashes nothing again.
    let (metas, stats) = store.scan_with_stats().unwrap();
    assert_eq!((metas.len(), stats.hashed), (3, 0));
}

/// A log sink for one thread's events.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
    }
}

/// Skipped entries are named with the reason at the default level (warn), once per entry while
/// it stays skipped, and again if it comes back after being fixed.
#[test]
fn skipped_entries_are_warned_about_once_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    let store = Store::open(&share).unwrap();
    fs::write(share.join("ok.bin"), b"fine").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", share.join("link")).unwrap();
    rustix::fs::mkfifoat(rustix::fs::CWD, share.join("fifo"), rustix::fs::Mode::from_raw_mode(0o644)).unwrap();
    fs::write(share.join("bad\\name"), b"x").unwrap();

    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let (metas, stats) = store.scan_with_stats().unwrap();
        assert_eq!(metas.len(), 1);
        assert_eq!(stats.skipped, 3);
        let first = sink.take();
        for (what, why) in [("link", "symbolic link"), ("fifo", "not a regular file"), ("bad\\\\name", "invalid name")]
        {
            assert!(first.contains(what) && first.contains(why), "{what} / {why} missing from:\n{first}");
        }
        assert_eq!(first.lines().count(), 3, "{first}");

        store.scan().unwrap();
        assert_eq!(sink.take(), "", "a second scan warned again");

        fs::remove_file(share.join("link")).unwrap();
        store.scan().unwrap();
        std::os::unix::fs::symlink("/etc/hostname", share.join("link")).unwrap();
        store.scan().unwrap();
        let again = sink.take();
        assert!(again.contains("link") && again.lines().count() == 1, "{again}");
    });
}
