//! Process set-up before the runtime starts: the descriptor limit, the data
//! directory, and dropping root to the configured user with only the capabilities
//! the monitor needs. Done before any thread exists, because capabilities are
//! per thread and threads inherit them from their creator.

use anyhow::{bail, Context as _};
use caps::{CapSet, Capability, CapsHashSet};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::unistd::{Gid, Group, Uid, User};
use std::path::Path;

/// Raise RLIMIT_NOFILE's soft limit to its hard limit. Returns the new soft limit.
pub fn raise_nofile() -> u64 {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

/// The user and group to switch to, resolved.
pub struct Identity {
    pub uid: Uid,
    pub gid: Gid,
    pub name: String,
}

/// Resolve `process.user` / `process.group` (None when no user is configured).
pub fn resolve(user: &str, group: &str) -> anyhow::Result<Option<Identity>> {
    if user.is_empty() {
        return Ok(None);
    }
    let u =
        User::from_name(user)?.with_context(|| format!("process.user: no such user `{user}`"))?;
    let gid = if group.is_empty() {
        u.gid
    } else {
        Group::from_name(group)?
            .with_context(|| format!("process.group: no such group `{group}`"))?
            .gid
    };
    Ok(Some(Identity {
        uid: u.uid,
        gid,
        name: u.name,
    }))
}

/// Create the data directory and hand it to the user honeytrap will run as.
pub fn prepare_data_dir(dir: &Path, who: Option<&Identity>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    if let Some(id) = who {
        nix::unistd::chown(dir, Some(id.uid), Some(id.gid))
            .with_context(|| format!("handing {} to {}", dir.display(), id.name))?;
    }
    Ok(())
}

/// Switch to `who`, keeping only `keep` as permitted and effective capabilities.
/// `for_children` (a subset of `keep`) is also made ambient, so programs honeytrap
/// runs itself (only `iptables`, to remove its rules at exit) get them too.
pub fn drop_to(
    who: &Identity,
    keep: &[Capability],
    for_children: &[Capability],
) -> anyhow::Result<()> {
    if !Uid::effective().is_root() {
        bail!("process.user is set but honeytrap was not started as root");
    }
    caps::securebits::set_keepcaps(true).context("PR_SET_KEEPCAPS")?;
    nix::unistd::setgroups(&[who.gid]).context("setgroups")?;
    nix::unistd::setresgid(who.gid, who.gid, who.gid).context("setresgid")?;
    nix::unistd::setresuid(who.uid, who.uid, who.uid).context("setresuid")?;
    let set: CapsHashSet = keep.iter().copied().collect();
    let inherit: CapsHashSet = for_children
        .iter()
        .copied()
        .filter(|c| set.contains(c))
        .collect();
    caps::set(None, CapSet::Permitted, &set).context("setting permitted capabilities")?;
    caps::set(None, CapSet::Effective, &set).context("setting effective capabilities")?;
    caps::set(None, CapSet::Inheritable, &inherit).context("setting inheritable capabilities")?;
    for c in &inherit {
        caps::raise(None, CapSet::Ambient, *c).with_context(|| format!("raising ambient {c}"))?;
    }
    caps::securebits::set_keepcaps(false).context("PR_SET_KEEPCAPS")?;
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        bail!("could regain root after dropping privileges");
    }
    Ok(())
}
