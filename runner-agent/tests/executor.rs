//! The executor against the real Docker engine (no mocks): failure paths that the
//! end-to-end agent tests do not reach. Needs a running engine (`.ci/run` starts one).

use std::sync::Arc;
use std::time::Duration;

use drover_runner_agent::executor::image_cache::Access;
use drover_runner_agent::executor::{
    ContainerSpec, DockerExecutor, ExecMetrics, ExecutorConfig, ImageCache, RunOutcome, container, import,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "drover-test/busybox:1";

async fn executor(work: &std::path::Path) -> (DockerExecutor, ExecMetrics) {
    let docker = container::connect()
        .await
        .unwrap_or_else(|e| panic!("needs a running Docker engine (run `bash .ci/run`, or as root `dockerd &`): {e}"));
    import::ensure_busybox_image(&docker, IMAGE).await.expect("import the busybox image");
    let metrics = ExecMetrics::new(&prometheus::Registry::new()).expect("metrics");
    let cache = Arc::new(ImageCache::new(docker, 1 << 40, metrics.clone()));
    let cfg = ExecutorConfig {
        default_memory_bytes: 64 << 20,
        default_cpu_millis: 500,
        default_pids: 64,
        stop_grace: Duration::from_secs(1),
        work_dir: work.to_path_buf(),
    };
    (DockerExecutor::connect(cfg, cache, metrics.clone()).await.expect("connect"), metrics)
}

fn spec(agent: &str, image: &str, script: &str) -> ContainerSpec {
    ContainerSpec {
        task_id: 1,
        attempt: 1,
        lease_epoch: 1,
        agent_id: agent.into(),
        tenant: "t".into(),
        code: "c".into(),
        image: image.into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: Default::default(),
        payload: b"p".to_vec(),
        memory_bytes: 0,
        cpu_millis: 0,
        pids: 0,
        timeout: Duration::from_secs(30),
        network_mode: String::new(),
        credentials: None,
    }
}

fn agent_id(name: &str) -> String {
    format!("exec-{name}-{}", std::process::id())
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_is_an_image_pull_failure_and_leaves_nothing() {
    let work = tempfile::tempdir().expect("tempdir");
    let (ex, metrics) = executor(work.path()).await;
    let agent = agent_id("nopull");
    let (tx, _rx) = mpsc::channel(8);
    let r = ex
        .run(&spec(&agent, "drover-test/absent:404", "true"), tx, CancellationToken::new(), &|_| {
            Box::pin(async { true })
        })
        .await;
    assert_eq!(
        (r.outcome, r.infrastructure),
        (RunOutcome::ImagePull, false),
        "reported as image_pull, not handed back"
    );
    assert!(r.error.contains("drover-test/absent:404") && r.error.contains("pull failed"), "{}", r.error);
    assert!(r.container_id.is_empty());
    assert_eq!(metrics.image_misses.get(), 1);
    assert!(ex.labelled(&agent).await.expect("list").is_empty());
    assert_eq!(std::fs::read_dir(work.path()).expect("work dir").count(), 0, "run directory removed");
}

#[tokio::test]
async fn cancelling_kills_and_removes_the_container() {
    let work = tempfile::tempdir().expect("tempdir");
    let (ex, metrics) = executor(work.path()).await;
    let agent = agent_id("cancel");
    let (tx, mut rx) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    let created = Arc::new(std::sync::Mutex::new(String::new()));
    let seen = created.clone();
    let s = spec(&agent, IMAGE, "echo up; sleep 60");
    let run = {
        let cancel = cancel.clone();
        async move {
            ex.run(&s, tx, cancel, &move |id| {
                *seen.lock().unwrap_or_else(|p| p.into_inner()) = id;
                Box::pin(async { true })
            })
            .await
        }
    };
    let canceller = async {
        // The first output proves the container runs; then cancel.
        let first = rx.recv().await.expect("output");
        assert_eq!(&first.data[..], b"up\n");
        cancel.cancel();
    };
    let (r, ()) = tokio::join!(run, canceller);
    assert_eq!(r.outcome, RunOutcome::Killed, "{r:?}");
    assert_eq!(r.container_id, *created.lock().unwrap_or_else(|p| p.into_inner()));
    assert_eq!(metrics.image_hits.get(), 1);
    let docker = container::connect().await.expect("docker");
    let gone =
        docker.inspect_container(&r.container_id, None::<bollard::query_parameters::InspectContainerOptions>).await;
    assert!(
        matches!(gone, Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })),
        "container still there: {gone:?}"
    );
}

#[tokio::test]
async fn the_cache_evicts_least_recently_used_images_past_its_budget_but_never_one_in_use() {
    let docker = container::connect().await.expect("docker");
    let tar = import::busybox_rootfs_tar(std::path::Path::new("/bin/busybox")).expect("rootfs");
    let tag = std::process::id().to_string();
    let names: Vec<String> = ["a", "b", "c"].iter().map(|n| format!("drover-test/evict-{n}:{tag}")).collect();
    for n in &names {
        let (repo, t) = n.rsplit_once(':').expect("tag");
        import::import_rootfs(&docker, tar.clone(), repo, t).await.expect("import");
    }
    let size = docker.inspect_image(&names[0]).await.expect("inspect").size.unwrap_or(0) as u64;
    let metrics = ExecMetrics::new(&prometheus::Registry::new()).expect("metrics");
    // Room for two images.
    let cache = ImageCache::new(docker.clone(), size * 2 + size / 2, metrics.clone());
    let a = cache.ensure(&names[0], &Access::default()).await.expect("a");
    let b = cache.ensure(&names[1], &Access::default()).await.expect("b");
    drop(b);
    // a is in use: c's arrival must evict b, the least recently used idle image.
    let _c = cache.ensure(&names[2], &Access::default()).await.expect("c");
    let present = |n: String| {
        let docker = docker.clone();
        async move { docker.inspect_image(&n).await.is_ok() }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while present(names[1].clone()).await {
        assert!(std::time::Instant::now() < deadline, "b was not evicted: {:?}", cache.snapshot());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(present(names[0].clone()).await, "the image in use stays");
    assert!(present(names[2].clone()).await);
    assert_eq!((metrics.image_hits.get(), metrics.image_misses.get()), (3, 0));
    let listed: Vec<String> = cache.snapshot().into_iter().map(|i| i.image).collect();
    assert_eq!(listed, [names[0].clone(), names[2].clone()]);
    drop(a);
    for n in [&names[0], &names[2]] {
        let _ = docker.remove_image(n, None::<bollard::query_parameters::RemoveImageOptions>, None).await;
    }
}

#[tokio::test]
async fn allocating_past_the_memory_limit_is_reported_as_an_oom_kill() {
    let work = tempfile::tempdir().expect("tempdir");
    let (ex, metrics) = executor(work.path()).await;
    let agent = agent_id("oom");
    let mut s = spec(&agent, IMAGE, "exec dd if=/dev/zero of=/dev/null bs=64M count=1");
    s.memory_bytes = 32 << 20;
    let (tx, _rx) = mpsc::channel(64);
    let r = ex.run(&s, tx, CancellationToken::new(), &|_| Box::pin(async { true })).await;
    assert_eq!((r.outcome, r.exit_code, r.oom_killed), (RunOutcome::Error, Some(137), true), "{r:?}");
    assert_eq!(metrics.oom_kills.get(), 1);
}
