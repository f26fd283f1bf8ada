//! The coordinator's handling of the tracker's locations: availability, news of connected
//! sources, new connections, and whether a missing chunk has only dropped holders left.

use std::net::SocketAddr;

use proto::tracker::Locations;
use proto::Have;
use tokio::time::Instant;
use tracing::debug;

use super::{Action, Coordinator, Link, Record};
use crate::download::scheduler::SourceId;
use crate::download::types::SourceReport;
use crate::error::Error;

impl Coordinator {
    /// New locations: availability for rarest-first, news of connected sources, connections to
    /// new ones (up to the cap, after their backoff).
    pub(super) fn on_locations(&mut self, mut loc: Locations, now: Instant) -> Result<(), Error> {
        if loc.root != self.root {
            return Err(Error::ContentChanged(self.name.clone()));
        }
        self.sched.set_availability(std::mem::take(&mut loc.availability));
        for rec in self.sources.values_mut() {
            rec.listed = false;
        }
        for src in &loc.sources {
            if Some(src.addr) == self.me {
                continue;
            }
            let next_id = self.by_addr.len() as SourceId + 1;
            let id = *self.by_addr.entry(src.addr).or_insert(next_id);
            let rec = self.sources.entry(id).or_insert_with(|| Record::new(src.addr));
            rec.listed = true;
            if rec.report.dropped.is_some() {
                continue;
            }
            match rec.link {
                Link::Up { .. } => {
                    self.sched.update_source(id, &src.have);
                    self.top_up(id);
                }
                Link::Connecting => {}
                Link::Down => {
                    if rec.retry_at.is_some_and(|t| t > now)
                        || (self.linked >= self.config.max_sources && !self.make_room())
                    {
                        continue;
                    }
                    let Some(rec) = self.sources.get_mut(&id) else { continue };
                    rec.link = Link::Connecting;
                    rec.connecting = Some((now, src.have.clone()));
                    self.linked += 1;
                    self.actions.push(Action::Connect { source: id, addr: src.addr });
                }
            }
        }
        self.progress.waiting_chunks = self.sched.unavailable();
        self.progress.active_sources = self.linked;
        if self.progress.waiting_chunks > 0 {
            debug!(waiting = self.progress.waiting_chunks, "waiting for sources of some chunks");
        }
        match self.stuck(&loc) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// An error if some missing chunk can never arrive: every holder of it was dropped for sending
    /// bad data. Only judged from a reply that lists every source (not a capped selection), by a
    /// byte-wise union of the holders' bitmaps.
    fn stuck(&self, loc: &Locations) -> Option<Error> {
        if self.dropped == 0 || loc.sources.len() < loc.total_sources as usize {
            return None;
        }
        let n = self.sched.num_chunks();
        let bytes = n.div_ceil(8) as usize;
        let (mut honest, mut dropped) = (vec![0u8; bytes], vec![0u8; bytes]);
        for src in &loc.sources {
            let banned = self
                .by_addr
                .get(&src.addr)
                .and_then(|id| self.sources.get(id))
                .is_some_and(|r| r.report.dropped.is_some());
            let into = if banned { &mut dropped } else { &mut honest };
            match &src.have {
                Have::Complete => into.fill(0xff),
                Have::Partial(b) => into.iter_mut().zip(b.as_bytes()).for_each(|(i, b)| *i |= b),
            }
        }
        let only_dropped = |i: usize| dropped[i] & !honest[i];
        let chunk = (0..bytes)
            .filter(|&i| only_dropped(i) != 0)
            .flat_map(|i| (0..8u32).map(move |b| i as u32 * 8 + b))
            .find(|&c| c < n && only_dropped((c / 8) as usize) & (1 << (c % 8)) != 0 && !self.sched.has(c))?;
        Some(Error::NoHonestSource { chunk, dropped: self.dropped })
    }
}

impl Record {
    fn new(addr: SocketAddr) -> Self {
        Record {
            report: SourceReport {
                addr,
                bytes: 0,
                chunks: 0,
                bad_chunks: 0,
                wasted_bytes: 0,
                duplicate_bytes: 0,
                dropped: None,
            },
            link: Link::Down,
            failures: 0,
            retry_at: None,
            strikes: 0,
            useless: 0,
            listed: false,
            idle_since: None,
            connecting: None,
        }
    }
}
