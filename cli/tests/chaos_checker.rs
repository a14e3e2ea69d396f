//! The chaos checker is proven able to fail: for each deliberate defect a debug server
//! accepts (`[test_breaks]`), a short run of the scenario that exposes it must report a
//! violation of the matching invariant. (The suite itself, `drover-chaos suite ci`, runs
//! every scenario without defects and must report none; `deploy/test.sh` runs it.)

use std::time::Duration;

use drover_chaos::run::{self, BREAKS, RunOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_deliberate_defect_is_caught_by_its_invariant() {
    let out = tempfile::tempdir().expect("temp dir");
    for (seed, (defect, invariant, scenario)) in BREAKS.into_iter().enumerate() {
        // Cancels are 8 % of the operations, and the defect shows only on a task that
        // finished before it: a longer run makes such a cancel all but certain.
        let secs = if defect == "cancel-before-commit" { 24 } else { 12 };
        let opts = RunOptions {
            scenario,
            seed: 1000 + seed as u64,
            duration: Duration::from_secs(secs),
            servers: 3,
            agents: 2,
            drover: env!("CARGO_BIN_EXE_drover").into(),
            out: out.path().to_path_buf(),
            keep: false,
            breaks: vec![defect.to_string()],
        };
        let report = run::run(&opts).await.unwrap_or_else(|e| panic!("{defect}: the run failed: {e:#}"));
        let found = report.findings.iter().find(|f| f.invariant == invariant).expect("the invariant is checked");
        assert!(
            found.violations > 0,
            "{defect} under {}: `{invariant}` found nothing\n{}",
            scenario.name(),
            report.human()
        );
    }
}
