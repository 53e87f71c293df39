"""Optional GPU neighbour search for non-periodic systems with torch-cluster.

torch-cluster compiles from source, so it is an optional extra (``pip install
ase-nemp[cluster]``); without it everything falls back to matscipy on the CPU.
"""

from __future__ import annotations

import torch

try:  # pragma: no cover - depends on the optional extra
    from torch_cluster import radius_graph as _radius_graph

    HAS_TORCH_CLUSTER = True
except Exception:  # ImportError, or a build that does not match this torch
    _radius_graph = None
    HAS_TORCH_CLUSTER = False

__all__ = ["HAS_TORCH_CLUSTER", "torch_cluster_neighbour_list"]


def torch_cluster_neighbour_list(positions: torch.Tensor, cutoff: float, max_num_neighbors: int = 4096) -> torch.Tensor:
    """Directed edges (2, E) ``[centre i, neighbour j]`` with ``|x_j - x_i| < cutoff`` (no pbc).

    Sorted by centre like the matscipy list. Raises ``RuntimeError`` when torch-cluster is
    not installed.
    """
    if not HAS_TORCH_CLUSTER:
        raise RuntimeError("torch-cluster is not installed; install ase-nemp[cluster] or use matscipy")
    # radius_graph(flow="target_to_source") returns row 0 = centre, row 1 = neighbour
    edge_index = _radius_graph(positions, r=float(cutoff), loop=False, max_num_neighbors=max_num_neighbors,
                               flow="target_to_source")
    dist = (positions[edge_index[1]] - positions[edge_index[0]]).norm(dim=1)
    edge_index = edge_index[:, dist < cutoff]
    order = torch.argsort(edge_index[0] * positions.shape[0] + edge_index[1])
    return edge_index[:, order]
