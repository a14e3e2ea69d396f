//! Which waiting lease polls [`LeaseWaits`] wakes: only classes placement would give
//! work to, and no more polls than tasks queued.

use futures::FutureExt;

use super::*;
use crate::api::lease_waits::LeaseWaits;
use crate::state::model::AgentAttrs;

fn region(r: &str) -> AgentAttrs {
    AgentAttrs { region: r.into(), ..Default::default() }
}

/// Polls armed on `notify` (as an open poll arms its wake-up before it looks for work).
fn armed(notify: &tokio::sync::Notify, polls: usize) -> Vec<std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>>> {
    (0..polls)
        .map(|_| {
            let mut n = Box::pin(notify.notified());
            n.as_mut().enable();
            n
        })
        .collect()
}

/// How many of the armed polls have been woken.
fn woken(polls: &mut [std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>>]) -> usize {
    polls.iter_mut().map(|n| n.as_mut().now_or_never()).filter(Option::is_some).count()
}

#[test]
fn only_classes_with_work_are_woken_and_no_more_polls_than_tasks() {
    let mut h = Harness::new();
    h.tenant("acme", limits(100, 0), &[spec("one", 0, 0)]);
    let waits = LeaseWaits::default();
    let eu: Vec<_> = (0..5).map(|_| waits.wait(&region("eu"))).collect();
    let us = waits.wait(&region("us"));
    assert_eq!(waits.waiting(), 6);
    assert_eq!(waits.wake(&h.sm), 0, "nothing queued: nobody is woken");

    // Two tasks that only eu agents may take: two eu polls are woken, no us poll.
    h.queue("acme", vec![placed("one", "", "eu"), placed("one", "", "eu")]);
    let mut eu_polls = armed(&eu[0].notify, 5);
    let mut us_polls = armed(&us.notify, 1);
    assert_eq!(waits.wake(&h.sm), 2);
    assert_eq!(woken(&mut eu_polls), 2);
    assert_eq!(woken(&mut us_polls), 0);
    drop((eu_polls, us_polls));

    // Polls that end leave their class; an empty class is gone.
    drop(eu);
    drop(us);
    assert_eq!(waits.waiting(), 0);
    assert_eq!(waits.wake(&h.sm), 0);
}
