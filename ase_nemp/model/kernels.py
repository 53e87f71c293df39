"""Optional fused CPU kernels for the equivariant edge operations (``_kernels.c``).

The eager PyTorch formulation spends most of its time on tensors whose innermost
dimension is tiny (C = 4 channels, 2l+1 = 1..5 components): gathers, broadcasts and
per-degree sums that each stream an E x n x C array through memory. The C kernels do
one pass each, with a hand-derived backward (first derivatives only: forces and stress):

* ``edge_geometry``: harmonics, cutoff weight and radial basis of every edge (3.1-3.3);
* ``edge_invariants``, ``node_densities``: the gather, product and contraction of
  Eqs. 7-8 and the densities of Eqs. 5, 9-10, per edge;
* ``mlp``: a per-edge MLP (widths 16-64) instead of a chain of matrix products and
  activations over E x F arrays;
* ``tensor_product``, ``species_matmul``: the node-level CG product (Eq. 11) and the
  per-species channel mixing, without gathered (N, K, C) or (N, C, C) copies;
* the neighbour search of :mod:`ase_nemp.nl.cells` (in double, whatever the dtype).

On one thread the backward passes scatter onto neighbours directly; on several each
thread scatters every edge's share onto the neighbours it owns, in the same edge order,
so the results do not depend on the number of threads. They are compiled
with the system C compiler on first use (about a second) into ``~/.cache/ase-nemp``
(``$ASE_NEMP_CACHE`` overrides) and loaded with ctypes; :func:`build_info` says how.

Used automatically for inference on the CPU (``energy_forces_stress(training=False)``
and the calculator). Training needs second derivatives and uses the eager code, which
is also the reference the kernels are tested against. ``ASE_NEMP_KERNELS=0`` turns
them off; ``ASE_NEMP_KERNELS=portable`` builds them without ``-march=native`` (the
portable loops instead of AVX-512). If they cannot be built, one warning says why and
everything runs eagerly.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

__all__ = ["available", "build_info", "fits", "build_csr", "edge_geometry", "edge_invariants", "node_densities", "tensor_product",
           "species_matmul", "mlp", "EdgeCSR"]

PARALLEL_MIN_EDGES = 4096  # smaller graphs run the kernels on one thread
_SOURCE = Path(__file__).with_name("_kernels.c")
# Read once, with this module: the library is always built from the source that matches
# the ctypes signatures below, even if the file changes while a process runs.
_SOURCE_TEXT = _SOURCE.read_bytes()
_LIBS: dict[torch.dtype, ctypes.CDLL | None] = {}
_LOCK = threading.Lock()
_REAL = {torch.float32: "float", torch.float64: "double"}
_HEADER = Path(__file__).with_name("_kernels.h")
_HEADER_TEXT = _HEADER.read_bytes()
_C_TYPES = {"i64": ctypes.c_int64, "int": ctypes.c_int, "double": ctypes.c_double}


def signatures(header: str) -> dict[str, tuple[list, type | None]]:
    """ctypes ``(argtypes, restype)`` of every function prototype in the kernels' header:
    a pointer of any type is ``c_void_p``, ``i64`` / ``int`` / ``double`` by value are
    ``c_int64`` / ``c_int`` / ``c_double``; ``int`` returns ``c_int``, ``i64`` ``c_int64``,
    ``void`` None.
    Raises ``ValueError`` for a type it does not know (say, REAL by value, whose width
    depends on the library)."""
    import re

    text = re.sub(r"/\*.*?\*/", "", header, flags=re.S)
    out = {}
    for ret, name, params in re.findall(r"^(int|i64|void)\s+(nemp_\w+)\s*\(([^)]*)\)\s*;", text, flags=re.M):
        args = []
        for param in (" ".join(p.split()) for p in params.split(",")):
            if "*" in param:
                args.append(ctypes.c_void_p)
                continue
            kind = param.replace("const ", "").split()[0]
            if kind not in _C_TYPES:
                raise ValueError(f"{name}: parameter {param!r} has a type the bindings do not know")
            args.append(_C_TYPES[kind])
        out[name] = (args, {"int": ctypes.c_int, "i64": ctypes.c_int64}.get(ret))
    return out


_SIGNATURES = signatures(_HEADER_TEXT.decode())


def _cache_dir() -> Path:
    if os.environ.get("ASE_NEMP_CACHE"):
        return Path(os.environ["ASE_NEMP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ase-nemp"


# /proc/cpuinfo lines that identify what -march=native compiles for: x86 has model name
# and flags; aarch64 has neither, but implementer, part, variant and feature lines
_CPU_KEYS = ("model name", "flags", "Features", "CPU implementer", "CPU architecture", "CPU variant", "CPU part")


def _cpu_tag(cpuinfo: str = "/proc/cpuinfo") -> str:
    tag = platform.machine() + platform.processor()
    try:
        with open(cpuinfo) as fh:
            lines = {line.strip() for line in fh if line.split(":")[0].strip() in _CPU_KEYS}
        return tag + "\n".join(sorted(lines))
    except OSError:
        return tag


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc.split()[0]):
            return cc
    return None


def _compiler_identity(cc: str) -> str:
    """The compiler's own version text: a new compiler behind the same name builds anew."""
    try:
        out = subprocess.run([*cc.split(), "--version"], capture_output=True, text=True, timeout=60)
        return out.stdout + out.stderr
    except (subprocess.SubprocessError, OSError):
        return ""


def _flag_sets() -> list[list[str]]:
    """Compiler flags to try, best first. ``ASE_NEMP_KERNELS=portable`` leaves out
    -march=native, so the portable loops run instead of the AVX-512 ones (and are tested).

    On x86 the compiler is asked for 512-bit vectors where the CPU has them (GCC and
    Clang otherwise prefer 256-bit ones even with AVX-512): water MD in float64 is about
    20 % faster (476-483 against 372-382 µs/atom/step, 1,536 atoms, one core), float32 up
    to 5 %. On a CPU without AVX-512 the preference changes nothing."""
    fallback = [["-fopenmp"], []]
    if os.environ.get("ASE_NEMP_KERNELS") == "portable":
        return fallback
    native = [["-march=native", "-fopenmp"]]
    if platform.machine().lower() in ("x86_64", "amd64"):
        native.insert(0, ["-march=native", "-mprefer-vector-width=512", "-fopenmp"])
    return native + fallback


@dataclass(frozen=True)
class BuildInfo:
    """How the library of one dtype was built: its path, compiler and extra flags."""

    path: Path
    compiler: str
    flags: tuple[str, ...]

    @property
    def openmp(self) -> bool:
        return "-fopenmp" in self.flags


_BUILDS: dict[torch.dtype, BuildInfo] = {}
_WARNED = False


def _warn_once(message: str) -> None:
    global _WARNED
    if not _WARNED:
        _WARNED = True
        warnings.warn(f"{message}; inference runs the plain PyTorch code, about 2.7x slower. "
                      "Set ASE_NEMP_KERNELS=0 to use it without this warning.", RuntimeWarning, stacklevel=3)


def _compile(cc: str, flags: list[str], real: str, out: Path) -> str | None:
    """Build into ``out``; None on success, else the compiler's message. The temporary
    files have unique names (several processes, or hosts sharing a home folder, may
    build at once) and the finished library is moved into place atomically."""
    fd, src = tempfile.mkstemp(prefix=out.stem + ".", suffix=".c", dir=out.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(_HEADER_TEXT + b"\n" + _SOURCE_TEXT)  # every definition checked against its prototype
    fd, tmp = tempfile.mkstemp(prefix=out.stem + ".", suffix=".tmp.so", dir=out.parent)
    os.close(fd)
    cmd = [*cc.split(), "-O3", *flags, "-fPIC", "-shared", f"-DREAL={real}", src, "-o", tmp, "-lm", "-lpthread"]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if run.returncode != 0:
            return (run.stderr or run.stdout).strip()[-2000:] or f"exit status {run.returncode}"
        os.replace(tmp, out)
        return None
    except (subprocess.SubprocessError, OSError) as err:
        return str(err)
    finally:
        for path in (src, tmp):
            Path(path).unlink(missing_ok=True)


def _load(path: Path) -> ctypes.CDLL:
    """Load a built library and declare its functions (OSError or AttributeError if the
    file is not a complete library of this source)."""
    lib = ctypes.CDLL(str(path))
    for name, (args, res) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


def _build_and_load(real: str) -> tuple[ctypes.CDLL, BuildInfo] | None:
    """The library for ``real`` from the cache, or compiled now; None (after one warning
    with the compiler's message) if no flag set compiles. The cache key covers the
    source, the precision, the CPU, the compiler's version text and the flags used; a
    cached file that does not load (truncated, foreign) is rebuilt."""
    cc = _compiler()
    if cc is None:
        _warn_once("ase-nemp fused kernels: no C compiler found (tried $CC, cc, gcc, clang)")
        return None
    identity = (_HEADER_TEXT, _SOURCE_TEXT, real, _cpu_tag(), cc, _compiler_identity(cc), sys.platform)
    errors = []
    for flags in _flag_sets():
        key = hashlib.sha256(repr((*identity, flags)).encode()).hexdigest()[:16]
        out = _cache_dir() / f"nemp_kernels_{real}_{key}.so"
        for attempt in ("cached", "fresh"):
            if attempt == "fresh" or not out.exists():
                out.parent.mkdir(parents=True, exist_ok=True)
                error = _compile(cc, flags, real, out)
                if error is not None:
                    errors.append(f"{cc} {' '.join(flags)}: {error}")
                    break
            try:
                return _load(out), BuildInfo(out, cc, tuple(flags))
            except (OSError, AttributeError):
                out.unlink(missing_ok=True)  # corrupt or incomplete: build it again, once
    _warn_once("ase-nemp fused kernels could not be compiled:\n" + "\n".join(errors))
    return None


def _library(dtype: torch.dtype) -> ctypes.CDLL | None:
    if dtype not in _REAL or os.environ.get("ASE_NEMP_KERNELS", "1") == "0":
        return None
    with _LOCK:
        if dtype not in _LIBS:
            built = _build_and_load(_REAL[dtype])
            _LIBS[dtype] = built[0] if built else None
            if built:
                _BUILDS[dtype] = built[1]
        return _LIBS[dtype]


def build_info(dtype: torch.dtype = torch.float64) -> BuildInfo | None:
    """How the kernels for ``dtype`` were built, or None if they are not available."""
    return _BUILDS.get(dtype) if _library(dtype) is not None else None


def available(dtype: torch.dtype = torch.float64) -> bool:
    """Whether the fused kernels can be used for ``dtype`` (compiles them if needed)."""
    return _library(dtype) is not None


def _p(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


_OK, _BAD_SIZE, _NO_MEMORY = 0, -1, -2  # NEMP_OK, NEMP_BAD_SIZE, NEMP_NO_MEMORY in _kernels.c


def _check(status: int, kernel: str) -> None:
    """Raise if a kernel reported a failure (its outputs are then not to be used)."""
    if status == _NO_MEMORY:
        raise MemoryError(f"fused kernel {kernel}: out of memory for its scratch buffers")
    if status != _OK:
        raise RuntimeError(f"fused kernel {kernel} rejected its input sizes (status {status})")


# The kernels keep small per-row arrays on the stack: acc[C] (species mixing) and
# xb[2 N_R][LANES] (edge geometry), and handle harmonics up to GEOM_MAX_L. Models beyond
# these sizes run the eager code; within them the stack use stays under 40 KiB a thread.
GEOM_MAX_L = 8  # GEOM_MAX_L in _kernels.c
MAX_CHANNELS, MAX_RADIAL = 256, 128


def fits(num_channels: int, num_radial: int, sh_lmax: int) -> bool:
    """Whether a model of these sizes may run the fused kernels."""
    return num_channels <= MAX_CHANNELS and num_radial <= MAX_RADIAL and sh_lmax <= GEOM_MAX_L


@dataclass
class EdgeCSR:
    """Edge index in the CSR order the kernels need (edges sorted by centre i)."""

    ptr: torch.Tensor  # (N+1,) rows of the i-sorted edge list
    j: torch.Tensor  # (E,) the neighbour of each edge
    num_nodes: int
    lib: ctypes.CDLL


def build_csr(edge_index: torch.Tensor, num_nodes: int, dtype: torch.dtype) -> EdgeCSR | None:
    """CSR views of ``edge_index`` for the kernels, or None if they cannot be used
    (no kernels for this dtype, not on the CPU, or edges not sorted by centre)."""
    if edge_index.device.type != "cpu":
        return None
    lib = _library(dtype)
    if lib is None:
        return None
    # the C code indexes memory with these numbers: int64, and inside [0, num_nodes)
    edge_index = edge_index.to(torch.int64)
    i = edge_index[0].contiguous()
    j = edge_index[1].contiguous()
    E = i.shape[0]
    if E and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise ValueError(f"edge_index holds atom indices outside [0, {num_nodes})")
    if E > 1 and not bool((i[1:] >= i[:-1]).all()):
        return None
    ptr = torch.zeros(num_nodes + 1, dtype=torch.long)
    if E:
        ptr[1:] = torch.bincount(i, minlength=num_nodes).cumsum(0)
    # below a few thousand edges a parallel region costs more than it saves, and on a busy
    # machine its threads wait for cores (milliseconds per kernel): small graphs run on one
    lib.nemp_set_threads(torch.get_num_threads() if E >= PARALLEL_MIN_EDGES else 1)
    return EdgeCSR(ptr, j, num_nodes, lib)


def _check_rows(t: torch.Tensor, name: str) -> None:
    # rows may be strided (views of MLP outputs) but each row must be contiguous
    inner = 1
    for size, stride in zip(reversed(t.shape[1:]), reversed(t.stride()[1:])):
        if size > 1 and stride != inner:
            raise ValueError(f"kernel input {name} needs contiguous rows, got strides {t.stride()}")
        inner *= size


class _EdgeInvariants(torch.autograd.Function):
    """eps (E, C) and rho (N, C) of Eqs. 7-8 from coefficients Q (E, S, l+1, C).

    S = 3: slots 0 and 1 give eps, slot 2 gives rho (a message-passing layer).
    S = 1: the single slot gives rho and eps is not computed (the readout).
    """

    @staticmethod
    def forward(ctx, Y, V, Q, csr: EdgeCSR):
        V, Q = V.contiguous(), Q.contiguous()
        _check_rows(Y, "Y")
        E, (N, nf, C), (S, lf1) = Y.shape[0], V.shape, Q.shape[1:3]
        lc = lf1 * C
        eps = Y.new_empty(E, C)
        rho = Y.new_empty(N, C)
        a = Y.new_empty(E, lf1, C)
        b = Y.new_empty(E, lf1, C)
        qr = Q[:, S - 1]
        csr.lib.nemp_edge_inv_fwd(N, C, lf1, Y.stride(0), _p(csr.ptr), _p(csr.j), _p(Y), _p(V), _p(Q), S * lc,
                                  _p(qr), S * lc, int(S == 3), _p(eps), _p(rho), _p(a), _p(b))
        ctx.save_for_backward(Y, V, Q, a, b)
        ctx.csr = csr
        return eps, rho

    @staticmethod
    @once_differentiable
    def backward(ctx, g_eps, g_rho):
        Y, V, Q, a, b = ctx.saved_tensors
        csr = ctx.csr
        E, (N, nf, C), (S, lf1) = Y.shape[0], V.shape, Q.shape[1:3]
        lc = lf1 * C
        g_eps = None if (g_eps is None or S != 3) else g_eps.contiguous()
        g_rho = torch.zeros(N, C, dtype=Y.dtype) if g_rho is None else g_rho.contiguous()
        gY = torch.zeros_like(Y)
        gV = torch.empty_like(V)
        gQ = torch.zeros_like(Q) if g_eps is None and S == 3 else torch.empty_like(Q)
        gb, gVn = Y.new_empty(E, lf1, C), torch.empty_like(V)  # scratch for several threads / for one
        status = csr.lib.nemp_edge_inv_bwd(N, E, C, lf1, Y.stride(0), _p(csr.ptr), _p(csr.j),
                                  _p(Y), _p(V), _p(Q), S * lc, _p(Q[:, S - 1]), S * lc, _p(a), _p(b),
                                  _p(g_eps), _p(g_rho), _p(gY), _p(gV), _p(gQ), S * lc, _p(gQ[:, S - 1]), S * lc, _p(gb),
                                  _p(gVn))
        _check(status, "edge_invariants backward")
        return gY, gV, gQ, None


class _NodeDensities(torch.autograd.Function):
    """U (N, n_l, C) and A (N, LA^2, C) of Eqs. 9-10 from coefficients B (E, rows, C):
    beta = rows [0, lf1) (only if Z is given), alpha = rows [a0, a0 + LA)."""

    @staticmethod
    def forward(ctx, Y, Z, B, lf1: int, a0: int, LA: int, csr: EdgeCSR):
        B = B.contiguous()
        _check_rows(Y, "Y")
        N, C, rows = csr.num_nodes, B.shape[2], B.shape[1]
        ld = rows * C
        if Z is not None:
            Z = Z.contiguous()
            U = Y.new_empty(N, lf1 * lf1, C)
        else:
            U = None
        A = Y.new_empty(N, LA * LA, C)
        csr.lib.nemp_node_dens_fwd(N, C, lf1, LA, Y.stride(0), _p(csr.ptr), _p(csr.j), _p(Y), _p(Z), _p(B), ld,
                                   _p(B[:, a0]), ld, _p(U), _p(A))
        ctx.save_for_backward(Y, Z, B)
        ctx.csr, ctx.lf1, ctx.a0, ctx.LA = csr, lf1, a0, LA
        return (U, A) if Z is not None else A

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        Y, Z, B = ctx.saved_tensors
        csr, lf1, a0, LA = ctx.csr, ctx.lf1, ctx.a0, ctx.LA
        N, C, rows = csr.num_nodes, B.shape[2], B.shape[1]
        ld = rows * C
        if Z is not None:
            gU, gA = grads
            gU = torch.zeros(N, lf1 * lf1, C, dtype=Y.dtype) if gU is None else gU.contiguous()
            gZ = torch.empty_like(Z)
        else:
            (gA,) = grads
            gU, gZ = None, None
        gA = torch.zeros(N, LA * LA, C, dtype=Y.dtype) if gA is None else gA.contiguous()
        gY = torch.zeros_like(Y)
        used = (lf1 if Z is not None else 0) + LA
        gB = torch.empty_like(B) if used == rows else torch.zeros_like(B)
        csr.lib.nemp_node_dens_bwd(N, C, lf1, LA, Y.stride(0), _p(csr.ptr), _p(csr.j),
                                   _p(Y), _p(Z), _p(B), ld, _p(B[:, a0]), ld, _p(gU), _p(gA), _p(gY),
                                   _p(gB), ld, _p(gB[:, a0]), ld, _p(gZ))
        return gY, gZ, gB, None, None, None, None


def edge_invariants(Y, V, Q, csr: EdgeCSR):
    """Fused Eqs. 7-8: ``eps`` (E, C) and ``rho`` (N, C) from the scaled features ``V``
    and coefficients ``Q`` (E, 3, l+1, C); with ``Q`` (E, 1, l+1, C) only ``rho``."""
    return _EdgeInvariants.apply(Y, V, Q, csr)


def node_densities(Y, Z, B, lf1: int, a0: int, LA: int, csr: EdgeCSR):
    """Fused Eqs. 9-10: ``U`` from rows [0, lf1) of ``B`` and ``Z``, ``A`` from rows
    [a0, a0+LA) and the harmonics. With ``Z`` None only ``A`` (Eq. 5's density)."""
    return _NodeDensities.apply(Y, Z, B, lf1, a0, LA, csr)


class _SpeciesMatmul(torch.autograd.Function):
    """``scale * X[i] @ W[species[i]]`` per node; ``W`` (S, C, C) is a constant here."""

    @staticmethod
    def forward(ctx, X, W, species, scale, lib):
        X = X.contiguous()
        N, M, C = X.shape
        out = X.new_empty(N, M, C)
        lib.nemp_species_mm(N, M, C, _p(species), _p(X), _p(W), W.stride(0), 0, scale, _p(out))
        ctx.save_for_backward(W, species)
        ctx.scale, ctx.lib = scale, lib
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        W, species = ctx.saved_tensors
        g = g.contiguous()
        N, M, C = g.shape
        gX = torch.empty_like(g)
        ctx.lib.nemp_species_mm(N, M, C, _p(species), _p(g), _p(W), W.stride(0), 1, ctx.scale, _p(gX))
        return gX, None, None, None, None


def species_matmul(X, W, species, scale: float, csr: EdgeCSR):
    """Fused ``scale * torch.bmm(X, W[species])`` for ``X`` (N, M, C) and per-species
    matrices ``W`` (S, C, C), without forming the (N, C, C) gather. ``W`` enters without
    gradient (inference only)."""
    with torch.no_grad():
        W = W.detach()
        if W.stride(2) != 1 or W.stride(1) != W.shape[2]:
            W = W.contiguous()
    return _SpeciesMatmul.apply(X, W, species.to(torch.int64).contiguous(), float(scale), csr.lib)


class _TensorProduct(torch.autograd.Function):
    """Eq. 11 on nodes: ``P[:, out_k] += coef_k w[:, path_k] A[:, in1_k] U[:, in2_k]``
    over the K non-zero CG entries. The path weights ``w`` are constants here."""

    @staticmethod
    def forward(ctx, A, U, w, table, n_out, lib):
        A, U = A.contiguous(), U.contiguous()
        in1, in2, out, path, coef = table
        (N, nA, C), nU, npath = A.shape, U.shape[1], w.shape[1]
        P = A.new_empty(N, n_out, C)
        lib.nemp_tp_fwd(N, C, in1.numel(), nA, nU, n_out, npath, _p(in1), _p(in2), _p(out), _p(path), _p(coef),
                        _p(A), _p(U), _p(w), _p(P))
        ctx.save_for_backward(A, U, w)
        ctx.table, ctx.lib = table, lib
        return P

    @staticmethod
    @once_differentiable
    def backward(ctx, gP):
        A, U, w = ctx.saved_tensors
        in1, in2, out, path, coef = ctx.table
        (N, nA, C), nU, npath = A.shape, U.shape[1], w.shape[1]
        gP = gP.contiguous()
        gA, gU = torch.empty_like(A), torch.empty_like(U)
        ctx.lib.nemp_tp_bwd(N, C, in1.numel(), nA, nU, gP.shape[1], npath, _p(in1), _p(in2), _p(out), _p(path),
                            _p(coef), _p(A), _p(U), _p(w), _p(gP), _p(gA), _p(gU))
        return gA, gU, None, None, None, None


def tensor_product(A, U, w, in1, in2, out, path, coef, csr: EdgeCSR):
    """Fused channel-wise CG product on nodes: ``A`` (N, nA, C), ``U`` (N, nU, C) and
    path weights ``w`` (N, paths, C) -> (N, nU, C), summed over the K entries given by
    the index tensors ``in1``, ``in2``, ``out``, ``path`` and values ``coef`` (K,).
    ``w`` enters without gradient (inference only)."""
    with torch.no_grad():
        table = (in1.contiguous(), in2.contiguous(), out.contiguous(), path.contiguous(),
                 coef.detach().reshape(-1).to(A.dtype).contiguous())
        w = w.detach().contiguous()
    return _TensorProduct.apply(A, U, w, table, U.shape[1], csr.lib)


class _EdgeGeometry(torch.autograd.Function):
    """Harmonics, cutoff weight and the radial inputs of every edge from its vector r.

    Returns ``Y`` (E, (L+1)^2), ``f`` (E,), ``X0`` (E, 2 N_R) = [w[C:] f, sinc(k u) f]
    and ``e0`` (E, C) = w[:C] f, with ``k``, ``w`` the rows of the pair tables picked
    by ``pair``. The tables are constants here; the backward gives dL/dr only.
    """

    @staticmethod
    def forward(ctx, r, pair, k_tab, w_tab, sizes, lib):
        L, C, NR, p, eps, cutoff = sizes
        r = r.contiguous()
        E = r.shape[0]
        Y, f = r.new_empty(E, (L + 1) ** 2), r.new_empty(E)
        X0, e0 = r.new_empty(E, 2 * NR), r.new_empty(E, C)
        lib.nemp_geom_fwd(E, L, C, NR, p, eps, cutoff, _p(r), _p(pair), _p(k_tab), _p(w_tab), _p(Y), _p(f), _p(X0),
                          _p(e0))
        ctx.save_for_backward(r, pair, k_tab, w_tab)
        ctx.sizes, ctx.lib = sizes, lib
        return Y, f, X0, e0

    @staticmethod
    @once_differentiable
    def backward(ctx, gY, gf, gX0, ge0):
        r, pair, k_tab, w_tab = ctx.saved_tensors
        L, C, NR, p, eps, cutoff = ctx.sizes
        opt = lambda g: None if g is None else g.contiguous()  # noqa: E731
        gY, gf, gX0, ge0 = opt(gY), opt(gf), opt(gX0), opt(ge0)
        gr = torch.empty_like(r)
        ctx.lib.nemp_geom_bwd(r.shape[0], L, C, NR, p, eps, cutoff, _p(r), _p(pair), _p(k_tab), _p(w_tab), _p(gY),
                              _p(gf), _p(gX0), _p(ge0), _p(gr))
        return gr, None, None, None, None, None


def edge_geometry(r, pair, k_tab, w_tab, cutoff: float, envelope_p: int, eps: float, sh_lmax: int, csr: EdgeCSR):
    """Fused spec 3.1-3.3 on the edge vectors ``r`` (E, 3): normalised harmonics ``Y``,
    cutoff weight ``f``, the edge MLP's input ``X0`` and the first edge features ``e0``.
    ``pair`` (E,) indexes the rows of the pair tables ``k_tab`` (S^2, N_R) and ``w_tab``
    (S^2, C + N_R), which enter without gradient (inference only)."""
    NR = k_tab.shape[1]
    if not fits(w_tab.shape[1] - NR, NR, sh_lmax):
        raise ValueError(f"fused geometry supports sh_lmax <= {GEOM_MAX_L} and N_R <= {MAX_RADIAL}, "
                         f"not {sh_lmax} and {NR} (check kernels.fits first)")
    sizes = (sh_lmax, w_tab.shape[1] - NR, NR, envelope_p, float(eps), float(cutoff))
    with torch.no_grad():
        k_tab, w_tab = k_tab.detach().contiguous(), w_tab.detach().contiguous()
    return _EdgeGeometry.apply(r, pair.to(torch.int64).contiguous(), k_tab, w_tab, sizes, csr.lib)


_MLP_MAX_WIDTH, _MLP_MAX_IO, _LANES = 256, 1024, 16  # MLP_MAX_WIDTH, MLP_MAX_IO, LANES in _kernels.c


class _FusedMLP(torch.autograd.Function):
    """A deep :class:`~ase_nemp.model.mlp.ScaledMLP` on the rows of ``x`` in one pass.

    The weights enter as constants (scaled copies): the backward gives the gradient
    with respect to the input only, which is all forces and stress need.
    """

    @staticmethod
    def forward(ctx, x, weights, lib):
        win, bin_, wh, bh, wout, bout, nb, nl = weights
        x = x.contiguous()
        E, din = x.shape
        F, dout = win.shape[1], wout.shape[1]
        y = x.new_empty(E, dout)
        D = x.new_empty(-(-E // _LANES), nb * nl + 1, F, _LANES) if x.requires_grad else None
        status = lib.nemp_mlp_fwd(E, din, F, dout, nb, nl, _p(x), din, _p(win), _p(bin_), _p(wh), _p(bh), _p(wout),
                                  _p(bout), _p(y), _p(D))
        _check(status, f"mlp (d_in={din}, width={F}, d_out={dout})")  # mlp() checked the sizes first
        ctx.save_for_backward(D)
        ctx.weights, ctx.lib, ctx.din = weights, lib, din
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        (D,) = ctx.saved_tensors
        win, _, wh, _, wout, _, nb, nl = ctx.weights
        gy = gy.contiguous()
        E, F, dout = gy.shape[0], win.shape[1], wout.shape[1]
        gx = gy.new_empty(E, ctx.din)
        status = ctx.lib.nemp_mlp_bwd(E, ctx.din, F, dout, nb, nl, _p(win), _p(wh), _p(wout), _p(D), _p(gy), _p(gx))
        _check(status, f"mlp backward (d_in={ctx.din}, width={F}, d_out={dout})")
        return gx, None, None


def mlp(module, x: torch.Tensor, csr: EdgeCSR | None, fold: int = 1) -> torch.Tensor:
    """``module(x)`` for a ScaledMLP, fused into one kernel per call when ``csr`` (the
    kernels) is available, the MLP is of the deep form and x is a 2-D CPU tensor.

    ``fold`` > 1 returns ``module(x).view(rows, fold, -1).sum(1)``; the fused call sums
    the output layer's weight blocks instead, so the output layer costs 1/fold and the
    (rows, fold, d) array is never formed. Parameter gradients do not flow through the
    fused call (inference only)."""
    spec = module.spec
    lib = None
    if (csr is not None and not spec.linear and x.dim() == 2 and spec.width <= _MLP_MAX_WIDTH
            and max(module.d_in, module.d_out) <= _MLP_MAX_IO):
        lib = _library(x.dtype) if x.dtype == module.w_out.dtype else None
    if lib is None:
        y = module(x)
        return y if fold == 1 else y.view(*y.shape[:-1], fold, y.shape[-1] // fold).sum(-2)  # 0 rows allowed
    with torch.no_grad():
        opt = lambda b: None if b is None else b.detach().contiguous()  # noqa: E731
        w_out, b_out = module.w_out * module.gain_out, opt(module.b_out)
        if fold != 1:
            w_out = w_out.view(w_out.shape[0], fold, -1).sum(1)
            b_out = None if b_out is None else b_out.view(fold, -1).sum(0)
        weights = (
            (module.w_in * module.gain_in).contiguous(), opt(module.b_in),
            (module.w_hidden * module.gain_hidden).contiguous(), opt(module.b_hidden),
            w_out.contiguous(), b_out, spec.blocks, spec.layers,
        )
    return _FusedMLP.apply(x, weights, lib)
