//! A share folder's companions: where its state lives by default, and its partial downloads as a
//! user sees them (`peer partials`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chunkstore::{PartialInfo, Store};

use crate::error::Error;
use crate::lock::FolderLock;

/// The state folder of a share by default: under the user's state directory
/// (`$XDG_STATE_HOME/p2p/`, else `~/.local/state/p2p/`), named after the share's last component
/// and the first 16 hex digits of the BLAKE3 hash of its absolute path, so two shares never share
/// state and the name still says which share it is. `None` without a home directory.
pub fn default_state_dir(share: &Path) -> Option<PathBuf> {
    let absolute = std::fs::canonicalize(share).or_else(|_| std::path::absolute(share)).ok()?;
    let key = blake3::hash(absolute.as_os_str().as_encoded_bytes()).to_hex();
    let base = absolute.file_name().map_or_else(|| "root".into(), |n| n.to_string_lossy().into_owned());
    Some(dirs::state_dir()?.join("p2p").join(format!("{base}-{}", &key[..16])))
}

/// The partial downloads of `share` whose bookkeeping is untouched for at least `older_than`
/// (all without it), sorted by name; removed too when `clean`. Refuses with [`Error::InUse`] while
/// a node runs on the share (it may be writing them).
pub fn partials(
    share: &Path,
    state: &Path,
    older_than: Option<Duration>,
    clean: bool,
) -> Result<Vec<PartialInfo>, Error> {
    std::fs::create_dir_all(state).map_err(|source| Error::Io { action: "create the state folder", source })?;
    let _lock = FolderLock::acquire(&[share, state])?;
    let store = Store::open_with_state(share, state)?;
    let now = SystemTime::now();
    let mut infos = store.partial_infos()?;
    if let Some(age) = older_than {
        infos.retain(|p| now.duration_since(p.modified).is_ok_and(|d| d >= age));
    }
    if clean {
        for p in &infos {
            store.remove_partial(&p.meta)?;
        }
    }
    Ok(infos)
}
