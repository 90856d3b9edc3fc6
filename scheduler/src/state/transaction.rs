//! The transaction: every change of the working set runs in [`State::transact`],
//! store first, memory second, and what it did besides its writes (who must
//! hear of it) is one [`Effects`] value made for it.

use super::*;

/// What one transaction did besides its writes, collected while it runs and
/// acted on once it commits (or dropped with it).
#[derive(Debug, Default)]
pub(super) struct Effects {
    /// Nodes whose desired set changed.
    pub(super) touched: BTreeSet<String>,
    /// Replicas placed on or taken off a node, as (node, replica): what
    /// `Mem::changes` logs.
    pub(super) changed: Vec<(String, String)>,
    /// Nodes that must get their whole set again (registered, back from down).
    pub(super) whole: BTreeSet<String>,
    /// Replicas reported running for the first time, by deployment, as
    /// (replica, node): one `Started` event each deployment.
    pub(super) started: BTreeMap<String, Vec<(String, String)>>,
    /// Whether it changed anything in memory.
    pub(super) mutated: bool,
    /// Whether the endpoints table (ready replicas, deployments, node
    /// ingresses) may have changed.
    pub(super) endpoints_dirty: bool,
    /// Deployments whose rows of the endpoints table may have changed (when
    /// not `endpoints_dirty`, only theirs): what a node's delta lists.
    pub(super) endpoint_names: BTreeSet<String>,
}

impl State {
    /// Runs `f` on the working set inside one store transaction; commits, then wakes
    /// the nodes whose desired set changed. On any failure the working set is
    /// reloaded from the store.
    pub fn transact<T>(&mut self, f: impl FnOnce(&mut Mem, &Tx) -> Result<T, Error>) -> Result<T, Error> {
        let _timer = crate::metrics::METRICS.store_tx_seconds.start_timer();
        let tx = self.store.tx().map_err(Error::Store)?;
        self.mem.fx = Effects::default();
        let result = f(&mut self.mem, &tx);
        let mut fx = std::mem::take(&mut self.mem.fx);
        let result = result.and_then(|v| {
            if !fx.touched.is_empty() {
                self.mem.index += 1;
                tx.set_meta("index", &self.mem.index.to_string()).map_err(Error::Store)?;
                // A failed commit reloads the working set, changes and all.
                self.mem.log_changes(std::mem::take(&mut fx.whole), std::mem::take(&mut fx.changed));
            }
            Ok(v)
        });
        let result = result.and_then(|v| self.store.commit(tx).map(|_| v).map_err(Error::Store));
        match result {
            Ok(v) => {
                let index = self.mem.index;
                for name in fx.touched {
                    if let Some(l) = self.live.get(&name) {
                        l.tx.send_replace(index);
                    }
                }
                if fx.endpoints_dirty {
                    self.endpoints_changed(None);
                } else if !fx.endpoint_names.is_empty() {
                    self.endpoints_changed(Some(fx.endpoint_names));
                }
                if fx.mutated {
                    // The dashboard's live stream and `skiff events -f` wait on this.
                    crate::metrics::changed();
                }
                Ok(v)
            }
            Err(e) => {
                if fx.mutated {
                    // The working set must not keep what the store refused: try
                    // again for a while (an etcd member just lost, say).
                    let mut reloaded = false;
                    for attempt in 0..10 {
                        match Mem::load(&self.store) {
                            Ok(mem) => {
                                self.mem = mem;
                                reloaded = true;
                                break;
                            }
                            Err(le) => {
                                tracing::error!("reloading state after a failed transaction (try {attempt}): {le}");
                                std::thread::sleep(std::time::Duration::from_millis(200));
                            }
                        }
                    }
                    if !reloaded && let Some(resign) = &self.resign {
                        tracing::error!("the working set may differ from the store: stepping down");
                        resign.notify_one();
                    }
                    self.mem.sched_dirty = true;
                    self.endpoints_changed(None);
                }
                Err(e)
            }
        }
    }
}
