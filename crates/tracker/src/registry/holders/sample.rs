//! The draw behind File Locations: up to `k` distinct indices of a list of `n`, in O(k), with
//! every index equally likely and memory read in a few sequential runs.

/// Runs a File Locations sample is drawn in (see [`sample`]).
const RUNS: usize = 8;

/// Up to `k` of the `n` indices of a list, turned into sources by `take` (which refuses the
/// caller): [`RUNS`] runs of consecutive indices starting at distinct random places. Each index
/// is as likely to be drawn as any other and the draw differs between calls, as with a uniform
/// sample, but memory is read in a few sequential runs instead of `k` random places: with
/// thousands of holders per file, cache misses are what File Locations costs. O(k).
pub(super) fn sample<T>(
    n: usize,
    k: usize,
    rng: &mut impl rand::Rng,
    take: impl Fn(usize) -> Option<T>,
    out: &mut Vec<T>,
) {
    // One extra, in case the caller is drawn.
    let want = (k + 1).min(n);
    if want == 0 {
        return;
    }
    let before = out.len();
    if n <= 4 * want {
        // Few holders to draw from: a uniform sample costs as little.
        out.extend(floyd(n, want, rng).into_iter().filter_map(take));
    } else {
        // Runs of `len` start at distinct multiples of `len` (so they never overlap), all offset
        // by one random shift; the last run is shorter when `want` is not a multiple of `len`.
        let len = want.div_ceil(RUNS);
        let shift = rng.random_range(0..n);
        let mut left = want;
        for start in floyd(n / len, want.div_ceil(len), rng) {
            let run = len.min(left);
            left -= run;
            out.extend((0..run).filter_map(|i| take((start * len + i + shift) % n)));
        }
    }
    // The extra drawn in case of the caller: dropped at random, not the last, which would favour
    // some indices.
    while out.len() > before + k {
        let i = rng.random_range(before..out.len());
        out.swap_remove(i);
    }
}

/// `k` distinct indices below `n`, uniformly at random (Floyd's algorithm); O(k²), `k <= n`.
fn floyd(n: usize, k: usize, rng: &mut impl rand::Rng) -> Vec<usize> {
    let mut picked: Vec<usize> = Vec::with_capacity(k);
    for j in n - k..n {
        let t = rng.random_range(0..=j);
        picked.push(if picked.contains(&t) { j } else { t });
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draws are the right size, never repeat an index, never return what `take` refuses, and
    /// over many calls reach every index about equally often.
    #[test]
    fn sample_draws_distinct_indices_covering_the_list() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (n, k) in [(1, 1), (5, 8), (10, 3), (64, 64), (65, 64), (100, 64), (259, 64), (1000, 64), (10_000, 64)] {
            let mut hits = vec![0u32; n];
            let rounds = 400;
            for _ in 0..rounds {
                let mut out = Vec::new();
                sample(n, k, &mut rng, |i| (i != 0).then_some(i), &mut out);
                assert_eq!(out.len(), k.min(n - 1), "n {n} k {k}");
                let mut sorted = out.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), out.len(), "n {n} k {k}: repeated index");
                assert!(out.iter().all(|&i| i != 0 && i < n));
                out.iter().for_each(|&i| hits[i] += 1);
            }
            if (2..=1000).contains(&n) {
                // Expected hits per index: rounds * k / n; none starved, none favoured 3x.
                let expect = f64::from(rounds) * k.min(n - 1) as f64 / (n - 1).max(1) as f64;
                let (lo, hi) =
                    (hits[1..].iter().min().copied().unwrap_or(0), hits[1..].iter().max().copied().unwrap_or(0));
                assert!(
                    f64::from(lo) > expect / 3.0 && f64::from(hi) < expect * 3.0,
                    "n {n} k {k}: hits {lo}..{hi}, expected {expect}"
                );
            }
        }
    }
}
