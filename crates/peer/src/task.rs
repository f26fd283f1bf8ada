//! One way to spawn a task: [`TaskGroup::spawn`] gives it a tracing span and a child of its
//! group's cancellation token, and tracks it so the group can be waited on. Cancelling a group
//! cancels every task in it and in its child groups, so nothing runs on after the node that
//! started it is stopped (a child group's tasks are waited for by whoever owns that group: a
//! download waits for its own before it returns).

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span};

/// Tasks that stop together. Cheap to clone (clones share the tasks and the token).
#[derive(Clone, Default)]
pub(crate) struct TaskGroup {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl TaskGroup {
    /// A group cancelled when `token` is.
    pub(crate) fn new(token: CancellationToken) -> Self {
        Self { token, tracker: TaskTracker::new() }
    }

    /// A group of its own, cancelled with this one (or alone), waited on separately.
    pub(crate) fn child(&self) -> Self {
        Self::new(self.token.child_token())
    }

    /// The group's token.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Spawns `make(token)` in `span`, where `token` is a child of the group's: cancelled with the
    /// group, or alone through the token returned. The task decides what cancellation means to it
    /// (a session says goodbye first); [`TaskGroup::spawn_until`] is for tasks that just stop.
    pub(crate) fn spawn<F, Fut>(&self, span: Span, make: F) -> CancellationToken
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let token = self.token.child_token();
        self.tracker.spawn(make(token.clone()).instrument(span));
        token
    }

    /// Spawns `fut` in `span`, dropped where it stands when its token is cancelled.
    pub(crate) fn spawn_until<Fut>(&self, span: Span, fut: Fut) -> CancellationToken
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn(span, |token| async move {
            token.run_until_cancelled(fut).await;
        })
    }

    /// Cancels every task of the group.
    pub(crate) fn cancel(&self) {
        self.token.cancel();
    }

    /// Waits until every task spawned so far has ended (spawning later is still allowed).
    pub(crate) async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
        self.tracker.reopen();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn cancelling_a_group_stops_its_tasks_and_its_childrens() {
        let group = TaskGroup::new(CancellationToken::new());
        let child = group.child();
        let (tx, rx) = oneshot::channel::<()>();
        // A task that would run forever, holding `tx`: dropping it closes `rx`.
        child.spawn_until(tracing::Span::none(), async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        let graceful = group.spawn(tracing::Span::none(), |token| async move { token.cancelled().await });
        group.cancel();
        assert!(graceful.is_cancelled());
        child.wait().await;
        group.wait().await;
        assert!(rx.await.is_err(), "the child's task was dropped");
    }

    #[tokio::test]
    async fn a_task_can_be_cancelled_alone() {
        let group = TaskGroup::new(CancellationToken::new());
        let one = group.spawn_until(tracing::Span::none(), std::future::pending());
        let other = group.spawn_until(tracing::Span::none(), std::future::pending());
        one.cancel();
        assert!(!other.is_cancelled() && !group.token().is_cancelled());
        group.cancel();
        group.wait().await;
    }
}
