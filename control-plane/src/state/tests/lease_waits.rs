//! Which waiting lease polls [`LeaseWaits`] wakes: only classes placement would give
//! work to, and no more polls than tasks queued.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::api::lease_waits::LeaseWaits;
use crate::state::model::AgentAttrs;

fn region(r: &str) -> AgentAttrs {
    AgentAttrs { region: r.into(), ..Default::default() }
}

/// Whether `n` wake-ups reach a notifier (each `notified()` takes one permit at most, so
/// count the pollers that complete promptly).
async fn woken(notify: &Arc<tokio::sync::Notify>, pollers: usize) -> usize {
    let mut handles = Vec::new();
    for _ in 0..pollers {
        let n = notify.clone();
        handles.push(tokio::spawn(async move {
            tokio::time::timeout(Duration::from_millis(50), n.notified()).await.is_ok()
        }));
    }
    let mut count = 0;
    for h in handles {
        count += usize::from(h.await.expect("poller"));
    }
    count
}

#[tokio::test]
async fn only_classes_with_work_are_woken_and_no_more_polls_than_tasks() {
    let mut h = Harness::new();
    h.tenant("acme", limits(100, 0), &[spec("one", 0, 0)]);
    let waits = LeaseWaits::default();
    let eu: Vec<_> = (0..5).map(|_| waits.wait(&region("eu"))).collect();
    let us = waits.wait(&region("us"));
    assert_eq!(waits.waiting(), 6);
    assert_eq!(waits.wake(&h.sm), 0, "nothing queued: nobody is woken");

    // Two tasks that only eu agents may take: two eu polls are woken, no us poll.
    h.queue("acme", vec![placed("one", "", "eu"), placed("one", "", "eu")]);
    let (eu_notify, us_notify) = (eu[0].notify.clone(), us.notify.clone());
    // Pollers wait first, as open polls do; then the apply's wake-up.
    let eu_polls = tokio::spawn({
        let n = eu_notify.clone();
        async move { woken(&n, 5).await }
    });
    let us_polls = tokio::spawn({
        let n = us_notify.clone();
        async move { woken(&n, 1).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(waits.wake(&h.sm), 2);
    assert_eq!(eu_polls.await.expect("eu"), 2);
    assert_eq!(us_polls.await.expect("us"), 0);

    // Polls that end leave their class; an empty class is gone.
    drop(eu);
    drop(us);
    assert_eq!(waits.waiting(), 0);
    assert_eq!(waits.wake(&h.sm), 0);
}
