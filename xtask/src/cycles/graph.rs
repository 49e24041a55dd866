//! The references lifted to siblings, and the cycles among them. A reference from `a::x` to
//! `b::y` is `a -> b` among the crate root's children; one from `a::x` to `a::z::w` is `x -> z`
//! among `a`'s. Each reference counts at that one level: the deepest module holding both ends.
//! Cycles are found with Tarjan's strongly connected components (written here: the graphs are a
//! few dozen nodes, not worth a dependency), then shown as shortest cycles through the members.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::modules::{Edge, ModPath};

/// For each module with children that refer to each other: which child refers to which
/// sibling, and the references that make it so.
pub(super) struct Siblings<'a> {
    levels: BTreeMap<ModPath, BTreeMap<(String, String), Vec<&'a Edge>>>,
}

/// A cycle among the children of `parent`, one step per edge, in order.
pub(super) struct Cycle<'a> {
    pub parent: ModPath,
    pub steps: Vec<Step<'a>>,
}

pub(super) struct Step<'a> {
    pub from: ModPath,
    pub to: ModPath,
    /// The references that make this step, in file and line order.
    pub edges: Vec<&'a Edge>,
}

impl<'a> Siblings<'a> {
    pub fn lift(edges: &'a [Edge]) -> Self {
        let mut levels: BTreeMap<ModPath, BTreeMap<(String, String), Vec<&'a Edge>>> =
            BTreeMap::new();
        for edge in edges {
            let common = edge
                .from
                .iter()
                .zip(&edge.to)
                .take_while(|(a, b)| a == b)
                .count();
            // Neither end is the other's ancestor: both have a child of the common module.
            let (Some(from), Some(to), Some(parent)) = (
                edge.from.get(common),
                edge.to.get(common),
                edge.from.get(..common),
            ) else {
                continue;
            };
            levels
                .entry(parent.to_vec())
                .or_default()
                .entry((from.clone(), to.clone()))
                .or_default()
                .push(edge);
        }
        for pairs in levels.values_mut() {
            for edges in pairs.values_mut() {
                edges.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            }
        }
        Siblings { levels }
    }

    /// How many (module, sibling) pairs refer one to the other.
    pub fn count(&self) -> usize {
        self.levels.values().map(BTreeMap::len).sum()
    }

    /// Every module of each strongly connected component of siblings is on one of the cycles
    /// returned: enough to see every module to untangle, without listing every cycle.
    pub fn cycles(&self) -> Vec<Cycle<'a>> {
        let mut out = Vec::new();
        for (parent, pairs) in &self.levels {
            let nodes: Vec<&str> = pairs
                .keys()
                .flat_map(|(a, b)| [a.as_str(), b.as_str()])
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let adjacency: Vec<Vec<usize>> = nodes
                .iter()
                .map(|n| {
                    pairs
                        .keys()
                        .filter(|(a, _)| a == n)
                        .filter_map(|(_, b)| nodes.iter().position(|m| m == b))
                        .collect()
                })
                .collect();
            for component in components(&adjacency) {
                if component.len() < 2 {
                    continue;
                }
                let mut covered = BTreeSet::new();
                for &start in &component {
                    if covered.contains(&start) {
                        continue;
                    }
                    let Some(cycle) = shortest_cycle(start, &adjacency, &component) else {
                        continue;
                    };
                    covered.extend(cycle.iter().copied());
                    let child = |i: usize| {
                        let mut path = parent.clone();
                        path.extend(nodes.get(i).map(|s| s.to_string()));
                        path
                    };
                    let steps = cycle
                        .iter()
                        .zip(cycle.iter().cycle().skip(1))
                        .map(|(&a, &b)| {
                            let key = (
                                nodes.get(a).map_or(String::new(), |s| s.to_string()),
                                nodes.get(b).map_or(String::new(), |s| s.to_string()),
                            );
                            Step {
                                from: child(a),
                                to: child(b),
                                edges: pairs.get(&key).cloned().unwrap_or_default(),
                            }
                        })
                        .collect();
                    out.push(Cycle {
                        parent: parent.clone(),
                        steps,
                    });
                }
            }
        }
        out
    }
}

/// Tarjan's strongly connected components of the graph `adjacency` (node `i`'s successors at
/// `adjacency[i]`), each sorted.
fn components(adjacency: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct Tarjan<'g> {
        adjacency: &'g [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        stack: Vec<usize>,
        on_stack: Vec<bool>,
        next: usize,
        out: Vec<Vec<usize>>,
    }

    impl Tarjan<'_> {
        fn visit(&mut self, v: usize) {
            self.index[v] = Some(self.next);
            self.low[v] = self.next;
            self.next += 1;
            self.stack.push(v);
            self.on_stack[v] = true;
            for &w in &self.adjacency[v] {
                match self.index[w] {
                    None => {
                        self.visit(w);
                        self.low[v] = self.low[v].min(self.low[w]);
                    }
                    Some(index) if self.on_stack[w] => self.low[v] = self.low[v].min(index),
                    Some(_) => {}
                }
            }
            if Some(self.low[v]) == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                component.sort_unstable();
                self.out.push(component);
            }
        }
    }

    let n = adjacency.len();
    let mut t = Tarjan {
        adjacency,
        index: vec![None; n],
        low: vec![0; n],
        stack: Vec::new(),
        on_stack: vec![false; n],
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if t.index[v].is_none() {
            t.visit(v);
        }
    }
    t.out.sort();
    t.out
}

/// The shortest cycle from `start` back to it through nodes of `within`, `start` first.
fn shortest_cycle(start: usize, adjacency: &[Vec<usize>], within: &[usize]) -> Option<Vec<usize>> {
    let mut previous = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for &next in adjacency.get(node)? {
            if next == start {
                let mut path = vec![node];
                let mut at = node;
                while at != start {
                    at = *previous.get(&at)?;
                    path.push(at);
                }
                path.reverse();
                return Some(path);
            }
            if within.contains(&next) && !previous.contains_key(&next) {
                previous.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_and_shortest_cycles() {
        // 0 -> 1 -> 2 -> 0 with a chord 0 -> 2, a separate 3 <-> 4, and 5 alone after 4.
        let adjacency = vec![vec![1, 2], vec![2], vec![0], vec![4], vec![3, 5], vec![]];
        assert_eq!(
            components(&adjacency),
            vec![vec![0, 1, 2], vec![3, 4], vec![5]]
        );
        assert_eq!(shortest_cycle(0, &adjacency, &[0, 1, 2]), Some(vec![0, 2]));
        assert_eq!(
            shortest_cycle(1, &adjacency, &[0, 1, 2]),
            Some(vec![1, 2, 0])
        );
        assert_eq!(shortest_cycle(5, &adjacency, &[5]), None);
    }
}
