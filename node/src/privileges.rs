//! Dropping root: the daemon starts as root (to open its TUN device and low
//! ports), then runs as the `makiatto` user keeping only CAP_NET_ADMIN and
//! CAP_NET_BIND_SERVICE (docs/design.md, The daemon). Where no `makiatto` user exists (a
//! development run), it keeps running as whoever started it.

use std::os::unix::fs::{MetadataExt, chown};
use std::path::Path;

use anyhow::Context;
use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Uid, User, setgid, setgroups, setuid};

/// The capabilities the daemon keeps after it drops root.
const KEPT: [Capability; 2] = [Capability::CAP_NET_ADMIN, Capability::CAP_NET_BIND_SERVICE];

/// Hands `data_dir` to the `makiatto` user and becomes that user, keeping
/// only [`KEPT`]. Returns the user's name when it switched.
pub fn drop_to_service_user(data_dir: &Path) -> anyhow::Result<Option<String>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let Some(user) = User::from_name("makiatto").context("cannot read the user database")? else {
        tracing::warn!("no makiatto user on this machine: the daemon keeps running as root");
        return Ok(None);
    };
    chown_tree(data_dir, user.uid, user.gid)?;
    nix::sys::prctl::set_keepcaps(true).context("cannot keep capabilities across setuid")?;
    setgroups(&[user.gid]).context("cannot drop supplementary groups")?;
    setgid(user.gid).context("cannot change group")?;
    setuid(user.uid).context("cannot change user")?;
    let kept: CapsHashSet = KEPT.into_iter().collect();
    caps::set(None, CapSet::Effective, &kept).context("cannot set effective capabilities")?;
    caps::set(None, CapSet::Permitted, &kept).context("cannot limit permitted capabilities")?;
    // Ambient too, so that the `ip` commands the mesh runs keep them.
    caps::set(None, CapSet::Inheritable, &kept).context("cannot set inheritable capabilities")?;
    for cap in KEPT {
        caps::raise(None, CapSet::Ambient, cap).context("cannot raise ambient capabilities")?;
    }
    Ok(Some(user.name))
}

/// Gives every file under `dir` to uid/gid (files made by root while the
/// daemon was stopped, such as an offline `makiatto log`).
fn chown_tree(dir: &Path, uid: Uid, gid: Gid) -> anyhow::Result<()> {
    let meta =
        std::fs::symlink_metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if meta.uid() != uid.as_raw() || meta.gid() != gid.as_raw() {
        chown(dir, Some(uid.as_raw()), Some(gid.as_raw()))
            .with_context(|| format!("cannot chown {}", dir.display()))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}
