//! The BitTorrent reference of the swarm benchmarks: the same swarm (same hosts, same shaping,
//! same file, one seed and the same downloaders) run with `aria2c` peers and an `opentracker`
//! tracker, when both are on PATH (Debian packages `aria2` and `opentracker`). This module holds
//! what is pure: a minimal bencoder, the `.torrent` (SHA-1 piece hashes), the aria2 command lines
//! and the scrape answer's parser. The swarm itself runs in `lab/`, for both systems.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use sha1::{Digest, Sha1};

/// Piece length of the torrents: 256 KiB, the usual choice for files of tens to hundreds of MiB
/// (64 MiB gives 256 pieces, 256 MiB 1024, about our chunk count), which aria2 handles well:
/// small enough that pieces spread quickly through the swarm, large enough that the piece
/// bookkeeping (have messages, SHA-1 per piece) stays small.
pub(crate) const PIECE_LEN: u64 = 256 * 1024;

/// Every aria2c's BitTorrent listen port (netns hosts each have their own address).
pub(crate) const BT_PORT: u16 = 6881;
/// opentracker's port (TCP for HTTP announces, UDP the same).
pub(crate) const OT_PORT: u16 = 6969;

/// A bencoded value.
#[derive(Debug, Clone)]
pub(crate) enum Bencode {
    Int(i64),
    Bytes(Vec<u8>),
    /// Keys are written sorted (as raw bytes), as the format requires.
    Dict(Vec<(Vec<u8>, Bencode)>),
}

impl Bencode {
    pub(crate) fn str(s: &str) -> Bencode {
        Bencode::Bytes(s.as_bytes().to_vec())
    }

    pub(crate) fn dict(entries: Vec<(&str, Bencode)>) -> Bencode {
        Bencode::Dict(entries.into_iter().map(|(k, v)| (k.as_bytes().to_vec(), v)).collect())
    }

    /// The encoding.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Bencode::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Bencode::Bytes(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Bencode::Dict(d) => {
                let mut sorted: Vec<&(Vec<u8>, Bencode)> = d.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                out.push(b'd');
                for (k, v) in sorted {
                    Bencode::Bytes(k.clone()).write(out);
                    v.write(out);
                }
                out.push(b'e');
            }
        }
    }
}

/// A single-file torrent without its announce URL (which depends on where the tracker runs).
#[derive(Debug, Clone)]
pub(crate) struct Torrent {
    info: Bencode,
    /// SHA-1 of the bencoded info dictionary.
    pub(crate) info_hash: [u8; 20],
}

impl Torrent {
    /// The torrent of `path`, published as `name`: SHA-1 of every `PIECE_LEN` piece.
    pub(crate) fn of_file(path: &Path, name: &str) -> anyhow::Result<Torrent> {
        use std::io::Read;
        let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
        let length = f.metadata()?.len();
        let mut pieces = Vec::new();
        let mut buf = vec![0u8; PIECE_LEN as usize];
        loop {
            let mut got = 0;
            while got < buf.len() {
                match f.read(&mut buf[got..])? {
                    0 => break,
                    n => got += n,
                }
            }
            if got == 0 {
                break;
            }
            pieces.extend_from_slice(&Sha1::digest(&buf[..got]));
            if got < buf.len() {
                break;
            }
        }
        Ok(Torrent::from_parts(name, length, pieces))
    }

    fn from_parts(name: &str, length: u64, pieces: Vec<u8>) -> Torrent {
        let info = Bencode::dict(vec![
            ("length", Bencode::Int(length as i64)),
            ("name", Bencode::str(name)),
            ("piece length", Bencode::Int(PIECE_LEN as i64)),
            ("pieces", Bencode::Bytes(pieces)),
        ]);
        let info_hash: [u8; 20] = Sha1::digest(info.encode()).into();
        Torrent { info, info_hash }
    }

    /// The `.torrent` file's bytes with this announce URL.
    pub(crate) fn encode(&self, announce: &str) -> Vec<u8> {
        Bencode::dict(vec![("announce", Bencode::str(announce)), ("info", self.info.clone())]).encode()
    }

    /// The info hash in hex, as opentracker's whitelist (`-w FILE`) lists it: Debian's build
    /// serves only whitelisted torrents.
    pub(crate) fn info_hash_hex(&self) -> String {
        self.info_hash.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The info hash percent-encoded for a tracker URL.
    pub(crate) fn info_hash_url(&self) -> String {
        self.info_hash.iter().map(|b| format!("%{b:02X}")).collect()
    }
}

/// The number of seeds (`complete`) in a tracker's scrape answer, if it has one.
pub(crate) fn scrape_complete(body: &[u8]) -> Option<u64> {
    let key = b"8:completei";
    let at = body.windows(key.len()).position(|w| w == key)? + key.len();
    let end = body[at..].iter().position(|&b| b == b'e')? + at;
    std::str::from_utf8(&body[at..end]).ok()?.parse().ok()
}

/// Whether `aria2c` and `opentracker` are on PATH; the reason if not.
pub(crate) fn available() -> Result<(), String> {
    let mut missing = Vec::new();
    for (bin, arg) in [("aria2c", "--version"), ("opentracker", "-h")] {
        let ok = Command::new(bin)
            .arg(arg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok();
        if !ok {
            missing.push(bin);
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("{} not on PATH (Debian: apt-get install aria2 opentracker)", missing.join(" and ")))
    }
}

/// aria2c options every BitTorrent peer of the benchmark gets: no DHT, no local peer discovery
/// (the tracker is the only rendezvous, as for our peers), no preallocation, quiet, the system
/// resolver (so `/etc/hosts` names work), seeding until stopped (`--seed-ratio=0.0`: downloaders
/// keep serving until every one is done, as ours do with `--seed`), announces every 5 s.
pub(crate) fn aria2_args(listen_port: u16, ipv6: bool) -> Vec<String> {
    let mut a: Vec<String> = [
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--seed-ratio=0.0",
        "--file-allocation=none",
        "--summary-interval=0",
        "--console-log-level=warn",
        "--async-dns=false",
        "--bt-tracker-interval=5",
        "--bt-max-peers=0",
        "--allow-overwrite=true",
        "--auto-file-renaming=false",
        "--bt-save-metadata=false",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    a.push(format!("--listen-port={listen_port}"));
    if !ipv6 {
        a.push("--disable-ipv6=true".into());
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bencodes_values_with_sorted_keys() {
        let v = Bencode::dict(vec![
            ("zeta", Bencode::Int(-3)),
            ("alpha", Bencode::dict(vec![("b", Bencode::str("spam")), ("a", Bencode::Int(0))])),
            ("mid", Bencode::Bytes(vec![])),
        ]);
        assert_eq!(v.encode(), b"d5:alphad1:ai0e1:b4:spame3:mid0:4:zetai-3ee".to_vec());
    }

    #[test]
    fn torrent_layout_and_info_hash() {
        let t = Torrent::from_parts("a.bin", 5, vec![7u8; 20]);
        let bytes = t.encode("http://t.lab:6969/announce");
        let mut want = b"d8:announce26:http://t.lab:6969/announce4:infod6:lengthi5e4:name5:a.bin12:piece lengthi262144e6:pieces20:".to_vec();
        want.extend_from_slice(&[7u8; 20]);
        want.extend_from_slice(b"ee");
        assert_eq!(bytes, want);
        // The info hash is SHA-1 of exactly the info dictionary's bytes.
        let info_start = want.windows(5).position(|w| w == b"infod").unwrap() + 4;
        let info = &want[info_start..want.len() - 1];
        let expect: [u8; 20] = Sha1::digest(info).into();
        assert_eq!(t.info_hash, expect);
        assert_eq!(t.info_hash_url().len(), 60);
    }

    #[test]
    fn torrent_of_a_file_hashes_every_piece() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(PIECE_LEN * 2 + 10)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let t = Torrent::of_file(&path, "f").unwrap();
        let mut pieces = Vec::new();
        for p in data.chunks(PIECE_LEN as usize) {
            pieces.extend_from_slice(&Sha1::digest(p));
        }
        assert_eq!(t.info_hash, Torrent::from_parts("f", data.len() as u64, pieces).info_hash);
    }

    #[test]
    fn reads_scrape_answers() {
        let body = b"d5:filesd20:aaaaaaaaaaaaaaaaaaaad8:completei2e10:downloadedi0e10:incompletei3eeee";
        assert_eq!(scrape_complete(body), Some(2));
        assert_eq!(scrape_complete(b"d5:filesdee"), None);
    }
}
