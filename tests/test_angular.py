"""Spherical harmonics and Clebsch-Gordan coefficients (spec section 4.2)."""

import math

import numpy as np
import pytest
import torch

from ase_nemp.model.angular import (
    coupling_paths,
    normalized_spherical_harmonics,
    real_clebsch_gordan,
    solid_harmonics,
)
from ase_nemp.testing import random_model, tiny_config

RNG = np.random.default_rng(7)


def unit_vectors(n):
    v = RNG.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def random_rotation(rng=RNG):
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def sh(v, lmax, eps=0.0):
    t = torch.as_tensor(v, dtype=torch.float64)
    if eps:
        return normalized_spherical_harmonics(t, lmax, eps).numpy()
    return solid_harmonics(t, lmax).numpy()


def wigner_d(rot, l):
    """Numerical D^l(R) from Y_l(R v) = D^l Y_l(v) by least squares."""
    v = unit_vectors(8 * (2 * l + 1))
    y = sh(v, l)[:, l * l : (l + 1) ** 2]
    y_rot = sh(v @ rot.T, l)[:, l * l : (l + 1) ** 2]
    sol, *_ = np.linalg.lstsq(y, y_rot, rcond=None)  # y @ D^T = y_rot
    return sol.T


def test_closed_forms_up_to_l2():
    v = RNG.standard_normal((20, 3))
    x, y, z = v.T
    r2 = (v**2).sum(1)
    c = 1 / math.sqrt(math.pi)
    expected = np.stack(
        [
            np.full_like(x, 0.5 * c),
            math.sqrt(3 / (4 * math.pi)) * y, math.sqrt(3 / (4 * math.pi)) * z, math.sqrt(3 / (4 * math.pi)) * x,
            0.5 * math.sqrt(15 / math.pi) * x * y,
            0.5 * math.sqrt(15 / math.pi) * y * z,
            0.25 * math.sqrt(5 / math.pi) * (3 * z**2 - r2),
            0.5 * math.sqrt(15 / math.pi) * x * z,
            0.25 * math.sqrt(15 / math.pi) * (x**2 - y**2),
        ],
        axis=1,
    )
    np.testing.assert_allclose(sh(v, 2), expected, atol=1e-14)


def test_matches_scipy_complex_harmonics_up_to_l5():
    try:
        from scipy.special import sph_harm_y
    except ImportError:  # scipy < 1.15
        from scipy.special import sph_harm

        def sph_harm_y(l, m, theta, phi):
            return sph_harm(m, l, phi, theta)

    v = unit_vectors(30)
    theta = np.arccos(v[:, 2])
    phi = np.arctan2(v[:, 1], v[:, 0])
    ours = sh(v, 5)
    for l in range(6):
        for m in range(-l, l + 1):
            yc = sph_harm_y(l, abs(m), theta, phi)  # Condon-Shortley phase included
            if m > 0:
                ref = math.sqrt(2) * (-1) ** m * yc.real
            elif m < 0:
                ref = math.sqrt(2) * (-1) ** m * yc.imag
            else:
                ref = yc.real
            np.testing.assert_allclose(ours[:, l * l + l + m], ref, atol=1e-13, err_msg=f"l={l} m={m}")


def test_normalised_harmonics_norm_and_parity():
    v = unit_vectors(50)
    y = sh(v, 4, eps=1e-12)
    for l in range(5):
        block = y[:, l * l : (l + 1) ** 2]
        np.testing.assert_allclose((block**2).sum(1), 2 * l + 1, rtol=1e-9)
        np.testing.assert_allclose(sh(-v, 4, eps=1e-12)[:, l * l : (l + 1) ** 2], (-1) ** l * block, atol=1e-13)
    np.testing.assert_allclose(y[:, 0], 1.0, atol=1e-10)


def test_zero_vector_gives_only_l0():
    y = sh(np.zeros((1, 3)), 3, eps=1e-6)
    assert np.isfinite(y).all()
    assert np.all(y[0, 1:] == 0.0)


@pytest.mark.parametrize("l", range(5))
def test_numerical_wigner_d_is_orthogonal(l):
    d = wigner_d(random_rotation(), l)
    np.testing.assert_allclose(d @ d.T, np.eye(2 * l + 1), atol=1e-12)


def test_cg_is_rotation_invariant_for_all_even_paths_up_to_l4():
    rot = random_rotation()
    d = [wigner_d(rot, l) for l in range(5)]
    count = 0
    for l1 in range(5):
        for l2 in range(5):
            for l3 in range(abs(l1 - l2), min(4, l1 + l2) + 1):
                if (l1 + l2 + l3) % 2:
                    continue
                c = real_clebsch_gordan(l1, l2, l3)
                rotated = np.einsum("ia,jb,kc,abc->ijk", d[l1], d[l2], d[l3], c)
                np.testing.assert_allclose(rotated, c, atol=1e-12, err_msg=str((l1, l2, l3)))
                assert abs(np.linalg.norm(c) - 1) < 1e-12
                count += 1
    assert count > 30


def test_cg_phase_pins():
    def s(x):
        return 1 / math.sqrt(x)

    for l in range(4):
        np.testing.assert_allclose(real_clebsch_gordan(l, l, 0)[:, :, 0], np.eye(2 * l + 1) * s(2 * l + 1), atol=1e-15)
        np.testing.assert_allclose(real_clebsch_gordan(0, l, l)[0], np.eye(2 * l + 1) * s(2 * l + 1), atol=1e-15)
        np.testing.assert_allclose(real_clebsch_gordan(l, 0, l)[:, 0], np.eye(2 * l + 1) * s(2 * l + 1), atol=1e-15)
    c = real_clebsch_gordan(1, 1, 2)
    y, z, x = 0, 1, 2  # l = 1 component order
    assert c[z, z, 2] == pytest.approx(2 * s(30))
    assert c[x, x, 2] == pytest.approx(-s(30))
    assert c[y, y, 2] == pytest.approx(-s(30))
    assert c[y, x, 0] == pytest.approx(s(10))
    assert c[x, y, 0] == pytest.approx(s(10))


@pytest.mark.parametrize("path,kappa", [((1, 1, 0), math.sqrt(3)), ((1, 1, 2), 0.4899), ((2, 2, 2), 0.5345), ((3, 2, 1), 1.0)])
def test_coupling_of_equal_arguments(path, kappa):
    l1, l2, lf = path
    v = unit_vectors(10)
    y = sh(v, 3, eps=1e-300)
    c = real_clebsch_gordan(*path)
    coupled = np.einsum("abc,na,nb->nc", c, y[:, l1 * l1 : (l1 + 1) ** 2], y[:, l2 * l2 : (l2 + 1) ** 2])
    ratio = coupled / y[:, lf * lf : (lf + 1) ** 2]
    np.testing.assert_allclose(ratio, ratio[0, 0], rtol=1e-9)
    assert abs(ratio[0, 0]) == pytest.approx(kappa, abs=1e-4)


def test_path_counts():
    assert len(coupling_paths(2, 2)) == 11
    assert len(coupling_paths(3, 2)) == 13
    assert len(coupling_paths(3, 3)) == 23
    assert coupling_paths(3, 2) == [
        (0, 0, 0), (1, 1, 0), (2, 2, 0), (0, 1, 1), (1, 0, 1), (1, 2, 1), (2, 1, 1), (3, 2, 1),
        (0, 2, 2), (1, 1, 2), (2, 0, 2), (2, 2, 2), (3, 1, 2),
    ]
    nnz = sum(int((real_clebsch_gordan(*p) != 0).sum()) for p in coupling_paths(3, 2))
    assert nnz == 125
    with pytest.raises(ValueError):
        coupling_paths(1, 2)


def test_tensor_product_layer_is_equivariant():
    model = random_model(tiny_config(sh_lmax=3, feat_lmax=2, num_channels=3))
    rot = random_rotation()
    n, c = 5, 3
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(n, 16, c, generator=gen, dtype=torch.float64)
    U = torch.randn(n, 9, c, generator=gen, dtype=torch.float64)
    w = torch.randn(n, len(model.paths), c, generator=gen, dtype=torch.float64)

    def rotate(x, lmax):
        blocks = [torch.as_tensor(wigner_d(rot, l)) @ x[:, l * l : (l + 1) ** 2] for l in range(lmax + 1)]
        return torch.cat(blocks, dim=1)

    out = model._tensor_product(A, U, w)
    out_rot = model._tensor_product(rotate(A, 3), rotate(U, 2), w)
    torch.testing.assert_close(out_rot, rotate(out, 2), atol=1e-12, rtol=0)
    assert out.abs().max() > 0.1
