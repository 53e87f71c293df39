"""The package's models in LAMMPS, through ML-IAP's unified Python interface.

LAMMPS (built with ML-IAP, PYTHON and MPI: ``scripts/build-lammps.sh``) runs the molecular
dynamics and its domain decomposition; each rank hands this module its atoms' pairs
within the cutoff, and gets back its local atoms' energies and the forces on every pair.
Any conservative architecture (NEMP, EquiREANN, conservative LEIGNN) and committees
(their mean) work, in float64 or float32.

An atom's energy depends on atoms up to ``receptive_hops`` cutoffs away (T + 1 for NEMP
with T layers and for EquiREANN with T iterations, T for a local LEIGNN). The potential
reads the atoms' ids and folds the periodic images of every atom onto one
(:func:`fold_images`), so on one rank the model does the ASE calculator's work. On several
ranks:

* NEMP and its committees (the default, ``exchange=True``): each rank computes its own
  atoms only, from the ghost atoms within one cutoff (LAMMPS's own ghost cutoff,
  ``pair_style mliap unified FILE 0``). Before every layer the ghosts' node features come
  from the ranks that own them, and their gradients go back in the backward pass
  (:class:`FeatureExchange`, ``mpi4py``): no rank recomputes another's atoms.
* EquiREANN, LEIGNN (or ``exchange=False``): each rank needs its ghosts as deep as the
  receptive field with their own neighbour lists (``pair_style mliap unified FILE 1`` and
  ``comm_modify cutoff`` of at least receptive hops x cutoff plus the skin) and recomputes
  that halo; NEMP's layer t then runs only over the pairs within T - 1 - t pairs of the
  rank's own atoms (``edges_within``).

:func:`lammps_input` writes the lines for a model. LAMMPS sums the ghosts' pair forces
onto their owners and tallies the virial from the pair forces. In library mode
:meth:`LammpsPotential.attach` gives the potential the LAMMPS instance; the plain ``lmp``
executable gives a pair style none, so the input hands it over with two ``python``
commands (:func:`bind`, written by :func:`lammps_input`).

From a Python driver (library mode; ``mpi4py`` for several ranks)::

    from lammps import lammps
    from ase_nemp.lammps import LammpsPotential
    lmp = lammps()
    ...                                          # units metal, atoms, box
    LammpsPotential("model.pt").attach(lmp)      # pair_style and pair_coeff for its species

From the plain ``lmp`` executable (``mpirun -np 4 lmp -in in.md``), write a small pointer
file once with ``nemp lammps model.pt --output model.mliap`` and use the lines it prints
(``pair_style mliap unified model.mliap 0`` and the rest). That file names the model file, its dtype and the class to load
it with; the weights stay in the package's weights-only format and are checked when
loaded (:func:`ase_nemp.io.load`).
"""

from __future__ import annotations

import ctypes
import math
import os
import pickle
import time
from pathlib import Path

import numpy as np
import torch

from .graph import AtomicGraph
from .io import load, resolve_dtype
from .model import AtomisticModel, Committee

__all__ = ["LammpsPotential", "bind", "fold_images", "lammps_input", "write_pointer"]


_BOUND = None  # the LAMMPS instance of this process, handed over by the input script (bind)


def bind(handle) -> None:
    """Keep the LAMMPS instance that runs this process's pair style (the plain ``lmp``
    executable): the input's ``python nemp_bind input 1 SELF format p here "from
    ase_nemp.lammps import bind as nemp_bind"`` and ``python nemp_bind invoke`` call this
    with LAMMPS's handle, so that the potential can read the atoms' ids."""
    global _BOUND
    from lammps import lammps

    _BOUND = lammps(ptr=handle)


_SYS_STATE = ("argv", "orig_argv", "path", "executable", "prefix", "exec_prefix", "base_prefix", "base_exec_prefix",
              "warnoptions", "_xoptions", "flags", "dont_write_bytecode", "pycache_prefix")


def _command_holding_the_gil(lmp, command: str) -> None:
    """Run one LAMMPS command without letting go of Python's GIL.

    The ``lammps`` module calls the library through ``ctypes.CDLL``, which releases the GIL
    for the call. The first ``pair_style mliap unified`` of a LAMMPS instance starts its
    embedded Python (``Py_InitializeFromConfig``) before taking the GIL back, which
    corrupts the interpreter when another Python thread runs meanwhile (a Dask client's
    event loop, a progress bar's monitor): a segmentation fault at the second instance of
    a process. Through ``ctypes.PyDLL`` the GIL stays held, and LAMMPS's own
    ``PyGILState_Ensure`` calls find it held by their thread. Holding it, that start
    does reconfigure the running interpreter with an empty configuration (``sys.argv``
    becomes ``['']``, ``sys.prefix`` leaves the virtual environment); the attributes of
    ``sys`` it touches are put back afterwards."""
    import sys

    from lammps.core import ExceptionCheck

    kept = {name: getattr(sys, name) for name in _SYS_STATE if hasattr(sys, name)}
    function = ctypes.PyDLL(lmp.lib._name).lammps_command
    function.argtypes, function.restype = [ctypes.c_void_p, ctypes.c_char_p], ctypes.c_char_p
    try:
        with ExceptionCheck(lmp):  # a LAMMPS error becomes the module's Python exception, as for lmp.command
            function(lmp.lmp, command.encode())
    finally:
        for name, value in kept.items():
            setattr(sys, name, value)


def _rebuild(path: str, dtype: str, exchange: bool | None = None) -> "LammpsPotential":
    """What a pointer file unpickles to: the potential loaded from its model file."""
    return LammpsPotential(path, dtype=dtype, exchange=exchange)


class LammpsPotential:
    """An ML-IAP unified model (``lammps.mliap``'s ``MLIAPUnified`` interface) for a model
    or committee file of this package, or a model object.

    Parameters
    ----------
    model : path or model
        A model file (any conservative architecture, or a committee: its mean) or a
        model / :class:`~ase_nemp.model.Committee` object.
    dtype : "float64" or "float32"
        Of the model's arithmetic; LAMMPS receives float64 either way.
    exchange : bool, optional
        Each rank computes its own atoms only and receives its ghost atoms' features from
        the ranks that own them before every layer (:class:`FeatureExchange`, through
        ``mpi4py``): the default where the model can (NEMP and its committees). False
        recomputes a halo of ghosts as deep as the receptive field on every rank.
    """

    def __init__(self, model: str | os.PathLike | AtomisticModel | Committee, dtype: str = "float64",
                 exchange: bool | None = None) -> None:
        from .perf import tune_cpu_allocator

        tune_cpu_allocator()
        self.dtype = resolve_dtype(dtype)
        self.model_file = None
        if isinstance(model, (str, os.PathLike)):
            self.model_file = str(Path(model).resolve())
            model = load(model, dtype=self.dtype)
        elif isinstance(model, (AtomisticModel, Committee)):
            import copy

            model = copy.deepcopy(model).to(dtype=self.dtype)  # the caller's model stays as it is
        else:
            raise TypeError(f"model must be a model file or a model, not {type(model).__name__}")
        if not model.conservative:
            raise ValueError(f"LAMMPS needs a conservative model (forces from the energy's derivative); "
                             f"{model.architecture} predicts forces directly")
        if model.receptive_hops is None:
            raise ValueError(f"this {model.architecture} model has a global node that couples every atom, which "
                             "domain decomposition cannot split; train it with use_global: false for LAMMPS")
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self.is_committee = model.is_committee
        from ase.data import atomic_numbers

        self.element_types = list(model.config.symbols)
        self._numbers = torch.tensor([atomic_numbers[s] for s in self.element_types], dtype=torch.long)
        # what ML-IAP's unified interface reads: the pair cutoff is 2 x rcutfac
        self.interface = None
        self.ndescriptors = 1
        self.nparams = 1
        self.rcutfac = 0.5 * float(model.cutoff)
        self.hops = int(model.receptive_hops)
        # NEMP (and its committees): each rank computes its own atoms only and receives its ghosts'
        # features from their owners before every layer (FeatureExchange), instead of recomputing them
        if exchange and not model.exchanges_features:
            raise ValueError(f"a {model.architecture} model cannot receive its ghosts' features: it needs exchange=False")
        self.exchanges_features = bool(model.exchanges_features if exchange is None else exchange)
        self._plan = None  # the FeatureExchange of the last call, kept while the atoms stay on their ranks
        # what the calls cost, summed over calls: seconds in compute_forces, of them in the model (its
        # energies and their gradient; the rest reads LAMMPS's arrays, folds images, hands forces back),
        # local atoms and all atoms the model computed (ghosts included), pairs from LAMMPS
        # (the exchanges of ghosts' features included, whose seconds, waiting for the other ranks
        # included, are also in exchange_seconds; exchange_plans counts the exchanges built)
        self.stats = {"calls": 0, "seconds": 0.0, "model_seconds": 0.0, "exchange_seconds": 0.0, "exchange_plans": 0,
                      "local_atoms": 0, "all_atoms": 0, "pairs": 0}
        self._lmp, self._with_spread = None, False  # the instance of attach(): atom ids, the per-atom spread

    # -- ML-IAP's unified interface ------------------------------------------------------
    def compute_descriptors(self, data) -> None:
        """Not used: the model needs no separate descriptors."""

    def compute_gradients(self, data) -> None:
        """Not used: forces come from :meth:`compute_forces`."""

    def compute_forces(self, data) -> None:
        """Energies of the rank's local atoms and ``dE/dr_ij`` for every pair.

        LAMMPS gives the pairs within the cutoff of local and ghost atoms (``pair_i`` the
        centre, ``jatoms`` the neighbour, ``rij = x_j - x_i``) and every atom's element
        index (``elems``). The energy is that of the local atoms (``i < nlocal``); LAMMPS
        adds ``fij`` to atom i and subtracts it from atom j (ghosts' forces go back to
        their owners) and tallies the virial from the same pairs.

        Ranks that exchange features wait for each other in every layer, so an error on one
        rank would leave the others waiting for ever: it is printed with the rank's number
        and the whole MPI job stops (``MPI_Abort``, what LAMMPS's own errors on one rank do).
        """
        try:
            self._compute_forces(data)
        except BaseException as error:
            comm = None
            if self.exchanges_features:
                try:
                    comm = self._communicator()
                except Exception:  # noqa: BLE001 - no LAMMPS instance or no mpi4py: nobody waits
                    comm = None
            if comm is None:
                raise
            import sys
            import traceback

            sys.stderr.write(f"ase_nemp.lammps: rank {comm.Get_rank()} failed; stopping every rank:\n"
                             + "".join(traceback.format_exception(error)))
            sys.stderr.flush()
            comm.Abort(1)

    def _compute_forces(self, data) -> None:
        start = time.perf_counter()
        n, nlocal, npairs = int(data.ntotal), int(data.nlocal), int(data.npairs)
        numbers = self._numbers.index_select(0, torch.from_numpy(np.asarray(data.elems, dtype=np.int64)))
        if npairs:
            i = torch.from_numpy(np.asarray(data.pair_i, dtype=np.int64))
            j = torch.from_numpy(np.asarray(data.jatoms, dtype=np.int64))
            rij = torch.from_numpy(np.array(data.rij, dtype=np.float64)).to(self.dtype)
        else:
            i = j = torch.zeros(0, dtype=torch.long)
            rij = torch.zeros((0, 3), dtype=self.dtype)
        kept = edges_within = exchange = None  # the pairs the model sees: all of them unless images fold
        tags = self._tags(n)
        if tags is None and self.hops > 1 and bool((j >= nlocal).any()) and not bool((i >= nlocal).any()):
            raise RuntimeError("this rank's ghost atoms have no neighbour lists and the potential was handed no "
                               "LAMMPS instance to read their ids: use LammpsPotential.attach, or the python lines "
                               "of lammps_input (nemp lammps prints them) after pair_coeff")
        if self.exchanges_features and tags is not None:
            # every atom once, pairs of the local atoms only; the ghosts' features come from their owners
            i, j, numbers, kept, _, ghost_tags = fold_images(i, j, numbers, tags, nlocal, 1, with_tags=True)
            exchange = self._exchange(tags[:nlocal], ghost_tags)
            rij = rij[kept]
            n = len(numbers)
        elif tags is not None and npairs:
            i, j, numbers, kept, edges_within = fold_images(i, j, numbers, tags, nlocal, self.hops)
            rij = rij[kept]
            n = len(numbers)
        rij.requires_grad_(True)
        model_start = time.perf_counter()
        # positions at the origin and the pair vectors as the shifts of a unit cell: the
        # model's edge vectors, x_j - x_i + shift @ I, are exactly LAMMPS's rij
        graph = AtomicGraph(
            positions=torch.zeros((n, 3), dtype=self.dtype), numbers=numbers,
            cell=torch.eye(3, dtype=self.dtype).unsqueeze(0), pbc=torch.zeros((1, 3), dtype=torch.bool),
            edge_index=torch.stack([i, j]), shifts=rij, batch=torch.zeros(n, dtype=torch.long))
        with torch.enable_grad():
            if exchange is not None:
                local, fij, spread = self._exchanged_energies(graph, rij, nlocal, exchange)
            else:
                energies = self.model(graph, fused=True, edges_within=edges_within)["energies"]  # (N,) or (M, N)
                spread = None
                if self.is_committee:
                    spread = energies[:, :nlocal].detach().std(0, correction=1)
                    energies = energies.mean(0)
                local = energies[:nlocal]
                (fij,) = torch.autograd.grad(local.sum(), rij, allow_unused=True) if npairs else (None,)
            total = local.sum()
            if spread is not None and self._spread is not None:  # the members' spread of each local atom's energy
                self._spread[:nlocal] = spread.double().numpy()
        model_seconds = time.perf_counter() - model_start
        data.energy = float(total.detach())
        listed = np.asarray(data.iatoms[: int(data.nlistatoms)], dtype=np.int64)
        data.eatoms = np.ascontiguousarray(local.detach().to(torch.float64).numpy()[listed])
        if npairs:
            fij = fij.detach().to(torch.float64) if fij is not None else torch.zeros(rij.shape, dtype=torch.float64)
            if kept is not None:  # a folded image's own pairs carry no force: its owner's pairs do
                fij = torch.zeros((npairs, 3), dtype=torch.float64).index_copy_(0, kept, fij)
            data.update_pair_forces(np.ascontiguousarray(fij.numpy()))
        st = self.stats
        st["calls"] += 1
        st["seconds"] += time.perf_counter() - start
        st["model_seconds"] += model_seconds
        st["local_atoms"] += nlocal
        st["all_atoms"] += n
        st["pairs"] += npairs

    def _exchange(self, local_tags: np.ndarray, ghost_tags: np.ndarray) -> "FeatureExchange | None":
        """The exchange of the ghosts' features for this call (None on one rank, where every
        ghost folded onto a local atom); the last call's when no rank's atoms changed."""
        comm = self._communicator()
        if comm is None:
            if len(ghost_tags):
                raise RuntimeError(f"{len(ghost_tags)} ghost atoms on one rank are images of no local atom")
            return None
        plan = self._plan
        changed = plan is None or not plan.serves(local_tags, ghost_tags)
        if comm.allreduce(int(changed)):  # on any rank: all build the new one together
            start = time.perf_counter()
            self._plan = plan = FeatureExchange(comm, local_tags, ghost_tags, stats=self.stats)
            self.stats["exchange_seconds"] += time.perf_counter() - start
            self.stats["exchange_plans"] += 1
        return plan

    def _communicator(self):
        """The ranks' MPI communicator (``mpi4py``) of the LAMMPS instance; None on one rank."""
        lmp = self._lmp if self._lmp is not None else _BOUND
        if int(lmp.extract_setting("world_size")) == 1:
            return None
        comm = lmp.get_mpi_comm()
        if comm is None:
            raise RuntimeError("LAMMPS runs on several ranks but hands Python no communicator: install mpi4py "
                               "(pip install mpi4py, built against the MPI LAMMPS uses)")
        return comm

    def _exchanged_energies(self, graph: AtomicGraph, rij: torch.Tensor, nlocal: int, exchange):
        """The local atoms' energies (nlocal,), ``dE/drij`` of every pair and (a committee)
        the members' spread of each local energy, with the ghosts' features exchanged.

        The members run one after another, each with its own backward pass, so that every
        rank goes through the same exchanges in the same order (each is a collective call)."""
        members = self.model.members if self.is_committee else [self.model]
        energies, fij = [], None
        for member in members:
            local = member(graph, fused=True, exchange=exchange)["energies"][:nlocal]
            (g,) = torch.autograd.grad(local.sum(), rij, allow_unused=True)
            energies.append(local.detach())
            if g is not None:
                fij = g if fij is None else fij + g
        energies = torch.stack(energies)
        if fij is not None and len(members) > 1:
            fij = fij / len(members)
        spread = energies.std(0, correction=1) if len(members) > 1 else None
        return energies.mean(0), fij, spread

    # -- pickling: a pointer to the model file, never the weights -----------------------------
    def __reduce__(self):  # the LAMMPS instance of attach() is not part of it
        if self.model_file is None:
            raise pickle.PicklingError("a LammpsPotential built from a model object has no file to point to; "
                                       "save the model (ase_nemp.save) and build it from the file")
        return _rebuild, (self.model_file, str(self.dtype).replace("torch.", ""), self.exchanges_features)

    # -- LAMMPS commands ---------------------------------------------------------------------
    def attach(self, lmp, types: list[str] | None = None, skin: float = 2.0, spread: bool = False) -> None:
        """Load this potential into a running ``lammps.lammps`` instance (library mode,
        after the box and atoms exist): the ML-IAP Python coupling, ``pair_style mliap
        unified EXISTS 1``, ``pair_coeff`` naming the element of each LAMMPS atom type
        (``types``, in type order; default the model's species) and the ghost cutoff for
        the input's neighbour ``skin`` (Å). On one rank, where every ghost folds onto its
        owner (:func:`fold_images`), ``pair_style mliap unified EXISTS 0`` with LAMMPS's
        default ghost cutoff instead: no halo at all.

        ``spread`` (a committee): every force call also stores the members' standard
        deviation of each atom's energy (eV) in the per-atom property
        ``d_nemp_energy_spread`` (``fix nemp_spread``), which ``dump custom`` can write and
        ``lmp.numpy.extract_atom("d_nemp_energy_spread")`` reads: where in a large
        simulation the committee disagrees."""
        from lammps.mliap import activate_mliappy, load_unified

        if spread and not self.is_committee:
            raise ValueError("spread needs a committee: a single model has no spread")
        # one rank: every ghost folds onto a local atom (fold_images); a model that exchanges its
        # features: the ghosts' come from their owners. Either way the ghosts within one cutoff,
        # without neighbour lists of their own, are all the model needs
        one_rank = int(lmp.extract_setting("world_size")) == 1
        commands = lammps_input(self, file="EXISTS", skin=skin, types=types,  # bad types fail before LAMMPS sees them
                                halo=not (one_rank or self.exchanges_features))
        activate_mliappy(lmp)
        load_unified(self)
        _command_holding_the_gil(lmp, commands[0])  # pair_style: starts LAMMPS's Python
        lmp.commands_list(commands[1:])
        if spread:
            lmp.command("fix nemp_spread all property/atom d_nemp_energy_spread ghost no")
        self._lmp, self._with_spread = lmp, spread

    @property
    def _spread(self):
        """The per-atom spread array of the attached LAMMPS instance (None when not asked for)."""
        if self._lmp is None or not self._with_spread:
            return None
        return self._lmp.numpy.extract_atom("d_nemp_energy_spread")

    def _tags(self, n: int) -> np.ndarray | None:
        """The LAMMPS ids of the rank's ``n`` atoms, local then ghost; None when no LAMMPS
        instance was handed over (neither :meth:`attach` nor :func:`bind`)."""
        lmp = self._lmp if self._lmp is not None else _BOUND
        if lmp is None:
            return None
        return np.asarray(lmp.numpy.extract_atom("id", nelem=n))


class FeatureExchange:
    """Hands each rank its ghost atoms' node features from the ranks that own them.

    Built once for an assignment of atoms to ranks (collectively: every rank builds it at
    the same time): ``local_tags`` are the LAMMPS ids of the rank's own atoms (rows 0 ..
    nlocal - 1 of the features), ``ghost_tags`` those of the rows that follow (each id
    once, owned by another rank). Where each id lives is looked up through a directory
    spread over the ranks (id modulo the number of ranks), so no rank ever holds every id.

    Calling it on features (N, ...) returns them with the ghost rows replaced by the
    owners' rows; the backward pass sends the ghost rows' gradients back and adds them to
    the owners' rows. Each call, forward and backward, is one ``Alltoallv``.
    """

    def __init__(self, comm, local_tags: np.ndarray, ghost_tags: np.ndarray, stats: dict | None = None) -> None:
        self.comm, self.stats = comm, stats  # stats["exchange_seconds"]: the seconds in the exchanges
        self.local_tags = np.array(local_tags, dtype=np.int64)
        self.ghost_tags = np.array(ghost_tags, dtype=np.int64)
        size, nlocal = comm.Get_size(), len(self.local_tags)
        # 1. every rank files its own atoms (id, rank, row) with the directory rank id % size
        mine = np.stack([self.local_tags, np.full(nlocal, comm.Get_rank()), np.arange(nlocal)], axis=1)
        order, counts = self._grouped(self.local_tags % size)
        filed, _ = self._send(mine[order], counts)
        filed = filed[np.argsort(filed[:, 0], kind="stable")]
        # 2. asks the directory where its ghosts live ...
        asked_order, counts = self._grouped(self.ghost_tags % size)
        asked, asked_of = self._send(self.ghost_tags[asked_order, None], counts)
        at = np.searchsorted(filed[:, 0], asked[:, 0])
        found = at < len(filed)
        found[found] = filed[at[found], 0] == asked[found, 0]
        if not found.all():
            raise RuntimeError(f"atom ids {asked[~found, 0][:5].tolist()} are ghosts of a rank but no rank owns them")
        # 3. ... which answers (owner rank, owner's row) in the order asked
        answers, _ = self._send(filed[at, 1:], asked_of)
        where = np.empty_like(answers)
        where[asked_order] = answers
        # 4. each owner learns which of its rows each other rank needs
        by_owner, self.recv_counts = self._grouped(where[:, 0])
        rows, self.send_counts = self._send(where[by_owner, 1:], self.recv_counts)
        self.send_rows = torch.from_numpy(rows[:, 0].copy())  # own rows, grouped by the rank that needs them
        self.recv_rows = torch.from_numpy(nlocal + by_owner)  # ghost rows, grouped by their owner

    def serves(self, local_tags: np.ndarray, ghost_tags: np.ndarray) -> bool:
        """Whether this rank's atoms are still the ones the exchange was built for."""
        return np.array_equal(local_tags, self.local_tags) and np.array_equal(ghost_tags, self.ghost_tags)

    def _grouped(self, dest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The order that groups items by their destination rank ``dest``, and how many go to each."""
        return np.argsort(dest, kind="stable"), np.bincount(dest, minlength=self.comm.Get_size()).astype(np.int64)

    def _send(self, rows: np.ndarray, counts: np.ndarray, got: np.ndarray | None = None):
        """Send ``rows`` (n, w), grouped by destination, ``counts[r]`` of them to rank r; the
        rows received, grouped by the sending rank, and how many came from each (``got``,
        when the caller knows it already)."""
        if got is None:
            got = np.empty_like(counts)
            self.comm.Alltoall(counts, got)
        rows = np.ascontiguousarray(rows)
        out = np.empty((int(got.sum()), rows.shape[1]), dtype=rows.dtype)
        self.comm.Alltoallv([rows, counts * rows.shape[1]], [out, got * rows.shape[1]])
        return out, got

    def move(self, x: torch.Tensor, rows_out: torch.Tensor, counts_out: np.ndarray, counts_in: np.ndarray) -> torch.Tensor:
        """Rows ``rows_out`` of ``x`` (N, F) to the ranks (``counts_out`` each, in rank order);
        the (sum(counts_in), F) rows received, in rank order."""
        start = time.perf_counter()
        got, _ = self._send(x.detach().index_select(0, rows_out).numpy(), counts_out, got=counts_in)
        if self.stats is not None:
            self.stats["exchange_seconds"] += time.perf_counter() - start
        return torch.from_numpy(got)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return _Exchange.apply(features, self)


class _Exchange(torch.autograd.Function):
    """The ghost rows of the features replaced by their owners' (forward); the ghost rows'
    gradients added to the owners' rows (backward)."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, plan: FeatureExchange) -> torch.Tensor:
        ctx.plan = plan
        flat = features.reshape(features.shape[0], -1)
        got = plan.move(flat, plan.send_rows, plan.send_counts, plan.recv_counts)
        out = flat.clone()
        out.index_copy_(0, plan.recv_rows, got.to(out.dtype))
        return out.view_as(features)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        plan = ctx.plan
        flat = grad.contiguous().reshape(grad.shape[0], -1)
        back = plan.move(flat, plan.recv_rows, plan.recv_counts, plan.send_counts)
        out = flat.clone()
        out.index_fill_(0, plan.recv_rows, 0.0)  # a ghost's own (unused) row gets nothing
        out.index_add_(0, plan.send_rows, back.to(out.dtype))
        return out.view_as(grad), None


def fold_images(i: torch.Tensor, j: torch.Tensor, numbers: torch.Tensor, tags: np.ndarray, nlocal: int,
                hops: int, with_tags: bool = False) -> tuple:
    """The graph the local energies need: every atom once, as deep as the model reaches.

    LAMMPS hands a rank its local atoms and ghost atoms, several of which can be periodic
    images of one atom (same id). Each image of an atom sits in the same environment, so
    they share their features: every image folds onto the one nearest (in pair hops) to the
    local atoms, the rank's own atoms for their own images. Its pairs keep their vectors
    (the periodic graph ASE's calculator builds), and the pairs of the folded images are
    dropped. An atom ``hops`` pairs from every local atom enters only as a neighbour, and
    one further out not at all, so only atoms within ``hops - 1`` pairs keep pairs of their
    own. On one rank every ghost folds and the model's work is that of the local atoms.

    ``i``, ``j`` (pairs,) atom indices, ``numbers`` (atoms,) atomic numbers, ``tags`` the
    atoms' LAMMPS ids, local atoms first. Returns the new ``i``, ``j`` and ``numbers`` (the
    local atoms keep their indices, the other atoms kept follow in order of their depth,
    the pairs are sorted by centre), the indices of the pairs kept, and ``edges_within``:
    the number of pairs whose centre is at most d pairs from a local atom, d = 0 .. hops - 1
    (the models' ``edges_within``: NEMP computes each layer only as deep as still needed);
    ``with_tags``: the ids of the atoms kept after the local ones too.
    """
    n = len(tags)
    i_np, j_np = i.numpy(), j.numpy()
    far = hops + 1
    depth = np.full(n, far, dtype=np.int64)  # pairs from the nearest local atom, capped
    depth[:nlocal] = 0
    for h in range(1, hops + 1):
        reached = j_np[depth[i_np] == h - 1]
        depth[reached] = np.minimum(depth[reached], h)
    # each id's image of smallest depth stands for all its images (a local atom for its own)
    order = np.lexsort((depth, tags))
    first = np.ones(n, dtype=bool)
    first[1:] = tags[order[1:]] != tags[order[:-1]]
    group = np.cumsum(first) - 1  # the id's group of each atom in ``order``
    chosen = order[first]  # one atom per id
    chosen_of = np.empty(n, dtype=np.int64)
    chosen_of[order] = chosen[group]
    others = chosen[(chosen >= nlocal) & (depth[chosen] < far)]
    others = others[np.lexsort((others, depth[others]))]  # by depth, then index
    kept_atoms = np.concatenate([np.arange(nlocal), others])
    node = np.full(n, -1, dtype=np.int64)
    node[kept_atoms] = np.arange(len(kept_atoms))
    node_of = node[chosen_of]
    kept = np.flatnonzero((chosen_of[i_np] == i_np) & (depth[i_np] < hops))
    kept = kept[np.argsort(node_of[i_np[kept]], kind="stable")]  # by centre, so by the centre's depth
    edges_within = np.searchsorted(depth[i_np[kept]], np.arange(hops), side="right").tolist()
    node_of, kept = torch.from_numpy(node_of), torch.from_numpy(kept)
    out = node_of[i[kept]], node_of[j[kept]], numbers[torch.from_numpy(kept_atoms)], kept, edges_within
    return out + (tags[others],) if with_tags else out


def lammps_input(potential: LammpsPotential, file: str, skin: float = 2.0,
                 types: list[str] | None = None, halo: bool | None = None) -> list[str]:
    """The LAMMPS commands for ``potential``: ``pair_style mliap unified FILE 0`` and
    ``pair_coeff * * SYMBOLS`` (``types``: the element of each LAMMPS atom type in order;
    default the model's species).

    ``halo`` (default: unless the model exchanges its features between ranks, NEMP) asks
    for ghost atoms as deep as the receptive field, with neighbour lists of their own:
    ``pair_style mliap unified FILE 1`` and ``comm_modify cutoff`` of receptive hops x
    cutoff + ``skin`` (Å, the neighbour skin of the input). Without it LAMMPS's default
    ghost cutoff (one cutoff and the skin) is enough: the ghosts' features come from their
    owners, or (one rank) every ghost folds onto a local atom. For a pointer ``file`` (the
    plain ``lmp`` executable) two ``python`` commands follow that hand the LAMMPS instance
    to the potential (:func:`bind`): it reads the atoms' ids and the ranks' communicator."""
    types = list(types) if types is not None else list(potential.element_types)
    unknown = [t for t in types if t not in potential.element_types]
    if unknown:
        raise ValueError(f"atom types {unknown} are not species of the model ({', '.join(potential.element_types)})")
    if halo is None:
        halo = not potential.exchanges_features
    lines = [f"pair_style mliap unified {file} {1 if halo else 0}", f"pair_coeff * * {' '.join(types)}"]
    if halo:
        reach = potential.hops * 2.0 * potential.rcutfac + float(skin)
        lines.append(f"comm_modify cutoff {math.ceil(reach * 1000) / 1000:.3f}")
    if file != "EXISTS":
        lines += ['python nemp_bind input 1 SELF format p here "from ase_nemp.lammps import bind as nemp_bind"',
                  "python nemp_bind invoke"]
    return lines


def write_pointer(model: "str | os.PathLike | LammpsPotential", output: str | os.PathLike,
                  dtype: str = "float64") -> Path:
    """Write the file ``pair_style mliap unified FILE 1`` reads in the plain ``lmp``
    executable: a pickle of :class:`LammpsPotential` that holds only the model file's
    absolute path and the dtype (the weights stay in the model file). A model file is
    loaded here (``dtype``), so a bad file fails now, not on the cluster; a potential
    already built from one is written as it is."""
    potential = model if isinstance(model, LammpsPotential) else LammpsPotential(model, dtype=dtype)
    output = Path(output)
    with open(output, "wb") as f:
        pickle.dump(potential, f)
    return output


def resolve_model(name: str | os.PathLike) -> Path:
    """A model file's path, or the shipped model of that name (``pd-co-o``)."""
    path = Path(name)
    if path.exists() or path.suffix:
        return path
    from .pretrained import model_path

    return model_path(str(name))
