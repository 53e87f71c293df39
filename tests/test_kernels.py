"""The fused CPU kernels against the eager formulation and the reference vectors."""

import os

import numpy as np
import pytest
import torch

from ase_nemp.model import energy_forces_stress, kernels
from ase_nemp.nl import build_graph
from ase_nemp.testing import evaluate, random_crystal, random_model, random_molecule, tiny_config

from .conftest import CASES, close, load_case

pytestmark = pytest.mark.skipif(
    not kernels.available(torch.float64), reason="fused kernels unavailable (no working C compiler)"
)


def random_edges(n_nodes, n_edges, seed):
    gen = torch.Generator().manual_seed(seed)
    i = torch.sort(torch.randint(0, n_nodes, (n_edges,), generator=gen)).values
    j = torch.randint(0, n_nodes, (n_edges,), generator=gen)
    return torch.stack([i, j])


def test_edge_invariants_gradcheck():
    N, E, C, lf1 = 5, 17, 3, 3
    edges = random_edges(N, E, 0)
    csr = kernels.build_csr(edges, N, torch.float64)
    gen = torch.Generator().manual_seed(1)
    Y = torch.randn(E, 16, dtype=torch.float64, generator=gen).requires_grad_()
    V = torch.randn(N, lf1 * lf1, C, dtype=torch.float64, generator=gen).requires_grad_()
    for slots in (3, 1):
        Q = torch.randn(E, slots, lf1, C, dtype=torch.float64, generator=gen).requires_grad_()

        def fn(Y, V, Q):
            eps, rho = kernels.edge_invariants(Y, V, Q, csr)
            return (eps, rho) if slots == 3 else rho

        assert torch.autograd.gradcheck(fn, (Y, V, Q), eps=1e-6, atol=1e-8)


def test_node_densities_gradcheck():
    N, E, C, lf1, L1 = 5, 17, 3, 3, 4
    edges = random_edges(N, E, 2)
    csr = kernels.build_csr(edges, N, torch.float64)
    gen = torch.Generator().manual_seed(3)
    Y = torch.randn(E, 16, dtype=torch.float64, generator=gen).requires_grad_()
    Z = torch.randn(N, lf1 * lf1, C, dtype=torch.float64, generator=gen).requires_grad_()
    B = torch.randn(E, lf1 + L1, C, dtype=torch.float64, generator=gen).requires_grad_()
    assert torch.autograd.gradcheck(lambda Y, Z, B: kernels.node_densities(Y, Z, B, lf1, lf1, L1, csr), (Y, Z, B),
                                    eps=1e-6, atol=1e-8)
    G = torch.randn(E, lf1 + 2, C, dtype=torch.float64, generator=gen).requires_grad_()
    assert torch.autograd.gradcheck(lambda Y, G: kernels.node_densities(Y, None, G, 0, 0, lf1, csr), (Y, G),
                                    eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("width,bias", [(16, False), (24, True)])  # specialised and generic width
def test_fused_mlp_matches_eager_and_gradcheck(width, bias):
    from ase_nemp.model.config import MLPSpec
    from ase_nemp.model.mlp import ScaledMLP

    csr = kernels.build_csr(random_edges(3, 4, 0), 3, torch.float64)
    torch.manual_seed(0)
    module = ScaledMLP(7, 11, MLPSpec(blocks=2, width=width, layers=2), bias=bias).double()
    if bias:  # non-zero biases so that they are exercised
        with torch.no_grad():
            for b in (module.b_in, module.b_hidden, module.b_out):
                b.normal_()
    x = (torch.randn(40, 7, dtype=torch.float64) * 3).requires_grad_()
    x.data[0, 0] = 1e3  # the SiLU saturates on both sides (clamped exponential)
    x.data[1, 0] = -1e3
    y = kernels.mlp(module, x, csr)
    assert "FusedMLP" in type(y.grad_fn).__name__  # the kernel ran, not the module
    ref = module(x)
    torch.testing.assert_close(y, ref, rtol=1e-13, atol=1e-13)
    gy = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, gy)
    (gx_ref,) = torch.autograd.grad(ref, x, gy)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: kernels.mlp(module, x, csr), (x[2:8].detach().requires_grad_(),))
    # float32 (its own vector code on AVX-512 and AVX2): 45 rows end in a partial block of 13
    m32 = module.float()
    x32 = torch.cat([x.detach().float(), 3 * torch.randn(5, 7)]).requires_grad_()
    y32, ref32 = kernels.mlp(m32, x32, csr), m32(x32)
    torch.testing.assert_close(y32, ref32, rtol=1e-5, atol=1e-5)
    gy32 = torch.randn_like(y32)
    (gx32,) = torch.autograd.grad(y32, x32, gy32)
    (gx32_ref,) = torch.autograd.grad(ref32, x32, gy32)
    torch.testing.assert_close(gx32, gx32_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sh_lmax", [1, 3, 5])
def test_edge_geometry_matches_eager_and_gradcheck(sh_lmax):
    """Fused harmonics, cutoff weight and radial inputs against the eager formulas, with
    edges beyond the cutoff, a zero-length edge and a near-zero frequency (the series
    branch of sinc); dL/dr against the eager backward and by finite differences."""
    model = random_model(tiny_config(sh_lmax=sh_lmax, feat_lmax=min(sh_lmax, 2)), seed=3)
    cfg = model.config
    gen = torch.Generator().manual_seed(4)
    r = torch.randn(60, 3, dtype=torch.float64, generator=gen) * 1.6
    r[0] = 0.0  # zero-length edge: f = 0, finite gradient
    r[1] = torch.tensor([cfg.cutoff * 1.01, 0.0, 0.0])  # just outside
    r[2] = torch.tensor([0.0, 0.0, cfg.cutoff * 0.999])  # just inside
    S = cfg.num_species
    pair = torch.randint(0, S * S, (60,), generator=gen)
    with torch.no_grad():
        sigma = model.pair_mlp(model.pair_inputs)
        k_tab, w_tab = model.freq_mlp(sigma), model.pw_mlp(sigma)
        k_tab[pair[3], 0] = 1e-7
    csr = kernels.build_csr(random_edges(3, 4, 0), 3, torch.float64)
    r = r.requires_grad_()
    fused = model._geometry(r, pair, k_tab, w_tab, csr)
    eager = model._geometry(r, pair, k_tab, w_tab, None)
    assert "EdgeGeometry" in type(fused[0].grad_fn).__name__
    weights = [torch.randn(t.shape, dtype=t.dtype, generator=gen) for t in eager]
    grads = []
    for outs in (fused, eager):
        for a, b in zip(outs, eager):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        grads.append(torch.autograd.grad(sum((w * o).sum() for w, o in zip(weights, outs)), r)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-10)
    fn = lambda x: kernels.edge_geometry(x, pair[1:9], k_tab, w_tab, cfg.cutoff, cfg.envelope_p, cfg.eps,  # noqa: E731
                                         cfg.sh_lmax, csr)
    assert torch.autograd.gradcheck(fn, (r[1:9].detach().clone().requires_grad_(),))


def test_species_matmul_matches_eager_and_gradcheck():
    model = random_model(tiny_config(), seed=15)
    gen = torch.Generator().manual_seed(16)
    species = torch.tensor([2, 0, 1, 1, 0, 2])
    X = torch.randn(6, 9, model.config.num_channels, dtype=torch.float64, generator=gen, requires_grad=True)
    W = model.omega[1][:, 2]  # (S, C, C), a strided view as in the model
    csr = kernels.build_csr(random_edges(3, 4, 0), 3, torch.float64)
    fused, eager = model._mix(X, W, species, 0.7, csr), model._mix(X, W, species, 0.7, None)
    assert "SpeciesMatmul" in type(fused.grad_fn).__name__
    torch.testing.assert_close(fused, eager, rtol=1e-13, atol=1e-13)
    g = torch.randn(fused.shape, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(torch.autograd.grad(fused, X, g)[0], torch.autograd.grad(eager, X, g)[0])
    assert torch.autograd.gradcheck(lambda x: model._mix(x, W, species, 0.7, csr), (X,))


def test_tensor_product_matches_eager_and_gradcheck():
    model = random_model(tiny_config(), seed=13)
    gen = torch.Generator().manual_seed(14)
    N, C, cfg = 5, model.config.num_channels, model.config
    A = torch.randn(N, (cfg.sh_lmax + 1) ** 2, C, dtype=torch.float64, generator=gen, requires_grad=True)
    U = torch.randn(N, (cfg.feat_lmax + 1) ** 2, C, dtype=torch.float64, generator=gen, requires_grad=True)
    w = model.path_weights[0].transpose(0, 1).index_select(0, torch.tensor([0, 1, 2, 1, 0])).detach()
    csr = kernels.build_csr(random_edges(3, 4, 0), 3, torch.float64)
    fused, eager = model._tensor_product(A, U, w, csr), model._tensor_product(A, U, w)
    assert "TensorProduct" in type(fused.grad_fn).__name__
    torch.testing.assert_close(fused, eager, rtol=1e-13, atol=1e-13)
    g = torch.randn(fused.shape, dtype=torch.float64, generator=gen)
    for a, b in zip(torch.autograd.grad(fused, (A, U), g), torch.autograd.grad(eager, (A, U), g)):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    assert torch.autograd.gradcheck(lambda a, u: model._tensor_product(a, u, w, csr), (A, U))


@pytest.mark.parametrize("bias", [False, True])
def test_fused_mlp_fold_sums_output_blocks(bias):
    """fold=3 (the readout's Q0 + Q1 + Q2) equals summing the eager output's blocks, on
    the fused path and on the eager fallback (no kernels), values and input gradient."""
    from ase_nemp.model.config import MLPSpec
    from ase_nemp.model.mlp import ScaledMLP

    csr = kernels.build_csr(random_edges(3, 4, 0), 3, torch.float64)
    torch.manual_seed(1)
    module = ScaledMLP(5, 12, MLPSpec(blocks=1, width=16, layers=2), bias=bias).double()
    if bias:
        with torch.no_grad():
            module.b_out.normal_()
    x = torch.randn(30, 5, dtype=torch.float64, requires_grad=True)
    ref = module(x).view(30, 3, 4).sum(1)
    gy = torch.randn_like(ref)
    (g_ref,) = torch.autograd.grad(ref, x, gy)
    for c in (csr, None):
        y = kernels.mlp(module, x, c, fold=3)
        assert y.shape == (30, 4)
        torch.testing.assert_close(y, ref, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(torch.autograd.grad(y, x, gy)[0], g_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_fused_path_matches_the_reference(name):
    data, model, graph = load_case(name)
    out = energy_forces_stress(model, graph, stress=bool(data["pbc"].any()))  # inference: fused
    assert abs(out["energy"].item() - data["E_abs"][0]) <= 1e-10 * abs(data["E_abs"][0])
    close(out["forces"].numpy(), data["F"])
    if "stress" in data:
        close(out["stress"].numpy(), data["stress"])


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_fused_equals_eager(dtype, tol):
    model = random_model(tiny_config(num_layers=3), seed=5, dtype=dtype)
    for atoms in (random_crystal(n=8, seed=6), random_molecule(n=10, seed=7)):
        graph = build_graph(atoms, model.cutoff, dtype=dtype)
        fused = energy_forces_stress(model, graph, stress=True)
        eager = {k: v.detach() for k, v in energy_forces_stress(model, graph, stress=True, training=True).items()}
        scale = float(eager["forces"].abs().max())
        assert abs(float(fused["energy"] - eager["energy"])) <= tol * abs(float(eager["energy"]))
        assert float((fused["forces"] - eager["forces"]).abs().max()) <= tol * scale
        assert float((fused["stress"] - eager["stress"]).abs().max()) <= tol * max(scale, 1.0)


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_matches_eager_on_any_thread_count(threads, monkeypatch):
    """One thread takes the single-pass backward (scatters onto the neighbour directly),
    several take the two-pass one: both match the eager forces, and each other bitwise."""
    if not kernels.build_info(torch.float64).openmp:
        pytest.skip("kernels built without OpenMP: they run on one thread only")
    monkeypatch.setattr(kernels, "PARALLEL_MIN_EDGES", 0)  # this small graph too on several threads
    model = random_model(tiny_config(num_layers=2), seed=11)
    graph = build_graph(random_crystal(n=12, seed=12), model.cutoff)
    eager = {k: v.detach() for k, v in energy_forces_stress(model, graph, stress=True, training=True).items()}
    before = torch.get_num_threads()
    try:
        results = []
        for n in (threads, 3 - threads):
            torch.set_num_threads(n)
            results.append(energy_forces_stress(model, graph, stress=True))
    finally:
        torch.set_num_threads(before)
    fused = results[0]
    scale = float(eager["forces"].abs().max())
    assert float((fused["forces"] - eager["forces"]).abs().max()) <= 1e-12 * scale
    assert float((fused["stress"] - eager["stress"]).abs().max()) <= 1e-12 * max(scale, 1.0)
    assert torch.equal(results[0]["forces"], results[1]["forces"])
    assert torch.equal(results[0]["stress"], results[1]["stress"])


def test_unsorted_edges_fall_back_to_eager():
    model = random_model(seed=8)
    graph = build_graph(random_molecule(n=7, seed=9), model.cutoff)
    assert kernels.build_csr(graph.edge_index, graph.num_atoms, torch.float64) is not None
    order = torch.randperm(graph.num_edges, generator=torch.Generator().manual_seed(0))
    shuffled = graph._replace(edge_index=graph.edge_index[:, order], shifts=graph.shifts[order])
    assert kernels.build_csr(shuffled.edge_index, graph.num_atoms, torch.float64) is None
    np.testing.assert_allclose(evaluate(model, shuffled)["forces"], evaluate(model, graph)["forces"], atol=1e-12)


def test_training_keeps_second_derivatives():
    model = random_model(seed=10)
    graph = build_graph(random_molecule(n=6, seed=11), model.cutoff)
    out = energy_forces_stress(model, graph, training=True)
    (out["forces"] ** 2).sum().backward()  # would fail through a once-differentiable kernel
    assert model.omega.grad is not None and model.omega.grad.abs().max() > 0


def test_environment_switch_disables_kernels(monkeypatch):
    monkeypatch.setenv("ASE_NEMP_KERNELS", "0")
    assert kernels.build_csr(torch.zeros(2, 0, dtype=torch.long), 1, torch.float64) is None


def test_small_graphs_run_the_kernels_on_one_thread(monkeypatch):
    graph = build_graph(random_molecule(n=6, seed=3), 3.5)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        csr = kernels.build_csr(graph.edge_index, graph.num_atoms, torch.float64)
        assert csr.lib.nemp_set_threads(0) == 1  # a few dozen edges: one thread
        assert torch.get_num_threads() == 2  # and PyTorch's own setting (same OpenMP runtime) is untouched
        monkeypatch.setattr(kernels, "PARALLEL_MIN_EDGES", 1)
        csr = kernels.build_csr(graph.edge_index, graph.num_atoms, torch.float64)
        assert csr.lib.nemp_set_threads(0) == (2 if kernels.build_info(torch.float64).openmp else 1)
    finally:
        torch.set_num_threads(before)


def test_int32_edge_index_gives_the_int64_result():
    """int32 indices once reached the C code as int64 and crashed the process."""
    model = random_model(seed=13)
    graph = build_graph(random_crystal(n=8, seed=14), model.cutoff)
    narrow = graph._replace(edge_index=graph.edge_index.to(torch.int32), batch=graph.batch.to(torch.int32),
                            numbers=graph.numbers.to(torch.int32))
    ref = energy_forces_stress(model, graph, stress=True)
    out = energy_forces_stress(model, narrow, stress=True)
    for key in ("energy", "forces", "stress"):
        assert torch.equal(out[key], ref[key])


@pytest.mark.parametrize("bad", [-1, "N"])
def test_edge_index_out_of_range_is_refused(bad):
    model = random_model(seed=15)
    graph = build_graph(random_molecule(n=6, seed=16), model.cutoff)
    edge_index = graph.edge_index.clone()
    edge_index[1, -1] = graph.num_atoms if bad == "N" else bad
    with pytest.raises(ValueError, match="outside"):
        energy_forces_stress(model, graph._replace(edge_index=edge_index))
    with pytest.raises(ValueError, match="outside"):
        kernels.build_csr(edge_index, graph.num_atoms, torch.float64)


def test_graph_and_model_dtypes_must_match():
    """A float64 graph once reached a float32 model's kernels, which read its tables as double."""
    model = random_model(seed=17, dtype=torch.float32)
    graph = build_graph(random_molecule(n=6, seed=18), model.cutoff, dtype=torch.float64)
    with pytest.raises(TypeError, match="float32"):
        energy_forces_stress(model, graph)
    out = energy_forces_stress(model, graph.to(dtype=torch.float32))
    assert torch.isfinite(out["forces"]).all()


@pytest.mark.parametrize("field,change,match", [
    ("positions", lambda g: g.positions[:, :2], "positions must be"),
    ("edge_index", lambda g: g.edge_index.repeat(2, 1), "edge_index must be"),
    ("edge_index", lambda g: g.edge_index.double(), "integers"),
    ("batch", lambda g: g.batch + 1, "batch holds"),
])
def test_malformed_graphs_are_refused(field, change, match):
    model = random_model(seed=19)
    graph = build_graph(random_molecule(n=6, seed=20), model.cutoff)
    with pytest.raises((ValueError, TypeError), match=match):
        model(graph._replace(**{field: change(graph)}), fused=True)


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """Kernels built anew into an empty cache, as in a new process; the libraries of the
    rest of the suite are put back afterwards."""
    monkeypatch.setenv("ASE_NEMP_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "_LIBS", {})
    monkeypatch.setattr(kernels, "_BUILDS", {})
    monkeypatch.setattr(kernels, "_WARNED", False)
    return tmp_path


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
def test_portable_build_matches_eager(fresh_build, monkeypatch, dtype, tol):
    """The loops that run where there is no AVX-512 (ASE_NEMP_KERNELS=portable) are
    checked on this machine too."""
    monkeypatch.setenv("ASE_NEMP_KERNELS", "portable")
    info = kernels.build_info(dtype)
    assert info is not None and "-march=native" not in info.flags
    assert info.path.parent == fresh_build
    model = random_model(tiny_config(num_layers=2), seed=21, dtype=dtype)
    graph = build_graph(random_crystal(n=8, seed=22), model.cutoff, dtype=dtype)
    fused = energy_forces_stress(model, graph, stress=True)
    eager = {k: v.detach() for k, v in energy_forces_stress(model, graph, stress=True, training=True).items()}
    scale = float(eager["forces"].abs().max())
    assert float((fused["forces"] - eager["forces"]).abs().max()) <= tol * scale
    assert float((fused["stress"] - eager["stress"]).abs().max()) <= tol * max(scale, 1.0)


def test_compile_failure_warns_once_with_the_compiler_message(fresh_build, monkeypatch, tmp_path):
    fake = tmp_path / "broken-cc"
    fake.write_text("#!/bin/sh\necho 'broken-cc: cannot compile anything today' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    with pytest.warns(RuntimeWarning, match="cannot compile anything today") as record:
        assert not kernels.available(torch.float64)
    assert "ASE_NEMP_KERNELS=0" in str(record[0].message)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second dtype does not warn again
        assert not kernels.available(torch.float32)
    model = random_model(seed=23)
    out = energy_forces_stress(model, build_graph(random_molecule(n=5, seed=24), model.cutoff))
    assert torch.isfinite(out["forces"]).all()  # and the eager code runs


def test_corrupt_cached_library_is_rebuilt(fresh_build):
    """A truncated or foreign file in the cache (a crashed build, a full disk) is rebuilt
    by the next process instead of failing it."""
    import subprocess
    import sys

    path = kernels.build_info(torch.float64).path
    path.unlink()  # a new file: the library loaded here keeps its pages
    path.write_bytes(b"not a shared library")
    script = ("import torch; from ase_nemp.model import kernels; "
              "print(kernels.available(torch.float64), kernels.build_info(torch.float64).path)")
    env = {**os.environ, "ASE_NEMP_CACHE": str(fresh_build)}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["True", str(path)]
    assert path.stat().st_size > 1000
    assert [p.name for p in fresh_build.iterdir()] == [path.name]  # no temporary file left behind


def test_cache_key_tells_aarch64_cpus_apart(tmp_path):
    """aarch64 /proc/cpuinfo has no model name or flags: the part and features must count."""
    a = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve\nCPU implementer\t: 0x41\nCPU part\t: 0xd40\n"
    b = a.replace("0xd40", "0xd0c").replace(" sve", "")
    (tmp_path / "a").write_text(a)
    (tmp_path / "b").write_text(b)
    assert kernels._cpu_tag(str(tmp_path / "a")) != kernels._cpu_tag(str(tmp_path / "b"))
    assert kernels._cpu_tag(str(tmp_path / "a")) == kernels._cpu_tag(str(tmp_path / "a"))


def test_failed_kernels_raise():
    with pytest.raises(MemoryError):
        kernels._check(kernels._NO_MEMORY, "test")


def test_the_bindings_are_read_from_the_header_and_the_compiler_holds_the_source_to_it(tmp_path):
    """One list of signatures (_kernels.h): the ctypes bindings come from it, every function
    in it is in the built library, and a definition that drifts from its prototype does
    not compile."""
    import ctypes
    import shutil
    import subprocess

    from ase_nemp.model.kernels import _HEADER, _SOURCE, _library, signatures

    table = signatures(_HEADER.read_text())
    assert table["nemp_within"] == ([ctypes.c_int64] + [ctypes.c_void_p] * 5 + [ctypes.c_double]
                                    + [ctypes.c_void_p] * 3, ctypes.c_int64)
    assert table["nemp_set_threads"] == ([ctypes.c_int], ctypes.c_int)
    assert table["nemp_geom_fwd"][0][5:7] == [ctypes.c_double, ctypes.c_double] and table["nemp_tp_fwd"][1] is None
    lib = _library(torch.float64)
    if lib is not None:
        assert all(getattr(lib, name).argtypes == args for name, (args, _) in table.items())
    with pytest.raises(ValueError, match="type the bindings do not know"):
        signatures("void nemp_x(REAL scale);")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler: the fused kernels are not built here")
    source = _SOURCE.read_text()
    drifted = source.replace("i64 nemp_within(i64 E, const double *x", "i64 nemp_within(int E, const double *x", 1)
    assert drifted != source
    for name, text, ok in (("same.c", source, True), ("drifted.c", drifted, False)):
        path = tmp_path / name
        path.write_text(_HEADER.read_text() + "\n" + text)
        run = subprocess.run([cc, "-fsyntax-only", "-DREAL=double", str(path)], capture_output=True, text=True)
        assert (run.returncode == 0) == ok, run.stderr[-500:]
    assert "conflicting types" in run.stderr and "nemp_within" in run.stderr
