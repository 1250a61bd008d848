"""Multi-LLM systems as DAGs, and the decoding of a continuous adjacency matrix into one.

A decoded system is an in-tree: one end node, every other node with exactly one outgoing edge
to a node placed before it. So it is acyclic by construction, and every node's answer reaches
the end node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Dag:
    n: int
    end: int
    edges: tuple[tuple[int, int], ...]  # (from, to): `from`'s answer is shown to `to`

    def predecessors(self, node: int) -> list[int]:
        return sorted(a for a, b in self.edges if b == node)

    def successor(self, node: int) -> int | None:
        return next((b for a, b in self.edges if a == node), None)

    def order(self) -> list[int]:
        """A topological order: every node after all of its predecessors, the end node last."""
        depth = {self.end: 0}
        todo = [a for a in range(self.n) if a != self.end]
        while todo:
            ready = [a for a in todo if self.successor(a) in depth]
            if not ready:
                raise ValueError(f"not an in-tree towards node {self.end}: nodes {todo} "
                                 "never reach it")
            for a in ready:
                depth[a] = depth[self.successor(a)] + 1  # type: ignore[index]
                todo.remove(a)
        return sorted(range(self.n), key=lambda a: (-depth[a], a))

    def to_json(self) -> dict[str, Any]:
        return {"nodes": self.n, "end": self.end, "edges": [list(e) for e in self.edges]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Dag:
        return cls(int(data["nodes"]), int(data["end"]),
                   tuple((int(a), int(b)) for a, b in data["edges"]))


def _choose(scores: torch.Tensor, mode: str, top_p: float, gen: torch.Generator) -> int:
    """argmax of `scores`, or a draw from the top-p nucleus of softmax(scores)."""
    if mode == "argmax":
        return int(torch.argmax(scores))
    probs = torch.softmax(scores.double(), dim=0)
    order = torch.argsort(probs, descending=True, stable=True)
    mass = torch.cumsum(probs[order], dim=0)
    keep = order[: int((mass < top_p).sum()) + 1]  # the smallest set holding top_p of the mass
    pick = torch.multinomial(probs[keep] / probs[keep].sum(), 1, generator=gen)
    return int(keep[int(pick)])


def decode(adjacency: torch.Tensor, mode: str = "argmax", top_p: float = 0.9,
           gen: torch.Generator | None = None) -> Dag:
    """Heterogeneous Swarms' decoding. Entry (i, j) is the strength of an edge i -> j, read
    clipped to [0, 1] (PSO moves leave that range). The end node is chosen by 1/out-degree (a
    node that sends little is a sink); then, one at a time, the remaining node with the
    largest row sum is placed and linked to the placed node its row favours."""
    a = adjacency.detach().double().cpu().clamp(0.0, 1.0)
    n = a.shape[0]
    if a.shape != (n, n) or n < 1:
        raise ValueError(f"adjacency must be square, got {tuple(adjacency.shape)}")
    a.fill_diagonal_(0.0)
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    end = _choose(1.0 / a.sum(1).clamp(min=1e-6), mode, top_p, gen)
    placed, remaining, edges = [end], [i for i in range(n) if i != end], []
    while remaining:
        node = remaining[_choose(a[remaining].sum(1), mode, top_p, gen)]
        to = placed[_choose(a[node, placed], mode, top_p, gen)]
        edges.append((node, to))
        placed.append(node)
        remaining.remove(node)
    return Dag(n, end, tuple(sorted(edges)))


def chain(n: int) -> Dag:
    """0 -> 1 -> ... -> n-1: each node refines the previous answer."""
    return Dag(n, n - 1, tuple((i, i + 1) for i in range(n - 1)))


def star(n: int, end: int) -> Dag:
    """Every other node answers on its own; `end` reads them all."""
    return Dag(n, end, tuple((i, end) for i in range(n) if i != end))


def random_adjacency(k: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """k random n x n matrices, entries U(0, 1), zero diagonal (no self-loops)."""
    a = torch.rand(k, n, n, generator=gen, dtype=torch.float64)
    a[:, torch.arange(n), torch.arange(n)] = 0.0
    return a


def render(dag: Dag, labels: list[str], path, title: str = "") -> None:
    """A picture of the system: sources on the left, the end node on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depth = {node: 0 for node in range(dag.n)}
    for node in reversed(dag.order()):
        s = dag.successor(node)
        if s is not None:
            depth[node] = depth[s] + 1
    top = max(depth.values())
    columns: dict[int, list[int]] = {}
    for node in dag.order():
        columns.setdefault(depth[node], []).append(node)
    pos = {node: (top - d, i - (len(col) - 1) / 2)
           for d, col in columns.items() for i, node in enumerate(col)}
    fig, ax = plt.subplots(figsize=(2.2 * (top + 1) + 1.5, 1.2 * max(map(len, columns.values()))
                                    + 1.2))
    for a, b in dag.edges:
        ax.annotate("", xy=pos[b], xytext=pos[a],
                    arrowprops={"arrowstyle": "-|>", "shrinkA": 22, "shrinkB": 22, "lw": 1.2})
    for node, (x, y) in pos.items():
        face = "#f6c85f" if node == dag.end else "#9dd9d2"
        ax.text(x, y, f"{node}: {labels[node]}", ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round", "fc": face, "ec": "#333333"})
    ax.set_xlim(-0.8, top + 0.8)
    ys = [y for _, y in pos.values()]
    ax.set_ylim(min(ys) - 0.8, max(ys) + 0.8)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
