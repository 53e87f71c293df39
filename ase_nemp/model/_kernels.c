/*
 * Fused CPU kernels for the equivariant edge operations of NEMP (ase_nemp.model.kernels).
 *
 * Compiled twice, with -DREAL=float and -DREAL=double, into two shared libraries and
 * called through ctypes. Every kernel works on edges sorted by their centre atom i
 * (CSR row pointer `ptr`); scatters onto the neighbour j run over a second, j-sorted
 * CSR (`ptr_j`, `perm_j`) so that no two threads write the same row and the summation
 * order does not depend on the number of threads.
 *
 * Layouts (row-major, C = channels, lf1 = feat_lmax + 1, nf = lf1^2, L1 = sh_lmax + 1,
 * nL = L1^2; component lm of degree l is flattened as l^2 + l + m):
 *   Y (E, ldY)            normalised spherical harmonics, row stride ldY >= nL
 *   V, Z, gV, gZ (N, nf, C), U (N, nf, C), A (N, nL, C)
 *   coefficient tensors (E, rows, C) with a row stride given explicitly (views of MLP outputs)
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef REAL
#define REAL double
#endif
typedef int64_t i64;

/* The per-row bodies below are inlined into a switch on the channel count, so that for
 * the common sizes C is a compile-time constant: the short loops over channels (4-32
 * long) then unroll into a few vector instructions instead of a counted scalar loop. */
#define ROW static inline __attribute__((always_inline)) void
#define BY_CHANNELS(C, CALL)            \
    switch (C) {                        \
    case 4: CALL(4); break;             \
    case 8: CALL(8); break;             \
    case 12: CALL(12); break;           \
    case 16: CALL(16); break;           \
    case 32: CALL(32); break;           \
    default: CALL(C); break;            \
    }

/* out[lm, c] += coef[l, c] * Y[lm] for l < L1: a per-channel harmonic expansion */
ROW add_expansion(const i64 C, i64 L1, const REAL *Y, const REAL *coef, REAL *out) {
    for (i64 l = 0; l < L1; ++l) {
        const REAL *cl = coef + l * C;
        for (i64 m = l * l; m < (l + 1) * (l + 1); ++m) {
            const REAL y = Y[m];
            REAL *o = out + m * C;
            for (i64 c = 0; c < C; ++c) o[c] += cl[c] * y;
        }
    }
}

/* out[lm, c] += coef[l, c] * X[lm, c] for l < L1: a per-degree, per-channel scaling */
ROW add_degree_scaled(const i64 C, i64 L1, const REAL *coef, const REAL *X, REAL *out) {
    for (i64 l = 0; l < L1; ++l) {
        const REAL *cl = coef + l * C;
        for (i64 m = l * l; m < (l + 1) * (l + 1); ++m) {
            const REAL *x = X + m * C;
            REAL *o = out + m * C;
            for (i64 c = 0; c < C; ++c) o[c] += cl[c] * x[c];
        }
    }
}

int nemp_set_threads(int n) {
#ifdef _OPENMP
    if (n > 0) omp_set_num_threads(n);
    return omp_get_max_threads();
#else
    (void)n;
    return 1;
#endif
}

/* Stable counting sort of E keys in [0, n): ptr (n+1), perm (E). */
void nemp_csr(i64 E, i64 n, const i64 *key, i64 *ptr, i64 *perm) {
    memset(ptr, 0, (size_t)(n + 1) * sizeof(i64));
    for (i64 e = 0; e < E; ++e) ptr[key[e] + 1]++;
    for (i64 k = 0; k < n; ++k) ptr[k + 1] += ptr[k];
    i64 *cursor = (i64 *)malloc((size_t)(n > 0 ? n : 1) * sizeof(i64));
    memcpy(cursor, ptr, (size_t)n * sizeof(i64));
    for (i64 e = 0; e < E; ++e) perm[cursor[key[e]]++] = e;
    free(cursor);
}

/* ------------------------------------------------------------------------------------
 * Edge invariants (Eqs. 7 and 8).
 *   a[e,l,c] = sum_{m in l} Y[e,lm] V[i,lm,c]        b[e,l,c] = same with V[j]
 *   eps[e,c] = (sum_l Qe[e,0,l,c] a + Qe[e,1,l,c] b) / sqrt(2)     (if want_eps)
 *   rho[i,c] = sum_{e->i} sum_l Qr[e,l,c] a[e,l,c]
 * Qe: slots 0 and 1 at offsets 0 and lf1*C, row stride ldQe. Qr: row stride ldQr.
 * ---------------------------------------------------------------------------------- */
ROW edge_inv_fwd_row(i64 i, const i64 C, i64 lf1, i64 ldY, const i64 *ptr, const i64 *jdx, const REAL *Y,
                     const REAL *V, const REAL *Qe, i64 ldQe, const REAL *Qr, i64 ldQr, int want_eps, REAL *eps,
                     REAL *rho, REAL *a_out, REAL *b_out) {
    const i64 nf = lf1 * lf1, lc = lf1 * C;
    const REAL isq2 = (REAL)0.70710678118654752440;
    REAL *rho_i = rho + i * C;
    for (i64 c = 0; c < C; ++c) rho_i[c] = 0;
    const REAL *Vi = V + i * nf * C;
    for (i64 e = ptr[i]; e < ptr[i + 1]; ++e) {
        const REAL *Ye = Y + e * ldY;
        const REAL *Vj = V + jdx[e] * nf * C;
        REAL *ae = a_out + e * lc, *be = b_out + e * lc;
        for (i64 l = 0; l < lf1; ++l) {
            REAL *al = ae + l * C, *bl = be + l * C;
            for (i64 c = 0; c < C; ++c) { al[c] = 0; bl[c] = 0; }
            for (i64 m = l * l; m < (l + 1) * (l + 1); ++m) {
                const REAL y = Ye[m];
                const REAL *vim = Vi + m * C, *vjm = Vj + m * C;
                for (i64 c = 0; c < C; ++c) { al[c] += y * vim[c]; bl[c] += y * vjm[c]; }
            }
        }
        const REAL *q = Qe + e * ldQe, *qr = Qr + e * ldQr;
        if (want_eps) {
            REAL *ee = eps + e * C;
            for (i64 c = 0; c < C; ++c) ee[c] = 0;
            for (i64 l = 0; l < lf1; ++l)
                for (i64 c = 0; c < C; ++c) ee[c] += q[l * C + c] * ae[l * C + c] + q[lc + l * C + c] * be[l * C + c];
            for (i64 c = 0; c < C; ++c) ee[c] *= isq2;
        }
        for (i64 l = 0; l < lf1; ++l)
            for (i64 c = 0; c < C; ++c) rho_i[c] += qr[l * C + c] * ae[l * C + c];
    }
}

void nemp_edge_inv_fwd(i64 N, i64 C, i64 lf1, i64 ldY, const i64 *ptr, const i64 *jdx,
                       const REAL *Y, const REAL *V, const REAL *Qe, i64 ldQe, const REAL *Qr, i64 ldQr,
                       int want_eps, REAL *eps, REAL *rho, REAL *a_out, REAL *b_out) {
#define CALL(CC) edge_inv_fwd_row(i, CC, lf1, ldY, ptr, jdx, Y, V, Qe, ldQe, Qr, ldQr, want_eps, eps, rho, a_out, b_out)
#pragma omp parallel for schedule(static)
    for (i64 i = 0; i < N; ++i) BY_CHANNELS(C, CALL)
#undef CALL
}

/* Backward of nemp_edge_inv_fwd, centre side: gY[e, :nf], gV[i], gQe, gQr and the
 * neighbour-side gradient gb[e] (scratch) for every edge of row i. ga: scratch (lf1*C). */
ROW edge_inv_bwd_row(i64 i, const i64 C, i64 lf1, i64 ldY, const i64 *ptr, const i64 *jdx, const REAL *Y,
                     const REAL *V, const REAL *Qe, i64 ldQe, const REAL *Qr, i64 ldQr, const REAL *a, const REAL *b,
                     const REAL *g_eps, const REAL *g_rho, REAL *gY, REAL *gV, REAL *gQe, i64 ldgQe, REAL *gQr,
                     i64 ldgQr, REAL *gb_tmp, REAL *ga) {
    const i64 nf = lf1 * lf1, lc = lf1 * C;
    const REAL isq2 = (REAL)0.70710678118654752440;
    const REAL *Vi = V + i * nf * C;
    REAL *gVi = gV + i * nf * C;
    for (i64 k = 0; k < nf * C; ++k) gVi[k] = 0;
    const REAL *gr = g_rho + i * C;
    for (i64 e = ptr[i]; e < ptr[i + 1]; ++e) {
        const REAL *Ye = Y + e * ldY, *Vj = V + jdx[e] * nf * C;
        const REAL *q = Qe + e * ldQe, *qr = Qr + e * ldQr;
        const REAL *ae = a + e * lc, *be = b + e * lc;
        REAL *gqr = gQr + e * ldgQr, *gb = gb_tmp + e * lc;
        if (g_eps) {
            const REAL *gee = g_eps + e * C;
            REAL *gq = gQe + e * ldgQe;
            for (i64 l = 0; l < lf1; ++l) {
                for (i64 c = 0; c < C; ++c) {
                    const i64 k = l * C + c;
                    const REAL ge = gee[c] * isq2;
                    ga[k] = ge * q[k] + gr[c] * qr[k];
                    gb[k] = ge * q[lc + k];
                    gq[k] = ge * ae[k];
                    gq[lc + k] = ge * be[k];
                    gqr[k] = gr[c] * ae[k];
                }
            }
        } else {
            for (i64 k = 0; k < lc; ++k) {
                const REAL grc = gr[k % C];
                ga[k] = grc * qr[k];
                gqr[k] = grc * ae[k];
            }
        }
        REAL *gYe = gY + e * ldY;
        for (i64 l = 0; l < lf1; ++l) {
            const REAL *gal = ga + l * C, *gbl = gb + l * C;
            for (i64 m = l * l; m < (l + 1) * (l + 1); ++m) {
                const REAL *vim = Vi + m * C, *vjm = Vj + m * C;
                const REAL y = Ye[m];
                REAL *gvim = gVi + m * C;
                REAL s = 0;
                if (g_eps)
                    for (i64 c = 0; c < C; ++c) s += gal[c] * vim[c] + gbl[c] * vjm[c];
                else
                    for (i64 c = 0; c < C; ++c) s += gal[c] * vim[c];
                for (i64 c = 0; c < C; ++c) gvim[c] += gal[c] * y;
                gYe[m] = s;
            }
        }
    }
}

/* Neighbour side: gV[j] += sum_{e: j(e) = j} gb[e] Y[e], over the j-sorted CSR. */
ROW edge_inv_bwd_nbr_row(i64 jn, const i64 C, i64 lf1, i64 ldY, const i64 *ptr_j, const i64 *perm_j,
                         const REAL *Y, const REAL *gb_tmp, REAL *gV) {
    const i64 nf = lf1 * lf1, lc = lf1 * C;
    REAL *gVj = gV + jn * nf * C;
    for (i64 k = ptr_j[jn]; k < ptr_j[jn + 1]; ++k) {
        const i64 e = perm_j[k];
        add_expansion(C, lf1, Y + e * ldY, gb_tmp + e * lc, gVj);
    }
}

/* Backward of nemp_edge_inv_fwd. Writes gY[:, :nf] (other columns untouched), gV (all),
 * gQe slots 0/1 (row stride ldgQe; skipped if g_eps is NULL) and gQr (row stride ldgQr).
 * gb_tmp: scratch (E, lf1, C). */
void nemp_edge_inv_bwd(i64 N, i64 E, i64 C, i64 lf1, i64 ldY, const i64 *ptr, const i64 *idx, const i64 *jdx,
                       const i64 *ptr_j, const i64 *perm_j, const REAL *Y, const REAL *V, const REAL *Qe, i64 ldQe,
                       const REAL *Qr, i64 ldQr, const REAL *a, const REAL *b, const REAL *g_eps, const REAL *g_rho,
                       REAL *gY, REAL *gV, REAL *gQe, i64 ldgQe, REAL *gQr, i64 ldgQr, REAL *gb_tmp) {
    (void)E;
    (void)idx;
#pragma omp parallel
    {
        REAL *ga = (REAL *)malloc((size_t)(lf1 * C) * sizeof(REAL));
#define CALL(CC) edge_inv_bwd_row(i, CC, lf1, ldY, ptr, jdx, Y, V, Qe, ldQe, Qr, ldQr, a, b, g_eps, g_rho, gY, gV, \
                                  gQe, ldgQe, gQr, ldgQr, gb_tmp, ga)
#pragma omp for schedule(static)
        for (i64 i = 0; i < N; ++i) BY_CHANNELS(C, CALL)
#undef CALL
        free(ga);
        if (g_eps) {
#define CALL(CC) edge_inv_bwd_nbr_row(jn, CC, lf1, ldY, ptr_j, perm_j, Y, gb_tmp, gV)
#pragma omp for schedule(static)
            for (i64 jn = 0; jn < N; ++jn) BY_CHANNELS(C, CALL)
#undef CALL
        }
    }
}

/* ------------------------------------------------------------------------------------
 * Node densities (Eqs. 9 and 10) and the initial features (Eq. 5).
 *   U[i,lm,c] = sum_{e->i} beta[e,l,c] Z[j,lm,c]     (l < lf1; skipped if Z == NULL)
 *   A[i,lm,c] = sum_{e->i} alpha[e,l,c] Y[e,lm]      (l < LA)
 * beta, alpha: row strides ldB, ldA.
 * ---------------------------------------------------------------------------------- */
ROW node_dens_fwd_row(i64 i, const i64 C, i64 lf1, i64 LA, i64 ldY, const i64 *ptr, const i64 *jdx, const REAL *Y,
                      const REAL *Z, const REAL *beta, i64 ldB, const REAL *alpha, i64 ldA, REAL *U, REAL *A) {
    const i64 nf = lf1 * lf1, nA = LA * LA;
    REAL *Ui = U ? U + i * nf * C : NULL;
    REAL *Ai = A + i * nA * C;
    if (Ui) for (i64 k = 0; k < nf * C; ++k) Ui[k] = 0;
    for (i64 k = 0; k < nA * C; ++k) Ai[k] = 0;
    for (i64 e = ptr[i]; e < ptr[i + 1]; ++e) {
        const REAL *Ye = Y + e * ldY;
        if (Z) add_degree_scaled(C, lf1, beta + e * ldB, Z + jdx[e] * nf * C, Ui);
        add_expansion(C, LA, Ye, alpha + e * ldA, Ai);
    }
}

void nemp_node_dens_fwd(i64 N, i64 C, i64 lf1, i64 LA, i64 ldY, const i64 *ptr, const i64 *jdx, const REAL *Y,
                        const REAL *Z, const REAL *beta, i64 ldB, const REAL *alpha, i64 ldA, REAL *U, REAL *A) {
#define CALL(CC) node_dens_fwd_row(i, CC, lf1, LA, ldY, ptr, jdx, Y, Z, beta, ldB, alpha, ldA, U, A)
#pragma omp parallel for schedule(static)
    for (i64 i = 0; i < N; ++i) BY_CHANNELS(C, CALL)
#undef CALL
}

/* Backward of nemp_node_dens_fwd, centre side: gY[e, :nA], galpha[e] and gbeta[e]. */
ROW node_dens_bwd_row(i64 i, const i64 C, i64 lf1, i64 LA, i64 ldY, const i64 *ptr, const i64 *jdx, const REAL *Y,
                      const REAL *Z, const REAL *alpha, i64 ldA, const REAL *gU, const REAL *gA, REAL *gY,
                      REAL *gbeta, i64 ldgB, REAL *galpha, i64 ldgA) {
    const i64 nf = lf1 * lf1, nA = LA * LA;
    const REAL *gAi = gA + i * nA * C;
    const REAL *gUi = Z ? gU + i * nf * C : NULL;
    for (i64 e = ptr[i]; e < ptr[i + 1]; ++e) {
        const REAL *Ye = Y + e * ldY, *ae = alpha + e * ldA;
        REAL *gYe = gY + e * ldY, *gae = galpha + e * ldgA;
        for (i64 l = 0; l < LA; ++l) {
            const REAL *al = ae + l * C;
            REAL *gal = gae + l * C;
            for (i64 c = 0; c < C; ++c) gal[c] = 0;
            for (i64 m = l * l; m < (l + 1) * (l + 1); ++m) {
                const REAL y = Ye[m];
                const REAL *ga = gAi + m * C;
                REAL s = 0;
                for (i64 c = 0; c < C; ++c) {
                    gal[c] += ga[c] * y;
                    s += ga[c] * al[c];
                }
                gYe[m] = s;
            }
        }
        if (Z) {
            const REAL *Zj = Z + jdx[e] * nf * C;
            REAL *gbe = gbeta + e * ldgB;
            for (i64 l = 0; l < lf1; ++l) {
                REAL *gbl = gbe + l * C;
                for (i64 c = 0; c < C; ++c) gbl[c] = 0;
                for (i64 m = l * l; m < (l + 1) * (l + 1); ++m) {
                    const REAL *gu = gUi + m * C, *z = Zj + m * C;
                    for (i64 c = 0; c < C; ++c) gbl[c] += gu[c] * z[c];
                }
            }
        }
    }
}

/* Neighbour side: gZ[j] = sum_{e: j(e) = j} beta[e] gU[i(e)], over the j-sorted CSR. */
ROW node_dens_bwd_nbr_row(i64 jn, const i64 C, i64 lf1, const i64 *ptr_j, const i64 *perm_j, const i64 *idx,
                          const REAL *beta, i64 ldB, const REAL *gU, REAL *gZ) {
    const i64 nf = lf1 * lf1;
    REAL *gZj = gZ + jn * nf * C;
    for (i64 k = 0; k < nf * C; ++k) gZj[k] = 0;
    for (i64 k = ptr_j[jn]; k < ptr_j[jn + 1]; ++k) {
        const i64 e = perm_j[k];
        add_degree_scaled(C, lf1, beta + e * ldB, gU + idx[e] * nf * C, gZj);
    }
}

/* Backward of nemp_node_dens_fwd. Writes gY[:, :nA] (other columns untouched),
 * gbeta (row stride ldgB) and gZ (N, nf, C) if Z != NULL, galpha (row stride ldgA).
 * gU may be NULL when Z is NULL. */
void nemp_node_dens_bwd(i64 N, i64 C, i64 lf1, i64 LA, i64 ldY, const i64 *ptr, const i64 *idx, const i64 *jdx,
                        const i64 *ptr_j, const i64 *perm_j, const REAL *Y, const REAL *Z, const REAL *beta, i64 ldB,
                        const REAL *alpha, i64 ldA, const REAL *gU, const REAL *gA, REAL *gY, REAL *gbeta,
                        i64 ldgB, REAL *galpha, i64 ldgA, REAL *gZ) {
#pragma omp parallel
    {
#define CALL(CC) node_dens_bwd_row(i, CC, lf1, LA, ldY, ptr, jdx, Y, Z, alpha, ldA, gU, gA, gY, gbeta, ldgB, galpha, ldgA)
#pragma omp for schedule(static)
        for (i64 i = 0; i < N; ++i) BY_CHANNELS(C, CALL)
#undef CALL
        if (Z) {
#define CALL(CC) node_dens_bwd_nbr_row(jn, CC, lf1, ptr_j, perm_j, idx, beta, ldB, gU, gZ)
#pragma omp for schedule(static)
            for (i64 jn = 0; jn < N; ++jn) BY_CHANNELS(C, CALL)
#undef CALL
        }
    }
}

/* ------------------------------------------------------------------------------------
 * Fused MLP (ScaledMLP, deep form) for inference with first derivatives.
 *   h = x Win (+ bin); per block: r = h, nl times h = silu(h) Wh_k (+ bh_k),
 *   h = (h + r) / sqrt(2); y = silu(h) Wout (+ bout)
 * Weights come pre-scaled by their gains: Win (din, F), Wh (nh, F, F), Wout (F, dout).
 * Rows are processed in blocks of LANES: every vector lane holds one row, so each
 * weight is a broadcast scalar and the F (or dout) outputs are independent
 * accumulators; no horizontal sums, no long dependency chains. The forward stores
 * D = silu'(z_k) for the nh + 1 SiLU inputs z_k in block layout (E/LANES, nh+1, F,
 * LANES), so the backward is a plain reverse sweep: no exponential, no recomputation.
 * ---------------------------------------------------------------------------------- */
#define MLP_MAX_WIDTH 256
#define MLP_MAX_IO 1024
#define LANES 16

/* exp(x) with Cody-Waite reduction and a Taylor polynomial (degree 7 in float, 12 in
 * double, truncation below one ulp on |r| <= ln2/2): only arithmetic, so loops calling
 * it vectorise. |x| is clamped so that 2^n stays a normal number. The fused MLP built on
 * it matches PyTorch's to 1e-13 in float64 (tests/test_kernels.py). */
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define REAL_IS_FLOAT_float 1
#define REAL_IS_FLOAT_double 0
#if CAT(REAL_IS_FLOAT_, REAL)
typedef int32_t ireal;
#define EXP_CLAMP 86.0f
#define LN2_HI 0.693359375f
#define LN2_LO -2.12194440e-4f
#define MANT_BITS 23
#define EXP_BIAS 127
#define ROUND_MAGIC 12582912.0f /* 1.5 * 2^23 */
#else
typedef int64_t ireal;
#define EXP_CLAMP 700.0
#define LN2_HI 6.93147180369123816490e-01
#define LN2_LO 1.90821492927058770002e-10
#define MANT_BITS 52
#define EXP_BIAS 1023
#define ROUND_MAGIC 6755399441055744.0 /* 1.5 * 2^52 */
#endif
typedef union { REAL f; ireal i; } real_bits;

static inline REAL vexp(REAL x) {
    x = x > (REAL)EXP_CLAMP ? (REAL)EXP_CLAMP : (x < -(REAL)EXP_CLAMP ? -(REAL)EXP_CLAMP : x);
    const REAL n = (x * (REAL)1.4426950408889634074 + (REAL)ROUND_MAGIC) - (REAL)ROUND_MAGIC; /* nearest integer */
    const REAL r = (x - n * (REAL)LN2_HI) - n * (REAL)LN2_LO;
    REAL p;
#if CAT(REAL_IS_FLOAT_, REAL)
    p = (REAL)(1.0 / 5040.0);
#else
    p = 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
#endif
    p = p * r + (REAL)(1.0 / 720.0);
    p = p * r + (REAL)(1.0 / 120.0);
    p = p * r + (REAL)(1.0 / 24.0);
    p = p * r + (REAL)(1.0 / 6.0);
    p = p * r + (REAL)0.5;
    p = p * r + (REAL)1.0;
    p = p * r + (REAL)1.0;
    real_bits scale;
    scale.i = ((ireal)n + EXP_BIAS) << MANT_BITS;
    return p * scale.f;
}

/* v = silu(v), d = silu'(v) over a (F, LANES) block (d may be NULL) */
ROW silu_block(const i64 F, REAL (*v)[LANES], REAL (*d)[LANES]) {
    for (i64 o = 0; o < F; ++o) {
        #pragma omp simd
        for (i64 q = 0; q < LANES; ++q) {
            const REAL z = v[o][q];
            const REAL sg = (REAL)1 / ((REAL)1 + vexp(-z));
            v[o][q] = z * sg;
            if (d) d[o][q] = sg * ((REAL)1 + z * ((REAL)1 - sg));
        }
    }
}

/* out[o0:o0+nt] = bias + sum_p W[p, o] in[p] for a tile of nt <= TILE outputs: the
 * nt accumulators stay in registers while the inputs stream past once. W (n_in, n_out)
 * row-major when wt == 0; with wt != 0 W is read transposed, W[o, p] of (n_out, n_in). */
#define TILE 8
ROW dense_tile(const i64 n_in, const i64 n_out, i64 o0, const i64 nt, const int wt, const REAL *W, const REAL *bias,
               REAL (*in)[LANES], REAL (*out)[LANES]) {
    REAL acc[TILE][LANES];
    for (i64 o = 0; o < nt; ++o) {
        const REAL b = bias ? bias[o0 + o] : 0;
        #pragma omp simd
        for (i64 q = 0; q < LANES; ++q) acc[o][q] = b;
    }
    for (i64 p = 0; p < n_in; ++p)
        for (i64 o = 0; o < nt; ++o) {
            const REAL w = wt ? W[(o0 + o) * n_in + p] : W[p * n_out + o0 + o];
            #pragma omp simd
            for (i64 q = 0; q < LANES; ++q) acc[o][q] += w * in[p][q];
        }
    for (i64 o = 0; o < nt; ++o) {
        #pragma omp simd
        for (i64 q = 0; q < LANES; ++q) out[o0 + o][q] = acc[o][q];
    }
}

/* out[o] = bias[o] + sum_p W[p, o] in[p] over a block of LANES rows (see dense_tile) */
ROW dense_block(const i64 n_in, const i64 n_out, const int wt, const REAL *W, const REAL *bias, REAL (*in)[LANES],
                REAL (*out)[LANES]) {
    i64 o0 = 0;
    for (; o0 + TILE <= n_out; o0 += TILE) dense_tile(n_in, n_out, o0, TILE, wt, W, bias, in, out);
    for (; o0 < n_out; ++o0) dense_tile(n_in, n_out, o0, 1, wt, W, bias, in, out);
}

ROW mlp_fwd_block(i64 blk, const i64 F, i64 E, i64 din, i64 dout, i64 nb, i64 nl, const REAL *x, i64 ldx,
                  const REAL *Win, const REAL *bin, const REAL *Wh, const REAL *bh, const REAL *Wout,
                  const REAL *bout, REAL *y, REAL *D) {
    REAL io[MLP_MAX_IO][LANES], h[MLP_MAX_WIDTH][LANES], r[MLP_MAX_WIDTH][LANES], s[MLP_MAX_WIDTH][LANES];
    const REAL isq2 = (REAL)0.70710678118654752440;
    const i64 nh = nb * nl, e0 = blk * LANES, n = E - e0 < LANES ? E - e0 : LANES;
    REAL(*Db)[LANES] = D ? (REAL(*)[LANES])(D + blk * (nh + 1) * F * LANES) : NULL;
    for (i64 q = 0; q < LANES; ++q)
        for (i64 k = 0; k < din; ++k) io[k][q] = q < n ? x[(e0 + q) * ldx + k] : 0;
    dense_block(din, F, 0, Win, bin, io, h);
    i64 kk = 0;
    for (i64 b = 0; b < nb; ++b) {
        memcpy(r, h, (size_t)F * sizeof r[0]);
        for (i64 l = 0; l < nl; ++l, ++kk) {
            memcpy(s, h, (size_t)F * sizeof s[0]);
            silu_block(F, s, Db ? Db + kk * F : NULL);
            dense_block(F, F, 0, Wh + kk * F * F, bh ? bh + kk * F : NULL, s, h);
        }
        for (i64 o = 0; o < F; ++o) {
            #pragma omp simd
            for (i64 q = 0; q < LANES; ++q) h[o][q] = (h[o][q] + r[o][q]) * isq2;
        }
    }
    silu_block(F, h, Db ? Db + nh * F : NULL);
    dense_block(F, dout, 0, Wout, bout, h, io);
    for (i64 q = 0; q < n; ++q)
        for (i64 o = 0; o < dout; ++o) y[(e0 + q) * dout + o] = io[o][q];
}

ROW mlp_bwd_block(i64 blk, const i64 F, i64 E, i64 din, i64 dout, i64 nb, i64 nl, const REAL *Win,
                  const REAL *Wh, const REAL *Wout, const REAL *D, const REAL *gy, REAL *gx) {
    REAL io[MLP_MAX_IO][LANES], g[MLP_MAX_WIDTH][LANES], gr[MLP_MAX_WIDTH][LANES], gs[MLP_MAX_WIDTH][LANES];
    const REAL isq2 = (REAL)0.70710678118654752440;
    const i64 nh = nb * nl, e0 = blk * LANES, n = E - e0 < LANES ? E - e0 : LANES;
    const REAL(*Db)[LANES] = (const REAL(*)[LANES])(D + blk * (nh + 1) * F * LANES);
    for (i64 q = 0; q < LANES; ++q)
        for (i64 o = 0; o < dout; ++o) io[o][q] = q < n ? gy[(e0 + q) * dout + o] : 0;
    dense_block(dout, F, 1, Wout, NULL, io, g);
    for (i64 p = 0; p < F; ++p) {
        #pragma omp simd
        for (i64 q = 0; q < LANES; ++q) g[p][q] *= Db[nh * F + p][q];
    }
    i64 kk = nh;
    for (i64 b = nb - 1; b >= 0; --b) {
        for (i64 p = 0; p < F; ++p) {
            #pragma omp simd
            for (i64 q = 0; q < LANES; ++q) { g[p][q] *= isq2; gr[p][q] = g[p][q]; }
        }
        for (i64 l = nl - 1; l >= 0; --l) {
            --kk;
            dense_block(F, F, 1, Wh + kk * F * F, NULL, g, gs);
            for (i64 p = 0; p < F; ++p) {
                #pragma omp simd
                for (i64 q = 0; q < LANES; ++q) g[p][q] = gs[p][q] * Db[kk * F + p][q];
            }
        }
        for (i64 p = 0; p < F; ++p) {
            #pragma omp simd
            for (i64 q = 0; q < LANES; ++q) g[p][q] += gr[p][q];
        }
    }
    dense_block(F, din, 1, Win, NULL, g, io);
    for (i64 q = 0; q < n; ++q)
        for (i64 k = 0; k < din; ++k) gx[(e0 + q) * din + k] = io[k][q];
}

#define BY_WIDTH(F, CALL)     \
    switch (F) {              \
    case 16: CALL(16); break; \
    case 32: CALL(32); break; \
    case 64: CALL(64); break; \
    default: CALL(F); break;  \
    }

/* Returns 0, or -1 if a width exceeds MLP_MAX_WIDTH / MLP_MAX_IO (nothing written).
 * D: NULL or (ceil(E / LANES), nb * nl + 1, F, LANES). */
int nemp_mlp_fwd(i64 E, i64 din, i64 F, i64 dout, i64 nb, i64 nl, const REAL *x, i64 ldx, const REAL *Win,
                 const REAL *bin, const REAL *Wh, const REAL *bh, const REAL *Wout, const REAL *bout, REAL *y,
                 REAL *D) {
    if (F > MLP_MAX_WIDTH || din > MLP_MAX_IO || dout > MLP_MAX_IO) return -1;
    const i64 nblk = (E + LANES - 1) / LANES;
#define CALL(FF) mlp_fwd_block(blk, FF, E, din, dout, nb, nl, x, ldx, Win, bin, Wh, bh, Wout, bout, y, D)
#pragma omp parallel for schedule(static)
    for (i64 blk = 0; blk < nblk; ++blk) BY_WIDTH(F, CALL)
#undef CALL
    return 0;
}

int nemp_mlp_bwd(i64 E, i64 din, i64 F, i64 dout, i64 nb, i64 nl, const REAL *Win, const REAL *Wh,
                 const REAL *Wout, const REAL *D, const REAL *gy, REAL *gx) {
    if (F > MLP_MAX_WIDTH || din > MLP_MAX_IO || dout > MLP_MAX_IO) return -1;
    const i64 nblk = (E + LANES - 1) / LANES;
#define CALL(FF) mlp_bwd_block(blk, FF, E, din, dout, nb, nl, Win, Wh, Wout, D, gy, gx)
#pragma omp parallel for schedule(static)
    for (i64 blk = 0; blk < nblk; ++blk) BY_WIDTH(F, CALL)
#undef CALL
    return 0;
}
