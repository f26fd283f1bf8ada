//! The swarms the lab runs, and the bound each is held to: Kumar–Ross, and its extension to
//! downloaders that join late and leave ([`fluid_bound`]).

use ::tests::netns::{Family, HostSpec};

use super::super::util::kumar_ross;
use super::{tracker_name, Outcome};

/// One downloader of a scenario.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Member {
    /// Its host's egress cap, bytes/s (`None`: not shaped).
    pub(crate) rate: Option<u64>,
    /// Starts only when the first downloader has its file.
    pub(crate) late: bool,
    /// Killed (SIGKILL) once it holds this fraction of the file.
    pub(crate) leave_at: Option<f64>,
}

/// A swarm: one seed and its downloaders.
#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    /// File size, bytes.
    pub(crate) size: u64,
    /// The seed host's egress cap, bytes/s (`None`: not shaped).
    pub(crate) seed_rate: Option<u64>,
    pub(crate) members: Vec<Member>,
    pub(crate) family: Family,
    /// Our trackers (the BitTorrent run uses one opentracker on the first tracker host).
    pub(crate) trackers: usize,
}

impl Scenario {
    /// N equal downloaders at `rate`, the seed too.
    pub(crate) fn equal(n: usize, size: u64, rate: u64, family: Family, trackers: usize) -> Scenario {
        let m = Member { rate: Some(rate), late: false, leave_at: None };
        Scenario { size, seed_rate: Some(rate), members: vec![m; n], family, trackers }
    }

    /// The Kumar–Ross bound of this swarm as if everyone started together and stayed (uncapped
    /// downloads), seconds; `None` when some rate is not capped.
    pub(crate) fn kumar_ross(&self) -> Option<f64> {
        let seed = self.seed_rate? as f64;
        let ups: Option<Vec<f64>> = self.members.iter().map(|m| m.rate.map(|r| r as f64)).collect();
        Some(kumar_ross(self.size as f64, seed, &ups?, None))
    }

    /// The fluid bound of this swarm given when its downloaders actually joined and left in a
    /// run ([`fluid_bound`]); the Kumar–Ross bound when nobody joins late or leaves.
    pub(crate) fn bound(&self, o: &Outcome) -> Option<f64> {
        let seed = self.seed_rate? as f64;
        let f = self.size as f64;
        let mut lives = Vec::new();
        for (m, d) in self.members.iter().zip(&o.members) {
            lives.push(Life {
                rate: m.rate? as f64,
                start: d.started,
                end: d.left.map(|(at, _)| at),
                need: d.left.map_or(f, |(_, frac)| frac * f),
            });
        }
        Some(fluid_bound(f, seed, &lives))
    }

    /// The hosts: trackers, the seed, the downloaders.
    pub(super) fn hosts(&self) -> Vec<HostSpec> {
        let mut hosts: Vec<HostSpec> =
            (0..self.trackers).map(|t| HostSpec::new(tracker_name(self.trackers, t), None)).collect();
        hosts.push(HostSpec::new("seed", self.seed_rate));
        hosts.extend(self.members.iter().enumerate().map(|(i, m)| HostSpec::new(format!("d{i}"), m.rate)));
        hosts
    }
}

/// One downloader's part in the fluid bound.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Life {
    /// Upload rate while present, bytes/s.
    pub(crate) rate: f64,
    /// When it joined, seconds.
    pub(crate) start: f64,
    /// When it left, if it did.
    pub(crate) end: Option<f64>,
    /// Bytes it must receive (the file, or what it held when it left).
    pub(crate) need: f64,
}

/// A lower bound on the time to serve a swarm whose downloaders join and leave at given times:
/// the Kumar–Ross fluid argument with arrivals and departures. Only the seed holds the file at
/// 0, so T ≥ F/u_s; and for every arrival time s, everything the downloaders that joined at s or
/// later receive must be uploaded after s by whoever is present then:
/// ∫_s^T (u_s + Σ_{i present at t} u_i) dt ≥ Σ_{start_i ≥ s} need_i.
/// Like Kumar–Ross it lets a downloader upload at its full rate from the moment it joins (it
/// ignores that it must first receive what it sends), so it is a true lower bound. With everyone
/// joining at 0 and staying, it is Kumar–Ross exactly.
pub(crate) fn fluid_bound(f: f64, seed: f64, lives: &[Life]) -> f64 {
    let mut t = f / seed;
    let mut starts: Vec<f64> = lives.iter().map(|l| l.start).collect();
    starts.sort_by(f64::total_cmp);
    starts.dedup();
    for s in starts {
        let need: f64 = lives.iter().filter(|l| l.start >= s).map(|l| l.need).sum();
        t = t.max(fill_time(s, need, seed, lives));
    }
    t
}

/// The earliest T ≥ `s` at which the swarm's upload capacity since `s` adds up to `need`.
fn fill_time(s: f64, need: f64, seed: f64, lives: &[Life]) -> f64 {
    let present = |t: f64, l: &Life| l.start <= t && l.end.is_none_or(|e| t < e);
    let mut points: Vec<f64> = lives.iter().flat_map(|l| [Some(l.start), l.end]).flatten().filter(|&p| p > s).collect();
    points.sort_by(f64::total_cmp);
    let (mut t, mut left) = (s, need);
    let mut next = points.into_iter();
    loop {
        let c = seed + lives.iter().filter(|l| present(t, l)).map(|l| l.rate).sum::<f64>();
        let until = next.next().unwrap_or(f64::INFINITY);
        if c * (until - t) >= left {
            return t + left / c;
        }
        left -= c * (until - t);
        t = until;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn life(rate: f64, start: f64, end: Option<f64>, need: f64) -> Life {
        Life { rate, start, end, need }
    }

    #[test]
    fn fluid_bound_without_churn_is_kumar_ross() {
        let lives: Vec<Life> = (0..8).map(|_| life(8.0, 0.0, None, 64.0)).collect();
        assert!((fluid_bound(64.0, 8.0, &lives) - kumar_ross(64.0, 8.0, &[8.0; 8], None)).abs() < 1e-9);
        let mut ups = vec![8.0; 4];
        ups.extend([2.0; 4]);
        let lives: Vec<Life> = ups.iter().map(|&u| life(u, 0.0, None, 64.0)).collect();
        assert!((fluid_bound(64.0, 8.0, &lives) - kumar_ross(64.0, 8.0, &ups, None)).abs() < 1e-9);
    }

    #[test]
    fn fluid_bound_with_late_arrivals_and_departures() {
        // Seed 1, two at 0 (need 1 each), one joining at 1: capacity 3 until 1 (3 delivered),
        // then 4 for the late one's 1: T = 1.25.
        let lives = [life(1.0, 0.0, None, 1.0), life(1.0, 0.0, None, 1.0), life(1.0, 1.0, None, 1.0)];
        assert!((fluid_bound(1.0, 1.0, &lives) - 1.25).abs() < 1e-9);
        // A leaver: capacity 3 until 0.5 covers its half and the other's whole file; F/u_s = 1.
        let lives = [life(1.0, 0.0, None, 1.0), life(1.0, 0.0, Some(0.5), 0.5)];
        assert!((fluid_bound(1.0, 1.0, &lives) - 1.0).abs() < 1e-9);
        // A slow swarm after a departure: seed 1, A (rate 1) stays, B (rate 2) leaves at 0.5
        // holding 0.5; needs 1 + 0.5 + 4·1 (four more, each rate 0, joining at 0) = 5.5 over
        // capacity 4 for 0.5 s (2), then 2: T = 0.5 + 3.5/2 = 2.25.
        let mut lives = vec![life(1.0, 0.0, None, 1.0), life(2.0, 0.0, Some(0.5), 0.5)];
        lives.extend((0..4).map(|_| life(0.0, 0.0, None, 1.0)));
        assert!((fluid_bound(1.0, 1.0, &lives) - 2.25).abs() < 1e-9);
    }
}
