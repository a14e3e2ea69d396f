//! Building an image without a registry: a root filesystem holding the static busybox,
//! imported the way `docker import` does (Engine API create-image from source "-"). Used by
//! the tests, `drover-bench e2e` and `drover dev --demo`.

use std::path::Path;

use bollard::Docker;
use futures::StreamExt;

use super::ExecError;

/// A tar of a minimal root filesystem: `/bin/busybox`, a symlink in `/bin` for each applet
/// it lists, and empty `/tmp` (1777), `/proc`, `/sys`, `/dev`, `/etc`, `/drover`.
pub fn busybox_rootfs_tar(busybox: &Path) -> std::io::Result<Vec<u8>> {
    let list = std::process::Command::new(busybox).arg("--list").output()?;
    if !list.status.success() {
        return Err(std::io::Error::other(format!("{} --list failed", busybox.display())));
    }
    let bin = std::fs::read(busybox)?;
    let mut ar = tar::Builder::new(Vec::new());
    let dir = |ar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(0);
        ar.append_data(&mut h, path, std::io::empty())
    };
    for (d, mode) in [
        ("bin", 0o755),
        ("tmp", 0o1777),
        ("proc", 0o755),
        ("sys", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("drover", 0o755),
    ] {
        dir(&mut ar, d, mode)?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(bin.len() as u64);
    h.set_mtime(0);
    ar.append_data(&mut h, "bin/busybox", bin.as_slice())?;
    for applet in String::from_utf8_lossy(&list.stdout).lines().map(str::trim) {
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(0);
        ar.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    ar.into_inner()
}

/// Imports a root filesystem tar as `repo:tag`.
pub async fn import_rootfs(docker: &Docker, tar: Vec<u8>, repo: &str, tag: &str) -> Result<(), ExecError> {
    let opts =
        bollard::query_parameters::CreateImageOptionsBuilder::default().from_src("-").repo(repo).tag(tag).build();
    let mut s = docker.create_image(Some(opts), Some(bollard::body_full(tar.into())), None);
    while let Some(item) = s.next().await {
        let info = item?;
        if let Some(e) = info.error_detail.and_then(|d| d.message) {
            return Err(ExecError::Image { image: format!("{repo}:{tag}"), reason: e });
        }
    }
    Ok(())
}

/// Imports `/bin/busybox` as `reference` (`repo:tag`) unless that image exists.
pub async fn ensure_busybox_image(docker: &Docker, reference: &str) -> Result<(), ExecError> {
    if docker.inspect_image(reference).await.is_ok() {
        return Ok(());
    }
    let (repo, tag) = reference.rsplit_once(':').unwrap_or((reference, "latest"));
    let tar = busybox_rootfs_tar(Path::new("/bin/busybox")).map_err(|e| ExecError::Image {
        image: reference.to_string(),
        reason: format!("building a busybox root filesystem from /bin/busybox (install busybox-static): {e}"),
    })?;
    import_rootfs(docker, tar, repo, tag).await
}
