//! Per-connection accounting: which seqs arrived, how often, in what order.

/// What one connection received of its org channel.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    /// The channel's seq when the connection started; later seqs count.
    start: u64,
    /// Bit `i` set: seq `start + 1 + i` arrived.
    seen: Vec<u64>,
    max_seen: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
}

impl Tally {
    pub fn new(start: u64) -> Self {
        Self {
            start,
            max_seen: start,
            ..Self::default()
        }
    }

    /// Records one arrival of `seq`.
    pub fn observe(&mut self, seq: u64) {
        if seq <= self.start {
            return;
        }
        let index = usize::try_from(seq - self.start - 1).unwrap_or(usize::MAX);
        let (word, bit) = (index / 64, index % 64);
        // Seqs grow by one per event, so the bitset grows with the run,
        // not with a hostile value (capped at 2^26 events, 8 MiB).
        if word >= 1 << 20 {
            self.out_of_order += 1;
            return;
        }
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= 1 << bit;
        self.unique += 1;
        if seq < self.max_seen {
            self.out_of_order += 1;
        }
        self.max_seen = self.max_seen.max(seq);
    }

    /// The highest seq that arrived (where a resume starts from).
    pub fn last(&self) -> u64 {
        self.max_seen
    }

    /// Seqs `from ..= to` the server said it could not replay
    /// (`resync.required`): not lost by the SPEC's definition, not
    /// delivered either.
    pub fn cover(&mut self, from: u64, to: u64) {
        for seq in from.max(self.start + 1)..=to {
            let index = usize::try_from(seq - self.start - 1).unwrap_or(usize::MAX);
            let word = index / 64;
            if word >= 1 << 20 {
                return;
            }
            if word >= self.seen.len() {
                self.seen.resize(word + 1, 0);
            }
            self.seen[word] |= 1 << (index % 64);
        }
    }

    /// How many of the seqs `start+1 ..= start+published` never arrived.
    pub fn lost(&self, published: u64) -> u64 {
        let arrived_in_range = (0..published)
            .filter(|i| {
                let i = usize::try_from(*i).unwrap_or(usize::MAX);
                self.seen
                    .get(i / 64)
                    .is_some_and(|word| word & (1 << (i % 64)) != 0)
            })
            .count() as u64;
        published - arrived_in_range
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resync_covers_its_gap() {
        let mut t = Tally::new(0);
        for seq in [1, 2, 6] {
            t.observe(seq);
        }
        assert_eq!(t.lost(6), 3);
        t.cover(3, 5);
        assert_eq!((t.lost(6), t.unique, t.last()), (0, 3, 6));
    }

    #[test]
    fn in_order_stream_is_clean() {
        let mut t = Tally::new(10);
        for seq in 9..=15 {
            t.observe(seq);
        }
        assert_eq!(
            (t.unique, t.duplicates, t.out_of_order, t.lost(5)),
            (5, 0, 0, 0)
        );
    }

    #[test]
    fn duplicates_gaps_and_reordering_are_counted() {
        let mut t = Tally::new(0);
        for seq in [1, 2, 2, 4, 3, 6, 6, 6] {
            t.observe(seq);
        }
        assert_eq!(t.unique, 5);
        assert_eq!(t.duplicates, 3);
        assert_eq!(t.out_of_order, 1, "3 after 4");
        assert_eq!(t.lost(7), 2, "5 and 7 never came");
    }
}
