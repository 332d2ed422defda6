//! The simulated network's shape: which directed links are cut. Latency, loss and duplication
//! are drawn per message by the simulator from its seeded RNG.

use rand::Rng;

/// Directed connectivity between `n` nodes (indices, not ids).
#[derive(Clone, Debug)]
pub struct Links {
    cut: Vec<Vec<bool>>,
}

impl Links {
    /// A fully connected network of `n` nodes.
    pub fn new(n: usize) -> Self {
        Links {
            cut: vec![vec![false; n]; n],
        }
    }

    /// True when a message from `a` to `b` is delivered.
    pub fn connected(&self, a: usize, b: usize) -> bool {
        !self.cut[a][b]
    }

    /// True when no link is cut.
    pub fn is_healed(&self) -> bool {
        self.cut.iter().all(|row| row.iter().all(|c| !c))
    }

    /// Reconnects everything.
    pub fn heal(&mut self) {
        self.cut.iter_mut().for_each(|row| row.fill(false));
    }

    /// Splits the nodes into 2 or 3 random groups that cannot talk to each other.
    pub fn split(&mut self, rng: &mut impl Rng) {
        let n = self.cut.len();
        let groups = rng.gen_range(2..=3);
        let of: Vec<usize> = (0..n).map(|_| rng.gen_range(0..groups)).collect();
        for a in 0..n {
            for b in 0..n {
                self.cut[a][b] = of[a] != of[b];
            }
        }
    }

    /// Cuts `node` off from everyone, both ways.
    pub fn isolate(&mut self, node: usize) {
        for other in 0..self.cut.len() {
            if other != node {
                self.cut[node][other] = true;
                self.cut[other][node] = true;
            }
        }
    }

    /// Cuts one random directed link (an asymmetric partition).
    pub fn cut_one_way(&mut self, rng: &mut impl Rng) {
        let n = self.cut.len();
        let a = rng.gen_range(0..n);
        let b = (a + rng.gen_range(1..n)) % n;
        self.cut[a][b] = true;
    }

    /// A readable picture of the cut links, e.g. `n1-x>n2`.
    pub fn describe(&self) -> String {
        let mut out = Vec::new();
        for (a, row) in self.cut.iter().enumerate() {
            for (b, &c) in row.iter().enumerate() {
                if c {
                    out.push(format!("n{}-x>n{}", a + 1, b + 1));
                }
            }
        }
        if out.is_empty() {
            "healed".to_string()
        } else {
            out.join(" ")
        }
    }
}
