//! `drover task list` shows every task, not just a first page: with 1,001 tasks, one page
//! of 1,000 says how to get the next, `--after` gets it, and `--all` gets them all.

mod common;

use std::process::{Command, Output};

use drover_chaos::{ClusterOptions, clients};

fn list(addr: &str, extra: &[&str]) -> Output {
    let out = Command::new(common::bin())
        .args(["task", "list", "--addr", addr, "--dev-tenant", "acme", "-o", "json"])
        .args(extra)
        .output()
        .expect("run drover task list");
    assert!(out.status.success(), "{out:?}");
    out
}

fn ids(out: &Output) -> Vec<u64> {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v.as_array().expect("array").iter().map(|t| t["id"].as_u64().expect("id")).collect()
}

#[tokio::test]
async fn task_list_pages_past_its_limit_and_all_shows_every_task() {
    let c = common::cluster(ClusterOptions { nodes: 1, ..Default::default() }).await;
    let node = c.ids()[0];
    common::setup_tenant(&c, node).await;
    let mut t = clients::tenant(c.addr(node), "acme").expect("tenant client");
    for (n, key) in [(1000, "first"), (1, "second")] {
        t.queue_tasks(common::batch(n, 16, key)).await.expect("queue");
    }
    let addr = c.addr(node);

    let first = list(addr, &["--limit", "1000"]);
    let page = ids(&first);
    assert_eq!(page.len(), 1000);
    let last = page[999];
    let hint = String::from_utf8_lossy(&first.stderr);
    assert!(hint.contains(&format!("next page: --after {last}")), "{hint}");

    let rest = ids(&list(addr, &["--limit", "1000", "--after", &last.to_string()]));
    assert_eq!(rest.len(), 1);
    assert!(rest[0] > last);

    let all = ids(&list(addr, &["--all", "--limit", "300"]));
    assert_eq!(all.len(), 1001, "every task, over four pages");
    assert!(all.windows(2).all(|w| w[0] < w[1]), "in id order, none twice");
}
