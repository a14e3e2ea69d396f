//! The image cache: images on the local engine, pulled on first use and evicted
//! least-recently-used past a disk budget.
//!
//! Owns the record of images this agent has used (size, last use, runs using it).
//! Invariants: concurrent `ensure`s of one missing image make one pull (a per-image lock;
//! the others find the image present when they get the lock); an image is pinned (in
//! use) from the moment `ensure` is called, before it is even looked up, so an eviction
//! running concurrently can never delete an image a task was just handed; eviction only
//! touches images this cache has used, and never forces (the engine refuses to remove an
//! image a container uses, created or running). A reference without a tag or digest
//! means `:latest`, as the docker CLI reads it (the engine itself would pull every tag).
//!
//! Private images: an image pulled with a tenant's registry login is marked private to
//! that tenant (the marks are kept in a file, so a restarted agent still knows them). A
//! task of another tenant never gets it from the cache: the agent pulls it again with that
//! tenant's own login (or none), so the registry decides, and only a pull that succeeds
//! adds the tenant to the image's mark. Images pulled without a login, and images the
//! engine had before this agent pulled them, are public.
//!
//! Not yet covered: two agents sharing one engine do not see each other's pins, so one
//! may remove an image the other has looked up but not yet created a container from
//! (the other's create then fails and the task is retried). Give each agent its own
//! engine, or a disk budget large enough that nothing is evicted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bollard::Docker;
use futures::StreamExt;
use serde::Serialize;

use super::{ExecError, ExecMetrics};

#[derive(Debug, Clone, Serialize)]
pub struct CachedImage {
    pub image: String,
    pub size_bytes: u64,
    pub in_use: u32,
    pub last_used_unix_ms: u64,
}

struct Entry {
    /// 0 until the image has been found on the engine (it is pinned before the lookup);
    /// such an entry is never evicted, and is forgotten if the lookup fails.
    size_bytes: u64,
    in_use: u32,
    last_used: SystemTime,
}

/// A registry login for one pull. Its `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    pub server: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RegistryCredentials {{ server: {:?}, username: {:?}, password: <hidden> }}",
            self.server, self.username
        )
    }
}

/// Who asks for an image: the tenant of the task, and its login for the image's registry.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub tenant: String,
    pub credentials: Option<RegistryCredentials>,
}

struct Inner {
    docker: Docker,
    budget: u64,
    metrics: ExecMetrics,
    entries: Mutex<HashMap<String, Entry>>,
    pulls: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Image → tenants whose pull of it succeeded, for images pulled with a login.
    private: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// Where `private` is kept (None: in memory only).
    private_file: Option<PathBuf>,
}

#[derive(Clone)]
pub struct ImageCache {
    inner: Arc<Inner>,
}

/// Marks an image in use until dropped.
pub struct ImageGuard {
    inner: Arc<Inner>,
    image: String,
}

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let mut e = self.inner.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = e.get_mut(&self.image) {
            entry.in_use = entry.in_use.saturating_sub(1);
            entry.last_used = SystemTime::now();
            // Pinned by an `ensure` that failed before it found the image: forget it.
            if entry.in_use == 0 && entry.size_bytes == 0 {
                e.remove(&self.image);
            }
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl ImageCache {
    pub fn new(docker: Docker, disk_budget_bytes: u64, metrics: ExecMetrics) -> Self {
        Self::with_private_marks(docker, disk_budget_bytes, metrics, None)
    }

    /// A cache that keeps its private-image marks in `file` (read now if it exists).
    pub fn with_private_marks(
        docker: Docker,
        disk_budget_bytes: u64,
        metrics: ExecMetrics,
        file: Option<PathBuf>,
    ) -> Self {
        let private = file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|bytes| match serde_json::from_slice(&bytes) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable private-image marks; treating every cached image as private");
                    None
                }
            })
            .unwrap_or_default();
        ImageCache {
            inner: Arc::new(Inner {
                docker,
                budget: disk_budget_bytes,
                metrics,
                entries: Mutex::new(HashMap::new()),
                pulls: Mutex::new(HashMap::new()),
                private: Mutex::new(private),
                private_file: file,
            }),
        }
    }

    /// Whether `tenant` may use the cached `image` without pulling it again.
    fn may_use_cached(&self, image: &str, tenant: &str) -> bool {
        let p = self.inner.private.lock().unwrap_or_else(|p| p.into_inner());
        p.get(image).is_none_or(|tenants| tenants.contains(tenant))
    }

    /// Records that `tenant` pulled `image` with a login (`private`) or that a pull of it
    /// by `tenant` succeeded while it was private already.
    async fn mark(&self, image: &str, tenant: &str) -> Result<(), ExecError> {
        let snapshot = {
            let mut p = self.inner.private.lock().unwrap_or_else(|p| p.into_inner());
            p.entry(image.to_string()).or_default().insert(tenant.to_string());
            serde_json::to_vec(&*p).map_err(|e| ExecError::Io(std::io::Error::other(e)))?
        };
        if let Some(f) = &self.inner.private_file {
            let tmp = f.with_extension("tmp");
            tokio::fs::write(&tmp, &snapshot).await?;
            tokio::fs::rename(&tmp, f).await?;
        }
        Ok(())
    }

    async fn local_size(&self, image: &str) -> Result<Option<u64>, ExecError> {
        match self.inner.docker.inspect_image(image).await {
            Ok(i) => Ok(Some(i.size.unwrap_or(0).max(0) as u64)),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn pull(&self, image: &str, credentials: Option<&RegistryCredentials>) -> Result<(), ExecError> {
        let started = Instant::now();
        let opts = bollard::query_parameters::CreateImageOptionsBuilder::default().from_image(image).build();
        let auth = credentials.map(|c| bollard::auth::DockerCredentials {
            username: Some(c.username.clone()),
            password: Some(c.password.clone()),
            serveraddress: Some(c.server.clone()),
            ..Default::default()
        });
        let mut s = self.inner.docker.create_image(Some(opts), None, auth);
        while let Some(item) = s.next().await {
            let info =
                item.map_err(|e| ExecError::Image { image: image.to_string(), reason: format!("pull failed: {e}") })?;
            if let Some(msg) = info.error_detail.and_then(|d| d.message) {
                return Err(ExecError::Image { image: image.to_string(), reason: format!("pull failed: {msg}") });
            }
        }
        self.inner.metrics.pull_seconds.observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Makes sure `image` is on the engine (pulling it once if not) and marks it in use
    /// until the guard is dropped. A private image another tenant pulled is pulled again
    /// with `access`'s login (see the module doc).
    pub async fn ensure(&self, image: &str, access: &Access) -> Result<ImageGuard, ExecError> {
        let image = normalize(image);
        // Pin first: from here on no eviction removes it, even before it is looked up.
        {
            let mut e = self.inner.entries.lock().unwrap_or_else(|p| p.into_inner());
            let entry =
                e.entry(image.clone()).or_insert(Entry { size_bytes: 0, in_use: 0, last_used: SystemTime::now() });
            entry.in_use += 1;
        }
        let guard = ImageGuard { inner: self.inner.clone(), image: image.clone() };
        let cached = match self.local_size(&image).await? {
            Some(size) if self.may_use_cached(&image, &access.tenant) => Some(size),
            Some(_) => {
                // Private to other tenants: the registry decides with this tenant's login.
                self.pull(&image, access.credentials.as_ref()).await.map_err(|e| ExecError::Image {
                    image: image.clone(),
                    reason: format!("cached for another tenant; this tenant's own pull failed: {e}"),
                })?;
                self.mark(&image, &access.tenant).await?;
                self.local_size(&image).await?
            }
            None => None,
        };
        let size = match cached {
            Some(size) => {
                self.inner.metrics.image_hits.inc();
                size
            }
            None => {
                let lock = {
                    let mut p = self.inner.pulls.lock().unwrap_or_else(|p| p.into_inner());
                    p.entry(image.clone()).or_default().clone()
                };
                let _held = lock.lock().await;
                match self.local_size(&image).await? {
                    // Pulled by whoever held the lock before us (for this tenant, or
                    // publicly).
                    Some(size) if self.may_use_cached(&image, &access.tenant) => {
                        self.inner.metrics.image_hits.inc();
                        size
                    }
                    _ => {
                        self.inner.metrics.image_misses.inc();
                        // Marked before the pull: from the moment the engine lists it, a
                        // concurrent `ensure` of another tenant (which looks before taking
                        // this lock) must find it private. A failed pull leaves a mark on
                        // an absent image, which only costs a later tenant one more pull.
                        let private = access.credentials.is_some() || !self.may_use_cached(&image, &access.tenant);
                        if private {
                            self.mark(&image, &access.tenant).await?;
                        }
                        self.pull(&image, access.credentials.as_ref()).await?;
                        self.local_size(&image).await?.ok_or_else(|| ExecError::Image {
                            image: image.clone(),
                            reason: "pulled, but the engine does not list it".into(),
                        })?
                    }
                }
            }
        };
        {
            let mut e = self.inner.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(entry) = e.get_mut(&image) {
                entry.size_bytes = size;
                entry.last_used = SystemTime::now();
            }
        }
        let victims = self.over_budget();
        if !victims.is_empty() {
            let this = self.clone();
            tokio::spawn(async move { this.evict(victims).await });
        }
        Ok(guard)
    }

    /// Least-recently-used images not in use, enough to get back under the budget.
    fn over_budget(&self) -> Vec<String> {
        let e = self.inner.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut total: u64 = e.values().map(|x| x.size_bytes).sum();
        if total <= self.inner.budget {
            return Vec::new();
        }
        let mut idle: Vec<(&String, &Entry)> = e.iter().filter(|(_, x)| x.in_use == 0 && x.size_bytes > 0).collect();
        idle.sort_by_key(|(_, x)| x.last_used);
        let mut out = Vec::new();
        for (name, x) in idle {
            if total <= self.inner.budget {
                break;
            }
            total -= x.size_bytes;
            out.push(name.clone());
        }
        out
    }

    async fn evict(&self, images: Vec<String>) {
        for image in images {
            // Re-check under the lock: it may have been taken again meanwhile.
            let idle = {
                let mut e = self.inner.entries.lock().unwrap_or_else(|p| p.into_inner());
                match e.get(&image) {
                    Some(x) if x.in_use == 0 && x.size_bytes > 0 => {
                        e.remove(&image);
                        true
                    }
                    _ => false,
                }
            };
            if !idle {
                continue;
            }
            match self
                .inner
                .docker
                .remove_image(&image, None::<bollard::query_parameters::RemoveImageOptions>, None)
                .await
            {
                Ok(_) => tracing::info!(image, "evicted image (over the disk budget)"),
                Err(e) => tracing::warn!(image, error = %e, "evicting image failed"),
            }
        }
    }

    /// Pulls each image now so the first task using it does not wait.
    pub async fn prepull(&self, images: &[String]) {
        for image in images {
            match self.ensure(image, &Access::default()).await {
                Ok(guard) => drop(guard),
                Err(e) => tracing::warn!(image, error = %e, "pre-pull failed"),
            }
        }
    }

    pub fn snapshot(&self) -> Vec<CachedImage> {
        let e = self.inner.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<CachedImage> = e
            .iter()
            .map(|(k, x)| CachedImage {
                image: k.clone(),
                size_bytes: x.size_bytes,
                in_use: x.in_use,
                last_used_unix_ms: unix_ms(x.last_used),
            })
            .collect();
        out.sort_by(|a, b| a.image.cmp(&b.image));
        out
    }
}

/// `name` → `name:latest`; a reference with a tag or a digest is kept as it is. The tag
/// is after the last `/` (a registry host may carry a port: `host:5000/app`).
pub fn normalize(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') { image.to_string() } else { format!("{image}:latest") }
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn untagged_references_mean_latest() {
        assert_eq!(normalize("busybox"), "busybox:latest");
        assert_eq!(normalize("drover-test/busybox:1"), "drover-test/busybox:1");
        assert_eq!(normalize("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(normalize("localhost:5000/app:2"), "localhost:5000/app:2");
        assert_eq!(normalize("app@sha256:abcd"), "app@sha256:abcd");
    }
}
