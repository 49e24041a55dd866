//! This POP in the 6PN mesh as a task: it owns the WireGuard node, follows the state (its
//! peers, and this POP's row, published when the state does not say it yet), and reconciles
//! every second against the state already read: keepalives start once a peer has answered,
//! which no state change announces.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;
use tracing::warn;

use super::{inputs::StateRx, Drain};
use crate::{
    model::Snapshot,
    sixpn::node::{Node, SixpnStatus},
    state::StateStore,
};

pub type SixpnRx = watch::Receiver<Option<Arc<SixpnStatus>>>;

pub struct Mesh {
    node: Node,
    /// Where this POP's row is published; without one the node only follows the state.
    store: Option<Arc<dyn StateStore>>,
    /// The state last read (empty before the first read, as the agent always reconciled).
    state: Arc<Snapshot>,
    tx: watch::Sender<Option<Arc<SixpnStatus>>>,
}

impl Mesh {
    pub fn new(node: Node, store: Option<Arc<dyn StateStore>>) -> Self {
        let status = Arc::new(node.status());
        Mesh {
            node,
            store,
            state: Arc::default(),
            tx: watch::channel(Some(status)).0,
        }
    }

    pub fn subscribe(&self) -> SixpnRx {
        self.tx.subscribe()
    }

    /// A new state read: the peers reconciled and this POP's row published (with a store).
    pub fn on_state(&mut self, state: Arc<Snapshot>) {
        if let Some(store) = &self.store {
            super::host::apply(&**store, &mut self.node, &state);
        }
        self.state = state;
    }

    fn tick(&mut self) {
        if let Err(error) = self.node.reconcile(&self.state) {
            warn!(%error, "6PN: reconciling the mesh");
        }
        self.tx.send_replace(Some(Arc::new(self.node.status())));
    }

    pub async fn run(mut self, mut states: StateRx, mut drain: Drain) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = drain.signaled() => break,
                Ok(()) = states.changed() => {
                    let input = states.borrow_and_update().clone();
                    if let Some(input) = input {
                        self.on_state(Arc::clone(&input.snapshot));
                    }
                }
                _ = tick.tick() => self.tick(),
            }
        }
    }
}
