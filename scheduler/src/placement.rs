//! Placement: a pure function from a snapshot of the nodes and one request to a
//! decision with the reason every rejected node was turned away.
//!
//! No I/O, no clock, no randomness but the seed it is given. Filters run cheapest
//! first; scores are normalised to 0..=1 and weighted. At scale only a sample of the
//! feasible nodes is scored, starting at a seeded offset (kube-scheduler's
//! `percentageOfNodesToScore`, Nomad's limit of candidates), so one placement costs
//! O(nodes examined), never O(replicas).

use skiff_api::quantity::{format_cpu, format_memory};
use skiff_api::{HostPort, Node, NodeState, Resources, Runtime};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// How to score the resource fit of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scoring {
    /// Prefer the fullest node that fits (fewer nodes in use; Nomad's default).
    #[default]
    BinPack,
    /// Prefer the emptiest node (load spread over every node).
    Spread,
}

impl std::str::FromStr for Scoring {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "binpack" | "bin-pack" => Ok(Scoring::BinPack),
            "spread" => Ok(Scoring::Spread),
            other => Err(format!("unknown scoring {other:?}; use binpack or spread")),
        }
    }
}

/// The nodes as they are at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    /// Every known node, in a stable order.
    pub nodes: &'a [Node],
    /// Each node's runtimes as bits ([`runtime_bits`]), in the same order.
    /// Kept beside the nodes so that placement does not follow each node's
    /// list of runtimes: that pointer was a cache miss per node examined, two
    /// thirds of `place` in a profile of scenario B (#7).
    pub runtimes: &'a [u8],
}

/// The bit of runtime `r` in [`Snapshot::runtimes`].
fn runtime_bit(r: Runtime) -> u8 {
    match r {
        Runtime::Wasm => 1,
        Runtime::Container => 2,
    }
}

/// [`Snapshot::runtimes`] for `nodes`.
pub fn runtime_bits(nodes: &[Node]) -> Vec<u8> {
    nodes.iter().map(|n| n.runtimes.iter().fold(0, |bits, r| bits | runtime_bit(*r))).collect()
}

/// Replicas of one deployment per node, by the node's index in the snapshot.
/// Keyed by index, not name: placement looks it up for every node it scores,
/// and a name key cost a pointer chase and a string compare each time (14% of
/// the scheduler in a profile of scenario B, #7).
pub type Spread = rustc_hash::FxHashMap<usize, u32>;

/// One replica to place.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// What it requests.
    pub resources: Resources,
    /// The runtime it needs.
    pub runtime: Runtime,
    /// Labels a node must carry.
    pub constraints: &'a BTreeMap<String, String>,
    /// How many replicas of the same deployment each node already holds.
    pub spread: &'a Spread,
    /// Resource scoring.
    pub scoring: Scoring,
    /// The only node it may go to (the one holding its volume), if any.
    pub pinned: Option<&'a str>,
    /// Node ports it holds (published container ports).
    pub host_ports: &'a [HostPort],
    /// The node ports held on each node, with how many replicas hold each (more
    /// than one only for replicas placed before the port was in their spec).
    pub ports_in_use: &'a HashMap<String, BTreeMap<HostPort, u32>>,
}

/// Why a node was turned away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The node is down or draining.
    NotReady(NodeState),
    /// The node is cordoned (`skiff node cordon`, or draining).
    Cordoned,
    /// The node cannot run this kind of workload.
    Runtime(Runtime),
    /// A constraint label is missing or different.
    Constraint { key: String, want: String },
    /// Not enough free CPU.
    Cpu { free: u64, need: u64 },
    /// Not enough free memory.
    Memory { free: u64, need: u64 },
    /// The replica's volume lives on another node.
    Pinned { node: String },
    /// Another replica on the node holds a port it needs.
    HostPort(HostPort),
}

impl Rejection {
    /// A short key that groups rejections for the summary.
    fn group(&self) -> String {
        match self {
            Rejection::NotReady(s) => format!("node {s}"),
            Rejection::Cordoned => "node cordoned".into(),
            Rejection::Runtime(Runtime::Container) => "no container runtime".into(),
            Rejection::Runtime(r) => format!("no {r} runtime"),
            Rejection::Constraint { key, want } => format!("label {key}={want} missing"),
            Rejection::Cpu { .. } => "insufficient cpu".into(),
            Rejection::Memory { .. } => "insufficient memory".into(),
            Rejection::Pinned { node } => format!("volume held by node {node}"),
            Rejection::HostPort(p) => format!("host port {p} in use"),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Cpu { free, need } => {
                write!(f, "insufficient cpu: needs {}, {} free", format_cpu(*need), format_cpu(*free))
            }
            Rejection::Memory { free, need } => {
                write!(f, "insufficient memory: needs {}, {} free", format_memory(*need), format_memory(*free))
            }
            other => f.write_str(&other.group()),
        }
    }
}

/// The outcome of one placement.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The chosen node's index in the snapshot, and its score.
    pub chosen: Option<(usize, f64)>,
    /// Every node examined and turned away, by index, with the reason.
    pub rejected: Vec<(usize, Rejection)>,
    /// Nodes examined.
    pub examined: usize,
    /// Feasible nodes scored.
    pub feasible: usize,
}

impl Decision {
    /// One line for a replica that could not be placed:
    /// `0/3 nodes fit: 2 insufficient memory, 1 label zone=a missing`.
    pub fn summary(&self, total_nodes: usize) -> String {
        if total_nodes == 0 {
            return "no nodes registered; start one with `skiff node`".into();
        }
        let mut groups: BTreeMap<String, usize> = BTreeMap::new();
        for (_, r) in &self.rejected {
            *groups.entry(r.group()).or_default() += 1;
        }
        let mut parts: Vec<(usize, String)> = groups.into_iter().map(|(g, n)| (n, g)).collect();
        parts.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let detail: Vec<String> = parts.into_iter().map(|(n, g)| format!("{n} {g}")).collect();
        format!("0/{total_nodes} nodes fit: {}", detail.join(", "))
    }
}

/// How many feasible nodes to score before choosing: every node in a small cluster,
/// a twentieth (at least 50) in a large one.
pub fn candidates_to_score(nodes: usize) -> usize {
    if nodes <= 100 { nodes } else { (nodes / 20).max(50) }
}

fn filter(node: &Node, runtimes: u8, req: &Request) -> Result<(), Rejection> {
    if let Some(pinned) = req.pinned
        && node.name != pinned
    {
        return Err(Rejection::Pinned { node: pinned.to_string() });
    }
    if node.state != NodeState::Ready {
        return Err(Rejection::NotReady(node.state));
    }
    if node.unschedulable {
        return Err(Rejection::Cordoned);
    }
    if runtimes & runtime_bit(req.runtime) == 0 {
        return Err(Rejection::Runtime(req.runtime));
    }
    for (key, want) in req.constraints {
        if node.labels.get(key) != Some(want) {
            return Err(Rejection::Constraint { key: key.clone(), want: want.clone() });
        }
    }
    if !req.host_ports.is_empty()
        && let Some(used) = req.ports_in_use.get(&node.name)
        && let Some(p) = req.host_ports.iter().find(|p| used.contains_key(p))
    {
        return Err(Rejection::HostPort(*p));
    }
    let free = node.capacity.saturating_sub(node.allocated);
    if free.cpu < req.resources.cpu {
        return Err(Rejection::Cpu { free: free.cpu.0, need: req.resources.cpu.0 });
    }
    if free.memory < req.resources.memory {
        return Err(Rejection::Memory { free: free.memory.0, need: req.resources.memory.0 });
    }
    Ok(())
}

/// Whether `node` could run `req` as it is: up, not cordoned, with the runtime
/// and the labels. Room and ports are left out: they come and go with other
/// replicas, so a replica short of them waits, while one that fails this check
/// never fits the node (a drain reports it as unable to move).
pub fn could_take(node: &Node, req: &Request) -> Result<(), Rejection> {
    let bits = node.runtimes.iter().fold(0, |bits, r| bits | runtime_bit(*r));
    match filter(node, bits, &Request { resources: Resources::default(), host_ports: &[], pinned: None, ..*req }) {
        Err(Rejection::Cpu { .. } | Rejection::Memory { .. } | Rejection::HostPort(_)) => Ok(()),
        other => other,
    }
}

/// Resource fit in 0..=1, Nomad's formula: bin-pack scores `20 − (10^freeCpu +
/// 10^freeMem)` over free fractions after placement, clamped to 0..=18 and
/// divided by 18; spread is its mirror.
fn resource_score(node: &Node, req: &Request) -> f64 {
    let after = node.allocated.saturating_add(req.resources);
    let frac = |used: u64, cap: u64| if cap == 0 { 0.0 } else { 1.0 - (used as f64 / cap as f64).min(1.0) };
    let free_cpu = frac(after.cpu.0, node.capacity.cpu.0);
    let free_mem = frac(after.memory.0, node.capacity.memory.0);
    // 10^x as e^(x·ln 10): the same value, at a fraction of `powf`'s cost (this
    // runs for every node scored).
    let ten_to = |x: f64| (x * std::f64::consts::LN_10).exp();
    let binpack = ((20.0 - (ten_to(free_cpu) + ten_to(free_mem))).clamp(0.0, 18.0)) / 18.0;
    match req.scoring {
        Scoring::BinPack => binpack,
        Scoring::Spread => 1.0 - binpack,
    }
}

/// Spreading replicas of one deployment: 1 on a node without any, falling as the
/// node holds more.
fn deployment_spread_score(idx: usize, req: &Request) -> f64 {
    let n = req.spread.get(&idx).copied().unwrap_or(0);
    1.0 / (1.0 + n as f64)
}

/// Weights: spreading one deployment's replicas outweighs resource fit, so a
/// deployment never piles onto one node while others have room; resource scoring
/// then decides between equally spread nodes.
const WEIGHT_DEPLOYMENT_SPREAD: f64 = 2.0;
const WEIGHT_RESOURCES: f64 = 1.0;

/// Chooses a node for `req`, or says why none fits.
pub fn place(snapshot: Snapshot<'_>, req: &Request<'_>, seed: u64) -> Decision {
    let nodes = snapshot.nodes;
    let n = nodes.len();
    let mut decision = Decision { chosen: None, rejected: Vec::new(), examined: 0, feasible: 0 };
    if n == 0 {
        return decision;
    }
    let want = candidates_to_score(n);
    let start = (seed % n as u64) as usize;
    for i in 0..n {
        let idx = (start + i) % n;
        let node = &nodes[idx];
        decision.examined += 1;
        if let Err(r) = filter(node, snapshot.runtimes.get(idx).copied().unwrap_or(0), req) {
            decision.rejected.push((idx, r));
            continue;
        }
        let score =
            WEIGHT_DEPLOYMENT_SPREAD * deployment_spread_score(idx, req) + WEIGHT_RESOURCES * resource_score(node, req);
        decision.feasible += 1;
        // Ties keep the first seen: the seeded start decides, not the node order.
        if decision.chosen.is_none_or(|(_, best)| score > best) {
            decision.chosen = Some((idx, score));
        }
        if decision.feasible >= want {
            break;
        }
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    fn node(name: &str, cpu: u64, mem_mi: u64, alloc_cpu: u64, alloc_mi: u64) -> Node {
        Node {
            name: name.into(),
            address: String::new(),
            labels: BTreeMap::new(),
            capacity: Resources::new(cpu, mem_mi << 20),
            allocated: Resources::new(alloc_cpu, alloc_mi << 20),
            runtimes: vec![Runtime::Wasm],
            state: NodeState::Ready,
            replicas: 0,
            registered_ms: 0,
            last_heartbeat_ms: 0,
            ingress: None,
            unschedulable: false,
            drain: None,
        }
    }

    fn show(nodes: &[Node], d: &Decision) -> String {
        let mut out = match d.chosen {
            Some((i, s)) => format!("chose {} (score {s:.3})", nodes[i].name),
            None => format!("unschedulable: {}", d.summary(nodes.len())),
        };
        out.push_str(&format!(", examined {}, feasible {}\n", d.examined, d.feasible));
        for (i, r) in &d.rejected {
            out.push_str(&format!("  {}: {r}\n", nodes[*i].name));
        }
        out
    }

    fn check(nodes: &[Node], req: Request, seed: u64, expected: Expect) {
        let d = place(Snapshot { nodes, runtimes: &runtime_bits(nodes) }, &req, seed);
        expected.assert_eq(&show(nodes, &d));
    }

    fn req<'a>(cpu: u64, mem_mi: u64, c: &'a BTreeMap<String, String>, s: &'a Spread, scoring: Scoring) -> Request<'a> {
        static NO_PORTS: std::sync::LazyLock<HashMap<String, BTreeMap<HostPort, u32>>> =
            std::sync::LazyLock::new(HashMap::new);
        Request {
            resources: Resources::new(cpu, mem_mi << 20),
            runtime: Runtime::Wasm,
            constraints: c,
            spread: s,
            scoring,
            pinned: None,
            host_ports: &[],
            ports_in_use: &NO_PORTS,
        }
    }

    #[test]
    fn a_node_where_a_host_port_is_held_is_turned_away() {
        use skiff_api::Protocol;
        let nodes = [node("a", 4000, 4096, 0, 0), node("b", 4000, 4096, 0, 0)];
        let (c, s) = (BTreeMap::new(), Spread::default());
        let http = HostPort { port: 8081, protocol: Protocol::Tcp };
        let dns = HostPort { port: 53, protocol: Protocol::Udp };
        let in_use = HashMap::from([
            ("a".to_string(), BTreeMap::from([(http, 1)])),
            ("b".to_string(), BTreeMap::from([(HostPort { port: 8081, protocol: Protocol::Udp }, 1), (dns, 1)])),
        ]);
        let wants_http = [http];
        let r = Request { host_ports: &wants_http, ports_in_use: &in_use, ..req(100, 64, &c, &s, Scoring::BinPack) };
        check(
            &nodes,
            r,
            0,
            expect![[r#"
                chose b (score 2.051), examined 2, feasible 1
                  a: host port 8081 in use
            "#]],
        );
        let wants_both = [http, dns];
        let r = Request { host_ports: &wants_both, ports_in_use: &in_use, ..req(100, 64, &c, &s, Scoring::BinPack) };
        check(
            &nodes,
            r,
            0,
            expect![[r#"
                unschedulable: 0/2 nodes fit: 1 host port 53/udp in use, 1 host port 8081 in use, examined 2, feasible 0
                  a: host port 8081 in use
                  b: host port 53/udp in use
            "#]],
        );
    }

    #[test]
    fn binpack_prefers_the_fuller_node_and_spread_the_emptier() {
        let nodes = [node("a", 4000, 4096, 3000, 3072), node("b", 4000, 4096, 0, 0)];
        let (c, s) = (BTreeMap::new(), Spread::default());
        check(
            &nodes,
            req(500, 512, &c, &s, Scoring::BinPack),
            0,
            expect![[r#"
            chose a (score 2.963), examined 2, feasible 2
        "#]],
        );
        check(
            &nodes,
            req(500, 512, &c, &s, Scoring::Spread),
            0,
            expect![[r#"
            chose b (score 2.722), examined 2, feasible 2
        "#]],
        );
    }

    #[test]
    fn replicas_of_one_deployment_spread_before_packing() {
        let nodes = [node("a", 4000, 4096, 1000, 1024), node("b", 4000, 4096, 0, 0)];
        let c = BTreeMap::new();
        let s = Spread::from_iter([(0, 1)]);
        check(
            &nodes,
            req(500, 512, &c, &s, Scoring::BinPack),
            0,
            expect![[r#"
            chose b (score 2.278), examined 2, feasible 2
        "#]],
        );
    }

    #[test]
    fn every_rejected_node_keeps_its_reason() {
        let mut down = node("down", 4000, 4096, 0, 0);
        down.state = NodeState::Down;
        let mut labelled = node("zoned", 4000, 4096, 0, 0);
        labelled.labels.insert("zone".into(), "b".into());
        let mut containers = node("ctr", 4000, 4096, 0, 0);
        containers.runtimes = vec![Runtime::Container];
        let nodes = [node("small", 4000, 128, 0, 0), node("busy", 1000, 4096, 900, 0), down, labelled, containers];
        let c = BTreeMap::from([("zone".to_string(), "b".to_string())]);
        let s = Spread::default();
        check(
            &nodes,
            req(200, 256, &c, &s, Scoring::BinPack),
            0,
            expect![[r#"
            chose zoned (score 2.135), examined 5, feasible 1
              small: label zone=b missing
              busy: label zone=b missing
              down: node down
              ctr: no wasm runtime
        "#]],
        );
        let none = BTreeMap::new();
        check(
            &nodes[..2],
            req(200, 256, &none, &s, Scoring::BinPack),
            0,
            expect![[r#"
            unschedulable: 0/2 nodes fit: 1 insufficient cpu, 1 insufficient memory, examined 2, feasible 0
              small: insufficient memory: needs 256Mi, 128Mi free
              busy: insufficient cpu: needs 200m, 100m free
        "#]],
        );
    }

    #[test]
    fn a_cordoned_node_takes_nothing_new_and_says_so() {
        let mut cordoned = node("cordoned", 4000, 4096, 0, 0);
        cordoned.unschedulable = true;
        let nodes = [cordoned, node("small", 4000, 128, 0, 0)];
        let (c, s) = (BTreeMap::new(), Spread::default());
        check(
            &nodes,
            req(200, 256, &c, &s, Scoring::BinPack),
            0,
            expect![[r#"
            unschedulable: 0/2 nodes fit: 1 insufficient memory, 1 node cordoned, examined 2, feasible 0
              cordoned: node cordoned
              small: insufficient memory: needs 256Mi, 128Mi free
        "#]],
        );
        // Pinned to a volume on the cordoned node: it waits, saying both.
        let r = Request { pinned: Some("cordoned"), ..req(200, 64, &c, &s, Scoring::BinPack) };
        check(
            &nodes,
            r,
            0,
            expect![[r#"
            unschedulable: 0/2 nodes fit: 1 node cordoned, 1 volume held by node cordoned, examined 2, feasible 0
              cordoned: node cordoned
              small: volume held by node cordoned
        "#]],
        );
    }

    #[test]
    fn empty_cluster() {
        let (c, s) = (BTreeMap::new(), Spread::default());
        check(
            &[],
            req(1, 1, &c, &s, Scoring::BinPack),
            7,
            expect![[r#"
            unschedulable: no nodes registered; start one with `skiff node`, examined 0, feasible 0
        "#]],
        );
    }

    #[test]
    fn the_seed_decides_ties_and_large_clusters_are_sampled() {
        let nodes: Vec<Node> = (0..1000).map(|i| node(&format!("n{i}"), 4000, 4096, 0, 0)).collect();
        let (c, s) = (BTreeMap::new(), Spread::default());
        let bits = runtime_bits(&nodes);
        let snapshot = Snapshot { nodes: &nodes, runtimes: &bits };
        let d1 = place(snapshot, &req(100, 64, &c, &s, Scoring::BinPack), 42);
        let d2 = place(snapshot, &req(100, 64, &c, &s, Scoring::BinPack), 42);
        let d3 = place(snapshot, &req(100, 64, &c, &s, Scoring::BinPack), 43);
        assert_eq!(d1, d2, "same seed, same decision");
        assert_ne!(d1.chosen.map(|c| c.0), d3.chosen.map(|c| c.0), "another seed starts elsewhere");
        assert_eq!(d1.examined, 50, "only a sample of a large cluster is scored");
    }
}
