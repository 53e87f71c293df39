/*
 * Fused CPU kernels for the equivariant edge operations of NEMP (ase_nemp.model.kernels).
 *
 * Compiled twice, with -DREAL=float and -DREAL=double, into two shared libraries and
 * called through ctypes. Every kernel works on edges sorted by their centre atom i
 * (CSR row pointer `ptr`). Scatters onto the neighbour j run in edge order; on several
 * threads each thread takes every edge but writes only the rows it owns (own_rows), so
 * no two threads write the same row and the summation order does not depend on the
 * number of threads.
 *
 * Layouts (row-major, C = channels, lf1 = feat_lmax + 1, nf = lf1^2, L1 = sh_lmax + 1,
 * nL = L1^2; component lm of degree l is flattened as l^2 + l + m):
 *   Y (E, ldY)            normalised spherical harmonics, row stride ldY >= nL
 *   V, Z, gV, gZ (N, nf, C), U (N, nf, C), A (N, nL, C)
 *   coefficient tensors (E, rows, C) with a row stride given explicitly (views of MLP outputs)
 */
#include <math.h>
#include <pthread.h>
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

/* Return codes of the kernels that can fail (the others cannot): NEMP_OK, or an error
 * after which the outputs are not to be used. */
#define NEMP_OK 0
#define NEMP_BAD_SIZE -1
#define NEMP_NO_MEMORY -2

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

/* Threads of the kernels' parallel regions, per calling thread (0: OpenMP's default).
 * Kept here and passed in num_threads clauses rather than set with omp_set_num_threads,
 * which would also change the thread count of every other OpenMP user in the process
 * (PyTorch shares the runtime). */
static _Thread_local int nemp_threads = 0;

static int nemp_nt(void) {
#ifdef _OPENMP
    return nemp_threads > 0 ? nemp_threads : omp_get_max_threads();
#else
    return 1;
#endif
}

int nemp_set_threads(int n) {
    if (n > 0) nemp_threads = n;
    return nemp_nt();
}

/* 1 when the kernels run on one thread: the backward passes then scatter onto the
 * neighbour j directly, in edge order */
static int single_thread(void) {
    return nemp_nt() == 1;
}

/* The rows [*lo, *hi) of n that the calling thread of a parallel region owns: on several
 * threads each backward pass scatters onto the neighbours of every edge, in edge order,
 * but only onto its own rows, so every row sums in the order one thread would. */
static inline void own_rows(i64 n, i64 *lo, i64 *hi) {
#ifdef _OPENMP
    const i64 t = omp_get_thread_num(), T = omp_get_num_threads();
#else
    const i64 t = 0, T = 1;
#endif
    *lo = n * t / T;
    *hi = n * (t + 1) / T;
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
#pragma omp parallel for schedule(static) num_threads(nemp_nt())
    for (i64 i = 0; i < N; ++i) BY_CHANNELS(C, CALL)
#undef CALL
}

/* Backward of nemp_edge_inv_fwd, centre side: gY[e, :nf], gV[i], gQe, gQr and the
 * neighbour-side gradient gb[e] (scratch) for every edge of row i. ga: scratch (lf1*C). */
ROW edge_inv_bwd_row(i64 i, const i64 C, i64 lf1, i64 ldY, const i64 *ptr, const i64 *jdx, const REAL *Y,
                     const REAL *V, const REAL *Qe, i64 ldQe, const REAL *Qr, i64 ldQr, const REAL *a, const REAL *b,
                     const REAL *g_eps, const REAL *g_rho, REAL *gY, REAL *gV, REAL *gQe, i64 ldgQe, REAL *gQr,
                     i64 ldgQr, REAL *gb_tmp, REAL *ga, REAL *gb_one, REAL *gVn) {
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
        REAL *gqr = gQr + e * ldgQr, *gb = gVn ? gb_one : gb_tmp + e * lc;
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
        if (gVn && g_eps) add_expansion(C, lf1, Ye, gb, gVn + jdx[e] * nf * C);
    }
}

/* Neighbour side on several threads: gVn[j] = sum_{e: j(e) = j} gb[e] Y[e] in edge order
 * for the rows j in [lo, hi), then gV[j] += gVn[j], as the single-thread pass does. */
ROW edge_inv_bwd_nbr_rows(i64 lo, i64 hi, i64 E, const i64 C, i64 lf1, i64 ldY, const i64 *jdx, const REAL *Y,
                          const REAL *gb_tmp, REAL *gV, REAL *gVn) {
    const i64 nfc = lf1 * lf1 * C, lc = lf1 * C;
    if (hi <= lo) return;
    memset(gVn + lo * nfc, 0, (size_t)((hi - lo) * nfc) * sizeof(REAL));
    for (i64 e = 0; e < E; ++e) {
        const i64 j = jdx[e];
        if (j >= lo && j < hi) add_expansion(C, lf1, Y + e * ldY, gb_tmp + e * lc, gVn + j * nfc);
    }
    for (i64 k = lo * nfc; k < hi * nfc; ++k) gV[k] += gVn[k];
}

/* Backward of nemp_edge_inv_fwd. Writes gY[:, :nf] (other columns untouched), gV (all),
 * gQe slots 0/1 (row stride ldgQe; skipped if g_eps is NULL) and gQr (row stride ldgQr).
 * Scratch: gVn (N, nf, C), and gb_tmp (E, lf1, C) on several threads. Either way
 * gV[x] = (centre-side sum) + (neighbour-side sum in edge order): the result does not
 * depend on the number of threads. */
int nemp_edge_inv_bwd(i64 N, i64 E, i64 C, i64 lf1, i64 ldY, const i64 *ptr, const i64 *jdx,
                       const REAL *Y, const REAL *V, const REAL *Qe, i64 ldQe,
                       const REAL *Qr, i64 ldQr, const REAL *a, const REAL *b, const REAL *g_eps, const REAL *g_rho,
                       REAL *gY, REAL *gV, REAL *gQe, i64 ldgQe, REAL *gQr, i64 ldgQr, REAL *gb_tmp, REAL *gVn) {
    const i64 nfc = lf1 * lf1 * C;
    if (single_thread()) {
        REAL *ga = (REAL *)malloc((size_t)(2 * lf1 * C) * sizeof(REAL));
        if (!ga) return NEMP_NO_MEMORY;
        REAL *gb = ga + lf1 * C;
        REAL *nb = g_eps ? gVn : NULL;
        if (nb) memset(nb, 0, (size_t)(N * nfc) * sizeof(REAL));
#define CALL(CC) edge_inv_bwd_row(i, CC, lf1, ldY, ptr, jdx, Y, V, Qe, ldQe, Qr, ldQr, a, b, g_eps, g_rho, gY, gV, \
                                  gQe, ldgQe, gQr, ldgQr, gb_tmp, ga, gb, nb)
        for (i64 i = 0; i < N; ++i) BY_CHANNELS(C, CALL)
#undef CALL
        if (nb)
            for (i64 k = 0; k < N * nfc; ++k) gV[k] += nb[k];
        free(ga);
        return NEMP_OK;
    }
    int failed = 0;
#pragma omp parallel num_threads(nemp_nt()) reduction(|| : failed)
    { /* every thread meets both loops (OpenMP requires it); one without scratch skips its rows */
        REAL *ga = (REAL *)malloc((size_t)(lf1 * C) * sizeof(REAL));
        failed = ga == NULL;
#define CALL(CC) edge_inv_bwd_row(i, CC, lf1, ldY, ptr, jdx, Y, V, Qe, ldQe, Qr, ldQr, a, b, g_eps, g_rho, gY, gV, \
                                  gQe, ldgQe, gQr, ldgQr, gb_tmp, ga, NULL, NULL)
#pragma omp for schedule(static)
        for (i64 i = 0; i < N; ++i)
            if (ga) BY_CHANNELS(C, CALL)
#undef CALL
        if (g_eps && ga) { /* after the loop's barrier: every gb_tmp row is written */
            i64 lo, hi;
            own_rows(N, &lo, &hi);
#define CALL(CC) edge_inv_bwd_nbr_rows(lo, hi, E, CC, lf1, ldY, jdx, Y, gb_tmp, gV, gVn)
            BY_CHANNELS(C, CALL)
#undef CALL
        }
        free(ga);
    }
    return failed ? NEMP_NO_MEMORY : NEMP_OK;
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
#pragma omp parallel for schedule(static) num_threads(nemp_nt())
    for (i64 i = 0; i < N; ++i) BY_CHANNELS(C, CALL)
#undef CALL
}

/* Backward of nemp_node_dens_fwd, centre side: gY[e, :nA], galpha[e] and gbeta[e]. */
ROW node_dens_bwd_row(i64 i, const i64 C, i64 lf1, i64 LA, i64 ldY, const i64 *ptr, const i64 *jdx, const REAL *Y,
                      const REAL *Z, const REAL *beta, i64 ldB, const REAL *alpha, i64 ldA, const REAL *gU,
                      const REAL *gA, REAL *gY, REAL *gbeta, i64 ldgB, REAL *galpha, i64 ldgA, REAL *gZ) {
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
            if (gZ) add_degree_scaled(C, lf1, beta + e * ldB, gUi, gZ + jdx[e] * nf * C);
        }
    }
}

/* Neighbour side on several threads: gZ[j] = sum_{e: j(e) = j} beta[e] gU[i(e)] in edge
 * order for the rows j in [lo, hi), as the single-thread pass sums them. */
ROW node_dens_bwd_nbr_rows(i64 lo, i64 hi, i64 N, const i64 C, i64 lf1, const i64 *ptr, const i64 *jdx,
                           const REAL *beta, i64 ldB, const REAL *gU, REAL *gZ) {
    const i64 nfc = lf1 * lf1 * C;
    if (hi <= lo) return;
    memset(gZ + lo * nfc, 0, (size_t)((hi - lo) * nfc) * sizeof(REAL));
    for (i64 i = 0; i < N; ++i)
        for (i64 e = ptr[i]; e < ptr[i + 1]; ++e) {
            const i64 j = jdx[e];
            if (j >= lo && j < hi) add_degree_scaled(C, lf1, beta + e * ldB, gU + i * nfc, gZ + j * nfc);
        }
}

/* Backward of nemp_node_dens_fwd. Writes gY[:, :nA] (other columns untouched),
 * gbeta (row stride ldgB) and gZ (N, nf, C) if Z != NULL, galpha (row stride ldgA).
 * gU may be NULL when Z is NULL. */
void nemp_node_dens_bwd(i64 N, i64 C, i64 lf1, i64 LA, i64 ldY, const i64 *ptr, const i64 *jdx,
                        const REAL *Y, const REAL *Z, const REAL *beta, i64 ldB,
                        const REAL *alpha, i64 ldA, const REAL *gU, const REAL *gA, REAL *gY, REAL *gbeta,
                        i64 ldgB, REAL *galpha, i64 ldgA, REAL *gZ) {
    if (single_thread()) { /* gZ[j] accumulates in edge order, as node_dens_bwd_nbr_rows sums it */
        if (Z) memset(gZ, 0, (size_t)(N * lf1 * lf1 * C) * sizeof(REAL));
#define CALL(CC) node_dens_bwd_row(i, CC, lf1, LA, ldY, ptr, jdx, Y, Z, beta, ldB, alpha, ldA, gU, gA, gY, gbeta, ldgB, \
                                   galpha, ldgA, Z ? gZ : NULL)
        for (i64 i = 0; i < N; ++i) BY_CHANNELS(C, CALL)
#undef CALL
        return;
    }
#pragma omp parallel num_threads(nemp_nt())
    {
#define CALL(CC) node_dens_bwd_row(i, CC, lf1, LA, ldY, ptr, jdx, Y, Z, beta, ldB, alpha, ldA, gU, gA, gY, gbeta, ldgB, \
                                   galpha, ldgA, NULL)
#pragma omp for schedule(static)
        for (i64 i = 0; i < N; ++i) BY_CHANNELS(C, CALL)
#undef CALL
        if (Z) { /* after the loop's barrier */
            i64 lo, hi;
            own_rows(N, &lo, &hi);
#define CALL(CC) node_dens_bwd_nbr_rows(lo, hi, N, CC, lf1, ptr, jdx, beta, ldB, gU, gZ)
            BY_CHANNELS(C, CALL)
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

/* Taylor coefficients of exp(r), highest degree first (7 in float, 12 in double) */
static const REAL EXP_POLY[] = {
#if !CAT(REAL_IS_FLOAT_, REAL)
    1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0,
#endif
    (REAL)(1.0 / 5040.0), (REAL)(1.0 / 720.0), (REAL)(1.0 / 120.0), (REAL)(1.0 / 24.0), (REAL)(1.0 / 6.0),
    (REAL)0.5, (REAL)1.0, (REAL)1.0};
#define EXP_TERMS ((int)(sizeof EXP_POLY / sizeof EXP_POLY[0]))

static inline REAL vexp(REAL x) {
    x = x > (REAL)EXP_CLAMP ? (REAL)EXP_CLAMP : (x < -(REAL)EXP_CLAMP ? -(REAL)EXP_CLAMP : x);
    const REAL n = (x * (REAL)1.4426950408889634074 + (REAL)ROUND_MAGIC) - (REAL)ROUND_MAGIC; /* nearest integer */
    const REAL r = (x - n * (REAL)LN2_HI) - n * (REAL)LN2_LO;
    REAL p = EXP_POLY[0];
#pragma GCC unroll 16
    for (int k = 1; k < EXP_TERMS; ++k) p = p * r + EXP_POLY[k];
    real_bits scale;
    scale.i = ((ireal)n + EXP_BIAS) << MANT_BITS;
    return p * scale.f;
}

/* With AVX-512 or AVX2 the SiLU works on whole vectors (VW numbers of REAL: 16 floats or
 * 8 doubles with AVX-512, 8 or 4 with AVX2), written once through VOP(op), e.g.
 * VOP(fmadd) = _mm512_fmadd_ps or _mm256_fmadd_pd; the dense tiles (AVX2) and block
 * transposes below use intrinsics too. Elsewhere the portable loops (vectorised by the
 * compiler) run. Three steps differ between the two instruction sets:
 *   VROUND(x)      x rounded to the nearest integer;
 *   pow2_mul(p, n) p * 2^n for integral n with 2^n a normal number (vexp's clamp);
 *   vrecip(d)      1 / d for d >= 1.
 * AVX-512 has them as single instructions (roundscale, scalef, rcp14 refined by Newton
 * steps); AVX2 builds 2^n in the exponent bits and divides (on a Zen 3 core as fast as
 * rcp with Newton steps, and exactly rounded). On AVX2 the portable loop stayed scalar
 * (vexp's integer step, the division): on a Zen 3 core the six water-small MLPs' forward
 * took 1,700-2,100 ns per row, with these 580-690 (float32, one thread, 61,440 rows). */
#if defined(__AVX512F__)
#include <immintrin.h>
#if CAT(REAL_IS_FLOAT_, REAL)
#define AVX512_FLOAT 1
typedef __m512 vreal;
#define VW 16
#define VOP(op) _mm512_##op##_ps
#define NEWTON_STEPS 1 /* rcp14's 2^-14 -> 2^-28: about one ulp of a float */
#else
typedef __m512d vreal;
#define VW 8
#define VOP(op) _mm512_##op##_pd
#define NEWTON_STEPS 2 /* 2^-14 -> 2^-28 -> about one ulp of a double */
#endif
#define VROUND(x) VOP(roundscale)(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
static inline vreal pow2_mul(vreal p, vreal n) { return VOP(scalef)(p, n); }
static inline vreal vrecip(vreal d) {
    const vreal two = VOP(set1)((REAL)2);
    vreal s = VOP(rcp14)(d);
    for (int k = 0; k < NEWTON_STEPS; ++k) s = VOP(mul)(s, VOP(fnmadd)(d, s, two));
    return s;
}
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define VROUND(x) VOP(round)(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#if CAT(REAL_IS_FLOAT_, REAL)
typedef __m256 vreal;
#define VW 8
#define VOP(op) _mm256_##op##_ps
static inline vreal pow2_mul(vreal p, vreal n) {
    const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(EXP_BIAS));
    return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(e, MANT_BITS)));
}
#else
typedef __m256d vreal;
#define VW 4
#define VOP(op) _mm256_##op##_pd
static inline vreal pow2_mul(vreal p, vreal n) {
    const __m256i e = _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(n)), _mm256_set1_epi64x(EXP_BIAS));
    return _mm256_mul_pd(p, _mm256_castsi256_pd(_mm256_slli_epi64(e, MANT_BITS)));
}
#endif
static inline vreal vrecip(vreal d) { return VOP(div)(VOP(set1)((REAL)1), d); }
#define AVX2_VEC 1
#endif

#ifdef VW
/* sigmoid(z) = 1 / (1 + exp(-z)) for VW numbers: vexp's clamp, reduction and polynomial */
static inline vreal sigmoid_v(vreal z) {
    const vreal x = VOP(max)(VOP(min)(VOP(sub)(VOP(setzero)(), z), VOP(set1)(EXP_CLAMP)), VOP(set1)(-EXP_CLAMP));
    const vreal n = VROUND(VOP(mul)(x, VOP(set1)((REAL)1.4426950408889634074)));
    vreal r = VOP(fnmadd)(n, VOP(set1)(LN2_HI), x);
    r = VOP(fnmadd)(n, VOP(set1)(LN2_LO), r);
    vreal p = VOP(set1)(EXP_POLY[0]);
    for (int k = 1; k < EXP_TERMS; ++k) p = VOP(fmadd)(p, r, VOP(set1)(EXP_POLY[k]));
    return vrecip(VOP(add)(pow2_mul(p, n), VOP(set1)((REAL)1)));
}
#endif

/* v = silu(v), d = silu'(v) over a (F, LANES) block (d may be NULL) */
ROW silu_block(const i64 F, REAL (*restrict v)[LANES], REAL (*restrict d)[LANES]) {
#ifdef VW
    const vreal one = VOP(set1)((REAL)1);
    for (i64 o = 0; o < F; ++o)
        for (i64 q = 0; q < LANES; q += VW) {
            const vreal z = VOP(loadu)(v[o] + q), sg = sigmoid_v(z);
            VOP(storeu)(v[o] + q, VOP(mul)(z, sg));
            if (d) VOP(storeu)(d[o] + q, VOP(mul)(sg, VOP(fmadd)(z, VOP(sub)(one, sg), one)));
        }
#else
    for (i64 o = 0; o < F; ++o) {
        #pragma omp simd
        for (i64 q = 0; q < LANES; ++q) {
            const REAL z = v[o][q];
            const REAL sg = (REAL)1 / ((REAL)1 + vexp(-z));
            v[o][q] = z * sg;
            if (d) d[o][q] = sg * ((REAL)1 + z * ((REAL)1 - sg));
        }
    }
#endif
}

/* out[o0:o0+nt] = bias + sum_p W[p, o] in[p] for a tile of nt <= TILE outputs: the
 * nt accumulators stay in registers while the inputs stream past once. W (n_in, n_out)
 * row-major when wt == 0; with wt != 0 W is read transposed, W[o, p] of (n_out, n_in).
 * With AVX2's 16 vector registers the accumulators are written out as vectors (GCC kept
 * the plain loops' 8 x 16 accumulators in memory there), as many as the registers hold;
 * output counts that TILE does not divide end with tiles of 4, 2 and 1. */
#ifdef AVX2_VEC
#if VW == 8
#define TILE 6 /* float: 12 accumulators, 2 inputs and a weight fill 15 of the 16 registers */
#else
#define TILE 2 /* double: 8 accumulators (3 outputs were slower on water-small's 16-wide layers) */
#endif
#define NV (LANES / VW)
ROW dense_tile(const i64 n_in, const i64 n_out, i64 o0, const i64 nt, const int wt, const REAL *restrict W,
               const REAL *restrict bias, REAL (*restrict in)[LANES], REAL (*restrict out)[LANES]) {
    vreal acc[TILE][NV];
#pragma GCC unroll 8
    for (i64 o = 0; o < nt; ++o) {
        const vreal b = VOP(set1)(bias ? bias[o0 + o] : (REAL)0);
#pragma GCC unroll 8
        for (i64 v = 0; v < NV; ++v) acc[o][v] = b;
    }
    for (i64 p = 0; p < n_in; ++p) {
        vreal x[NV];
#pragma GCC unroll 8
        for (i64 v = 0; v < NV; ++v) x[v] = VOP(loadu)(in[p] + v * VW);
#pragma GCC unroll 8
        for (i64 o = 0; o < nt; ++o) {
            const vreal w = VOP(set1)(wt ? W[(o0 + o) * n_in + p] : W[p * n_out + o0 + o]);
#pragma GCC unroll 8
            for (i64 v = 0; v < NV; ++v) acc[o][v] = VOP(fmadd)(w, x[v], acc[o][v]);
        }
    }
#pragma GCC unroll 8
    for (i64 o = 0; o < nt; ++o)
#pragma GCC unroll 8
        for (i64 v = 0; v < NV; ++v) VOP(storeu)(out[o0 + o] + v * VW, acc[o][v]);
}
#else
#define TILE 8
ROW dense_tile(const i64 n_in, const i64 n_out, i64 o0, const i64 nt, const int wt, const REAL *restrict W,
               const REAL *restrict bias, REAL (*restrict in)[LANES], REAL (*restrict out)[LANES]) {
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
#endif

/* out[o] = bias[o] + sum_p W[p, o] in[p] over a block of LANES rows (see dense_tile) */
ROW dense_block(const i64 n_in, const i64 n_out, const int wt, const REAL *restrict W, const REAL *restrict bias,
                REAL (*restrict in)[LANES], REAL (*restrict out)[LANES]) {
    i64 o0 = 0;
    for (; o0 + TILE <= n_out; o0 += TILE) dense_tile(n_in, n_out, o0, TILE, wt, W, bias, in, out);
#if defined(AVX2_VEC) && TILE > 4
    if (o0 + 4 <= n_out) { dense_tile(n_in, n_out, o0, 4, wt, W, bias, in, out); o0 += 4; }
    if (o0 + 2 <= n_out) { dense_tile(n_in, n_out, o0, 2, wt, W, bias, in, out); o0 += 2; }
#endif
    for (; o0 < n_out; ++o0) dense_tile(n_in, n_out, o0, 1, wt, W, bias, in, out);
}

/* Row-major (rows, ld) <-> block layout [k][LANES]: io[k][q] = x[(e0 + q) * ld + k] for the
 * n <= LANES rows of a block (rows past n read as 0). With AVX-512 in float, 16 x 16
 * tiles are transposed in registers; with AVX2, block_to_rows transposes VW x VW tiles
 * (its scalar stores took a fifth of the MLP forward in float on a Zen 3 core;
 * rows_to_block gained nothing so); otherwise element by element. */
#ifdef AVX512_FLOAT
#define HAVE_TILE_TRANSPOSE 1
static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int h = 0; h < 16; h += 8)
        for (int i = 0; i < 4; ++i) {
            t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
            t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xDD);
        }
    for (int i = 0; i < 8; ++i) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    }
}
#endif

#ifdef AVX2_VEC
/* r[k][q] <- r[q][k]: a VW x VW transpose in registers */
static inline void transpose_vw(vreal r[VW]) {
    vreal t[VW];
#if CAT(REAL_IS_FLOAT_, REAL)
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
        t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
        t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
    }
    for (int i = 0; i < 8; ++i) r[i] = t[i];
#else
    t[0] = _mm256_unpacklo_pd(r[0], r[1]);
    t[1] = _mm256_unpackhi_pd(r[0], r[1]);
    t[2] = _mm256_unpacklo_pd(r[2], r[3]);
    t[3] = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t[0], t[2], 0x20);
    r[1] = _mm256_permute2f128_pd(t[1], t[3], 0x20);
    r[2] = _mm256_permute2f128_pd(t[0], t[2], 0x31);
    r[3] = _mm256_permute2f128_pd(t[1], t[3], 0x31);
#endif
}

/* the first nk <= VW numbers of v to y, by halves, without a masked store (slow on some cores) */
static inline void store_first(REAL *y, vreal v, i64 nk) {
    if (nk == VW) { VOP(storeu)(y, v); return; }
#if CAT(REAL_IS_FLOAT_, REAL)
    __m128 h = _mm256_castps256_ps128(v);
    if (nk >= 4) { _mm_storeu_ps(y, h); h = _mm256_extractf128_ps(v, 1); y += 4; nk -= 4; }
    if (nk >= 2) { _mm_storel_pi((__m64 *)y, h); h = _mm_movehl_ps(h, h); y += 2; nk -= 2; }
    if (nk) _mm_store_ss(y, h);
#else
    __m128d h = _mm256_castpd256_pd128(v);
    if (nk >= 2) { _mm_storeu_pd(y, h); h = _mm256_extractf128_pd(v, 1); y += 2; nk -= 2; }
    if (nk) _mm_store_sd(y, h);
#endif
}
#endif

ROW rows_to_block(const REAL *restrict x, i64 ld, i64 e0, i64 n, i64 width, REAL (*restrict io)[LANES]) {
#ifdef HAVE_TILE_TRANSPOSE
    for (i64 k0 = 0; k0 < width; k0 += 16) {
        const i64 nk = width - k0 < 16 ? width - k0 : 16;
        const __mmask16 mk = (__mmask16)((1u << nk) - 1u);
        __m512 r[16];
        for (i64 q = 0; q < 16; ++q)
            r[q] = q < n ? _mm512_maskz_loadu_ps(mk, x + (e0 + q) * ld + k0) : _mm512_setzero_ps();
        transpose16(r);
        for (i64 k = 0; k < nk; ++k) _mm512_storeu_ps(io[k0 + k], r[k]);
    }
#else
    for (i64 q = 0; q < LANES; ++q)
        for (i64 k = 0; k < width; ++k) io[k][q] = q < n ? x[(e0 + q) * ld + k] : 0;
#endif
}

/* the inverse: y[(e0 + q) * ld + k] = io[k][q] for q < n, k < width */
ROW block_to_rows(REAL (*restrict io)[LANES], i64 width, i64 e0, i64 n, REAL *restrict y, i64 ld) {
#ifdef HAVE_TILE_TRANSPOSE
    for (i64 k0 = 0; k0 < width; k0 += 16) {
        const i64 nk = width - k0 < 16 ? width - k0 : 16;
        const __mmask16 mk = (__mmask16)((1u << nk) - 1u);
        __m512 r[16];
        for (i64 k = 0; k < 16; ++k) r[k] = k < nk ? _mm512_loadu_ps(io[k0 + k]) : _mm512_setzero_ps();
        transpose16(r);
        for (i64 q = 0; q < n; ++q) _mm512_mask_storeu_ps(y + (e0 + q) * ld + k0, mk, r[q]);
    }
#elif defined(AVX2_VEC)
    for (i64 q0 = 0; q0 < n; q0 += VW)
        for (i64 k0 = 0; k0 < width; k0 += VW) {
            const i64 nk = width - k0 < VW ? width - k0 : VW;
            vreal r[VW];
            for (i64 k = 0; k < VW; ++k) r[k] = k < nk ? VOP(loadu)(io[k0 + k] + q0) : VOP(setzero)();
            transpose_vw(r);
            for (i64 q = 0; q < VW && q0 + q < n; ++q) store_first(y + (e0 + q0 + q) * ld + k0, r[q], nk);
        }
#else
    for (i64 q = 0; q < n; ++q)
        for (i64 k = 0; k < width; ++k) y[(e0 + q) * ld + k] = io[k][q];
#endif
}

/* Per-thread scratch of the MLP blocks, on the heap. On the stack these arrays took up to
 * 224 KiB per thread, more than a secondary thread is given on some systems (128 KiB on
 * musl, 512 KiB on macOS). Each thread allocates its block once and keeps it until it
 * exits (a pthread key frees it then): an allocation per call, above malloc's mmap
 * threshold, faulted its pages in again on every call. */
typedef struct {
    REAL io[MLP_MAX_IO][LANES];
    REAL a[MLP_MAX_WIDTH][LANES], b[MLP_MAX_WIDTH][LANES], c[MLP_MAX_WIDTH][LANES];
} mlp_scratch_t;

static pthread_key_t mlp_scratch_key;
static pthread_once_t mlp_scratch_once = PTHREAD_ONCE_INIT;

static void mlp_scratch_make_key(void) {
    pthread_key_create(&mlp_scratch_key, free);
}

static mlp_scratch_t *mlp_scratch(void) {
    pthread_once(&mlp_scratch_once, mlp_scratch_make_key);
    mlp_scratch_t *sc = (mlp_scratch_t *)pthread_getspecific(mlp_scratch_key);
    if (!sc) {
        sc = (mlp_scratch_t *)aligned_alloc(64, sizeof(mlp_scratch_t)); /* a multiple of 64 bytes */
        if (sc && pthread_setspecific(mlp_scratch_key, sc) != 0) {
            free(sc);
            sc = NULL;
        }
    }
    return sc;
}

ROW mlp_fwd_block(i64 blk, const i64 F, i64 E, i64 din, i64 dout, i64 nb, i64 nl, const REAL *x, i64 ldx,
                  const REAL *Win, const REAL *bin, const REAL *Wh, const REAL *bh, const REAL *Wout,
                  const REAL *bout, REAL *y, REAL *D, mlp_scratch_t *sc) {
    REAL(*io)[LANES] = sc->io, (*h)[LANES] = sc->a, (*r)[LANES] = sc->b, (*s)[LANES] = sc->c;
    const REAL isq2 = (REAL)0.70710678118654752440;
    const i64 nh = nb * nl, e0 = blk * LANES, n = E - e0 < LANES ? E - e0 : LANES;
    REAL(*restrict Db)[LANES] = D ? (REAL(*)[LANES])(D + blk * (nh + 1) * F * LANES) : NULL;
    rows_to_block(x, ldx, e0, n, din, io);
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
    block_to_rows(io, dout, e0, n, y, dout);
}

ROW mlp_bwd_block(i64 blk, const i64 F, i64 E, i64 din, i64 dout, i64 nb, i64 nl, const REAL *Win,
                  const REAL *Wh, const REAL *Wout, const REAL *D, const REAL *gy, REAL *gx, mlp_scratch_t *sc) {
    REAL(*io)[LANES] = sc->io, (*g)[LANES] = sc->a, (*gr)[LANES] = sc->b, (*gs)[LANES] = sc->c;
    const REAL isq2 = (REAL)0.70710678118654752440;
    const i64 nh = nb * nl, e0 = blk * LANES, n = E - e0 < LANES ? E - e0 : LANES;
    const REAL(*restrict Db)[LANES] = (const REAL(*)[LANES])(D + blk * (nh + 1) * F * LANES);
    rows_to_block(gy, dout, e0, n, dout, io);
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
    block_to_rows(io, din, e0, n, gx, din);
}

#define BY_WIDTH(F, CALL)     \
    switch (F) {              \
    case 16: CALL(16); break; \
    case 32: CALL(32); break; \
    case 64: CALL(64); break; \
    default: CALL(F); break;  \
    }

/* Returns NEMP_OK, NEMP_BAD_SIZE if a width exceeds MLP_MAX_WIDTH / MLP_MAX_IO, or
 * NEMP_NO_MEMORY. D: NULL or (ceil(E / LANES), nb * nl + 1, F, LANES).
 * Every thread meets the worksharing loop (OpenMP requires it); one without scratch
 * skips its blocks and the call reports the failure. */
int nemp_mlp_fwd(i64 E, i64 din, i64 F, i64 dout, i64 nb, i64 nl, const REAL *x, i64 ldx, const REAL *Win,
                 const REAL *bin, const REAL *Wh, const REAL *bh, const REAL *Wout, const REAL *bout, REAL *y,
                 REAL *D) {
    if (F > MLP_MAX_WIDTH || din > MLP_MAX_IO || dout > MLP_MAX_IO) return NEMP_BAD_SIZE;
    const i64 nblk = (E + LANES - 1) / LANES;
    int failed = 0;
#pragma omp parallel num_threads(nemp_nt()) reduction(|| : failed)
    {
        mlp_scratch_t *sc = mlp_scratch();
        failed = sc == NULL;
#define CALL(FF) mlp_fwd_block(blk, FF, E, din, dout, nb, nl, x, ldx, Win, bin, Wh, bh, Wout, bout, y, D, sc)
#pragma omp for schedule(static)
        for (i64 blk = 0; blk < nblk; ++blk)
            if (sc) BY_WIDTH(F, CALL)
#undef CALL
    }
    return failed ? NEMP_NO_MEMORY : NEMP_OK;
}

int nemp_mlp_bwd(i64 E, i64 din, i64 F, i64 dout, i64 nb, i64 nl, const REAL *Win, const REAL *Wh,
                 const REAL *Wout, const REAL *D, const REAL *gy, REAL *gx) {
    if (F > MLP_MAX_WIDTH || din > MLP_MAX_IO || dout > MLP_MAX_IO) return NEMP_BAD_SIZE;
    const i64 nblk = (E + LANES - 1) / LANES;
    int failed = 0;
#pragma omp parallel num_threads(nemp_nt()) reduction(|| : failed)
    {
        mlp_scratch_t *sc = mlp_scratch();
        failed = sc == NULL;
#define CALL(FF) mlp_bwd_block(blk, FF, E, din, dout, nb, nl, Win, Wh, Wout, D, gy, gx, sc)
#pragma omp for schedule(static)
        for (i64 blk = 0; blk < nblk; ++blk)
            if (sc) BY_WIDTH(F, CALL)
#undef CALL
    }
    return failed ? NEMP_NO_MEMORY : NEMP_OK;
}

/* ----------------------------------------------------------------------------------
 * Edge geometry (spec 3.1-3.3) for inference with first derivatives.
 *   d = sqrt(|r|^2 + eps), u = d / rc, f = phi_p(u)^2 inside (|r|^2 > eps, u < 1), else 0
 *   Y = normalised harmonics of v = r / d: Yhat_lm = sqrt(2l+1) y_lm / sqrt(|y_l|^2 + eps)
 *   X0 = [w_pair[C:] f, sinc(k_pair u) f] (E, 2 NR), the edge MLP's input
 *   e0 = w_pair[:C] f (E, C), the first C edge features
 * with w_pair, k_pair the rows of the pair tables (S^2, C + NR), (S^2, NR) for the
 * edge's ordered species pair. The tables enter as constants (no gradient). The
 * backward recomputes everything per edge and returns dL/dr (E, 3); the harmonics'
 * derivatives are carried forward through the recursion (value and d/dv_x,y,z).
 * ---------------------------------------------------------------------------------- */
#define GEOM_MAX_L 8
#define GEOM_MAX_NL ((GEOM_MAX_L + 1) * (GEOM_MAX_L + 1))
#if CAT(REAL_IS_FLOAT_, REAL)
#define RSQRT sqrtf
#else
#define RSQRT sqrt
#endif

/* sin(pi x) and cos(pi x): x = n + t with n the nearest integer, |t| <= 1/2, then
 * Taylor polynomials in a = pi t (degrees 11/12 in float, 21/20 in double, below one
 * ulp on |a| <= pi/2) and the sign (-1)^n. Arithmetic only, so loops vectorise. */
static inline void sincospi(REAL x, REAL *s, REAL *c) {
    const REAL n = (x + (REAL)ROUND_MAGIC) - (REAL)ROUND_MAGIC;
    const REAL a = (x - n) * (REAL)3.14159265358979323846, a2 = a * a;
#if CAT(REAL_IS_FLOAT_, REAL)
    const int ns = 5, nc = 6;
#else
    const int ns = 10, nc = 10;
#endif
    REAL ps = 1, pc = 1;
    for (int k = ns; k >= 1; --k) ps = (REAL)1 - ps * a2 * (REAL)(1.0 / ((2 * k) * (2 * k + 1)));
    for (int k = nc; k >= 1; --k) pc = (REAL)1 - pc * a2 * (REAL)(1.0 / ((2 * k - 1) * (2 * k)));
    const REAL sign = ((i64)n & 1) ? (REAL)-1 : (REAL)1;
    *s = sign * a * ps;
    *c = sign * pc;
}

/* torch.sinc(x) = sin(pi x) / (pi x) and its derivative (cos(pi x) - sinc(x)) / x, by
 * their series where the quotients lose precision; branch-free, so loops vectorise */
static inline REAL sinc_d(REAL x, REAL *dsinc) {
    const REAL pi = (REAL)3.14159265358979323846, p2 = pi * pi;
    const int small = x < (REAL)1e-4 && x > (REAL)-1e-4;
    const REAL xs = small ? (REAL)1 : x; /* a safe divisor in both branches */
    REAL s, c;
    sincospi(xs, &s, &c);
    const REAL v = s / (pi * xs);
    *dsinc = small ? -p2 * x / (REAL)3 : (c - v) / xs;
    return small ? (REAL)1 - p2 * x * x / (REAL)6 : v;
}

typedef struct {
    i64 L, nL, C, NR, p;
    REAL eps, rc;
    REAL a[GEOM_MAX_NL], b[GEOM_MAX_NL], c[GEOM_MAX_L + 1], norm[GEOM_MAX_L + 1];
} geom_spec;

/* The sizes and constants of a geometry call, with the coefficients of the real
 * solid-harmonic recursion (ase_nemp.model.angular) */
static geom_spec geom_make(i64 L, i64 C, i64 NR, i64 p, double eps, double rc) {
    geom_spec g = {.L = L, .nL = (L + 1) * (L + 1), .C = C, .NR = NR, .p = p, .eps = (REAL)eps, .rc = (REAL)rc};
    for (i64 l = 2; l <= L; ++l) {
        for (i64 m = -(l - 1); m <= l - 1; ++m) {
            g.a[l * l + m + l] = (REAL)sqrt((4.0 * l * l - 1.0) / (double)(l * l - m * m));
            const i64 am = m < 0 ? -m : m;
            g.b[l * l + m + l] =
                am <= l - 2 ? (REAL)(-sqrt(((l - 1.0) * (l - 1.0) - m * m) / (4.0 * (l - 1) * (l - 1) - 1.0))) : 0;
        }
        g.c[l] = (REAL)sqrt(1.0 + 1.0 / (2.0 * l));
    }
    for (i64 l = 0; l <= L; ++l) g.norm[l] = (REAL)sqrt(2.0 * l + 1.0);
    return g;
}

/* Solid harmonics y of v (components l^2 + l + m) and, if dy != NULL, dy[a][k] = dy_k/dv_a */
ROW solid_harmonics_d(const geom_spec *g, const REAL *v, REAL *y, REAL (*dy)[GEOM_MAX_NL]) {
    const REAL x = v[0], yy = v[1], z = v[2], r2 = x * x + yy * yy + z * z;
    y[0] = (REAL)(0.5 / sqrt(3.14159265358979323846));
    if (dy) dy[0][0] = dy[1][0] = dy[2][0] = 0;
    if (g->L >= 1) {
        const REAL c1 = (REAL)sqrt(3.0 / (4.0 * 3.14159265358979323846));
        y[1] = c1 * yy, y[2] = c1 * z, y[3] = c1 * x;
        if (dy) {
            for (int a = 0; a < 3; ++a) dy[a][1] = dy[a][2] = dy[a][3] = 0;
            dy[1][1] = c1, dy[2][2] = c1, dy[0][3] = c1;
        }
    }
    for (i64 l = 2; l <= g->L; ++l) {
        const i64 o = l * l, o1 = (l - 1) * (l - 1), o2 = (l - 2) * (l - 2);
        for (i64 m = -(l - 1); m <= l - 1; ++m) {
            const i64 k = o + m + l, k1 = o1 + m + l - 1;
            const REAL a = g->a[k], b = g->b[k];
            REAL t = z * y[k1];
            if (b != 0) t += b * r2 * y[o2 + m + l - 2];
            y[k] = a * t;
            if (dy) {
                for (int q = 0; q < 3; ++q) {
                    REAL dt = z * dy[q][k1] + (q == 2 ? y[k1] : 0);
                    if (b != 0) {
                        const i64 k2 = o2 + m + l - 2;
                        dt += b * (r2 * dy[q][k2] + (REAL)2 * v[q] * y[k2]);
                    }
                    dy[q][k] = a * dt;
                }
            }
        }
        const REAL c = g->c[l];
        const i64 hi = o1 + 2 * l - 2, lo = o1; /* Y_{l-1, l-1} and Y_{l-1, -(l-1)} */
        y[o + 2 * l] = c * (x * y[hi] - yy * y[lo]);
        y[o] = c * (x * y[lo] + yy * y[hi]);
        if (dy) {
            for (int q = 0; q < 3; ++q) {
                dy[q][o + 2 * l] = c * (x * dy[q][hi] - yy * dy[q][lo] + (q == 0 ? y[hi] : 0) - (q == 1 ? y[lo] : 0));
                dy[q][o] = c * (x * dy[q][lo] + yy * dy[q][hi] + (q == 0 ? y[lo] : 0) + (q == 1 ? y[hi] : 0));
            }
        }
    }
}

/* phi_p(u) and dphi/du */
static inline REAL envelope_d(i64 p, REAL u, REAL *dphi) {
    REAL up1 = 1; /* u^(p-1) */
    for (i64 k = 1; k < p; ++k) up1 *= u;
    const REAL up = up1 * u;
    const REAL A = (REAL)(0.5 * (p + 1) * (p + 2)), B = (REAL)(p * (p + 2)), Cc = (REAL)(0.5 * p * (p + 1));
    *dphi = -A * (REAL)p * up1 + B * (REAL)(p + 1) * up - Cc * (REAL)(p + 2) * up * u;
    return (REAL)1 - A * up + B * up * u - Cc * up * u * u;
}

/* Per-edge scalars shared by the forward and backward: d, u, f, df/dd and v = r / d */
ROW geom_edge(const geom_spec *g, const REAL *re, REAL *d, REAL *u, REAL *fe, REAL *dfe, REAL *v) {
    const REAL q = re[0] * re[0] + re[1] * re[1] + re[2] * re[2];
    *d = RSQRT(q + g->eps);
    *u = *d / g->rc;
    REAL dphi;
    const REAL phi = envelope_d(g->p, *u, &dphi);
    const int inside = q > g->eps && *u < (REAL)1;
    *fe = inside ? phi * phi : (REAL)0;
    *dfe = inside ? (REAL)2 * phi * dphi / g->rc : (REAL)0; /* df/dd */
    for (int a = 0; a < 3; ++a) v[a] = re[a] / *d;
}

/* Edges are taken in blocks of LANES: the per-edge part (harmonics, envelope) runs edge
 * by edge, the radial basis (N_R sinc per edge) across the block's edges in vector lanes,
 * with its rows moved in and out of the block layout as in the fused MLP. */
void nemp_geom_fwd(i64 E, i64 L, i64 C, i64 NR, i64 p, double eps, double rc, const REAL *r, const i64 *pair,
                   const REAL *ktab, const REAL *wtab, REAL *Y, REAL *f, REAL *X0, REAL *e0) {
    const geom_spec g = geom_make(L, C, NR, p, eps, rc);
    const i64 nblk = (E + LANES - 1) / LANES;
#pragma omp parallel for schedule(static) num_threads(nemp_nt())
    for (i64 blk = 0; blk < nblk; ++blk) {
        const i64 b0 = blk * LANES, n = E - b0 < LANES ? E - b0 : LANES;
        REAL uu[LANES], ff[LANES];
        i64 pp[LANES];
        for (i64 q = 0; q < LANES; ++q) {
            if (q >= n) { uu[q] = (REAL)0.5, ff[q] = 0, pp[q] = pair[b0]; continue; }
            const i64 e = b0 + q;
            REAL d, u, fe, dfe, v[3], y[GEOM_MAX_NL];
            geom_edge(&g, r + 3 * e, &d, &u, &fe, &dfe, v);
            solid_harmonics_d(&g, v, y, NULL);
            REAL *Ye = Y + e * g.nL;
            for (i64 l = 0; l <= L; ++l) {
                REAL s = 0;
                for (i64 k = l * l; k < (l + 1) * (l + 1); ++k) s += y[k] * y[k];
                const REAL scale = g.norm[l] / RSQRT(s + g.eps);
                for (i64 k = l * l; k < (l + 1) * (l + 1); ++k) Ye[k] = y[k] * scale;
            }
            const REAL *wt = wtab + pair[e] * (C + NR);
            for (i64 c = 0; c < C; ++c) e0[e * C + c] = wt[c] * fe;
            f[e] = fe, uu[q] = u, ff[q] = fe, pp[q] = pair[e];
        }
        REAL xb[2 * NR][LANES];
        for (i64 k = 0; k < NR; ++k) {
            #pragma omp simd
            for (i64 q = 0; q < LANES; ++q) {
                REAL ds;
                xb[k][q] = wtab[pp[q] * (C + NR) + C + k] * ff[q];
                xb[NR + k][q] = sinc_d(ktab[pp[q] * NR + k] * uu[q], &ds) * ff[q];
            }
        }
        block_to_rows(xb, 2 * NR, b0, n, X0, 2 * NR);
    }
}

/* gr (E, 3) from the gradients of Y, f, X0, e0 (any may be NULL: zero) */
void nemp_geom_bwd(i64 E, i64 L, i64 C, i64 NR, i64 p, double eps, double rc, const REAL *r, const i64 *pair,
                   const REAL *ktab, const REAL *wtab, const REAL *gY, const REAL *gf, const REAL *gX0,
                   const REAL *ge0, REAL *gr) {
    const geom_spec g = geom_make(L, C, NR, p, eps, rc);
    const i64 nblk = (E + LANES - 1) / LANES;
#pragma omp parallel for schedule(static) num_threads(nemp_nt())
    for (i64 blk = 0; blk < nblk; ++blk) {
        const i64 b0 = blk * LANES, n = E - b0 < LANES ? E - b0 : LANES;
        REAL dd[LANES], uu[LANES], ff[LANES], df[LANES], vv[LANES][3], gd[LANES];
        i64 pp[LANES];
        for (i64 q = 0; q < LANES; ++q) {
            if (q >= n) { dd[q] = 1, uu[q] = (REAL)0.5, ff[q] = df[q] = 0, pp[q] = pair[b0], gd[q] = 0; continue; }
            const i64 e = b0 + q;
            geom_edge(&g, r + 3 * e, dd + q, uu + q, ff + q, df + q, vv[q]);
            pp[q] = pair[e];
            REAL s = gf ? gf[e] : (REAL)0; /* dL/df */
            if (ge0) {
                const REAL *wt = wtab + pair[e] * (C + NR);
                for (i64 c = 0; c < C; ++c) s += ge0[e * C + c] * wt[c];
            }
            gd[q] = s * df[q];
        }
        if (gX0) { /* radial basis, across the block's edges */
            REAL gx[2 * NR][LANES];
            rows_to_block(gX0, 2 * NR, b0, n, 2 * NR, gx);
            for (i64 k = 0; k < NR; ++k) {
                #pragma omp simd
                for (i64 q = 0; q < LANES; ++q) {
                    REAL ds;
                    const REAL kk = ktab[pp[q] * NR + k];
                    const REAL sn = sinc_d(kk * uu[q], &ds);
                    gd[q] += gx[k][q] * wtab[pp[q] * (C + NR) + C + k] * df[q] +
                             gx[NR + k][q] * (sn * df[q] + ff[q] * ds * kk / g.rc);
                }
            }
        }
        for (i64 q = 0; q < n; ++q) {
            const i64 e = b0 + q;
            const REAL *v = vv[q];
            REAL gv[3] = {0, 0, 0};
            if (gY) {
                REAL y[GEOM_MAX_NL], dy[3][GEOM_MAX_NL];
                solid_harmonics_d(&g, v, y, dy);
                const REAL *G = gY + e * g.nL;
                for (i64 l = 0; l <= L; ++l) {
                    const i64 k0 = l * l, k1 = (l + 1) * (l + 1);
                    REAL s = 0, t = 0;
                    for (i64 k = k0; k < k1; ++k) s += y[k] * y[k], t += G[k] * y[k];
                    const REAL inv = (REAL)1 / RSQRT(s + g.eps), inv3 = inv * inv * inv;
                    for (i64 k = k0; k < k1; ++k) {
                        const REAL gyk = g.norm[l] * (G[k] * inv - y[k] * t * inv3);
                        gv[0] += gyk * dy[0][k], gv[1] += gyk * dy[1][k], gv[2] += gyk * dy[2][k];
                    }
                }
            }
            /* v = r / d: dL/dr = (gv - v (v . gv)) / d + (dL/dd) v */
            const REAL vg = v[0] * gv[0] + v[1] * gv[1] + v[2] * gv[2];
            for (int a = 0; a < 3; ++a) gr[3 * e + a] = (gv[a] - v[a] * vg) / dd[q] + gd[q] * v[a];
        }
    }
}

/* ----------------------------------------------------------------------------------
 * Channel-wise tensor product on nodes (Eq. 11) over the K non-zero CG entries k:
 *   P[i, out_k, c] = sum_k coef_k w[i, path_k, c] A[i, in1_k, c] U[i, in2_k, c]
 * A (N, nA, C), U (N, nU, C), w (N, npath, C), P (N, nP, C). The path weights enter as
 * constants: the backward gives gA and gU only.
 * ---------------------------------------------------------------------------------- */
ROW tp_fwd_row(i64 i, const i64 C, i64 K, i64 nA, i64 nU, i64 nP, i64 npath, const i64 *in1, const i64 *in2,
               const i64 *out, const i64 *path, const REAL *coef, const REAL *A, const REAL *U, const REAL *w,
               REAL *P) {
    const REAL *Ai = A + i * nA * C, *Ui = U + i * nU * C, *wi = w + i * npath * C;
    REAL *Pi = P + i * nP * C;
    for (i64 k = 0; k < nP * C; ++k) Pi[k] = 0;
    for (i64 k = 0; k < K; ++k) {
        const REAL *a = Ai + in1[k] * C, *u = Ui + in2[k] * C, *wk = wi + path[k] * C;
        const REAL ck = coef[k];
        REAL *p = Pi + out[k] * C;
        for (i64 c = 0; c < C; ++c) p[c] += (a[c] * u[c]) * (wk[c] * ck);
    }
}

void nemp_tp_fwd(i64 N, i64 C, i64 K, i64 nA, i64 nU, i64 nP, i64 npath, const i64 *in1, const i64 *in2,
                 const i64 *out, const i64 *path, const REAL *coef, const REAL *A, const REAL *U, const REAL *w,
                 REAL *P) {
#define CALL(CC) tp_fwd_row(i, CC, K, nA, nU, nP, npath, in1, in2, out, path, coef, A, U, w, P)
#pragma omp parallel for schedule(static) num_threads(nemp_nt())
    for (i64 i = 0; i < N; ++i) BY_CHANNELS(C, CALL)
#undef CALL
}

ROW tp_bwd_row(i64 i, const i64 C, i64 K, i64 nA, i64 nU, i64 nP, i64 npath, const i64 *in1, const i64 *in2,
               const i64 *out, const i64 *path, const REAL *coef, const REAL *A, const REAL *U, const REAL *w,
               const REAL *gP, REAL *gA, REAL *gU) {
    const REAL *Ai = A + i * nA * C, *Ui = U + i * nU * C, *wi = w + i * npath * C, *gPi = gP + i * nP * C;
    REAL *gAi = gA + i * nA * C, *gUi = gU + i * nU * C;
    for (i64 k = 0; k < nA * C; ++k) gAi[k] = 0;
    for (i64 k = 0; k < nU * C; ++k) gUi[k] = 0;
    for (i64 k = 0; k < K; ++k) {
        const REAL *a = Ai + in1[k] * C, *u = Ui + in2[k] * C, *wk = wi + path[k] * C, *g = gPi + out[k] * C;
        const REAL ck = coef[k];
        REAL *ga = gAi + in1[k] * C, *gu = gUi + in2[k] * C;
        for (i64 c = 0; c < C; ++c) {
            const REAL gw = g[c] * (wk[c] * ck);
            ga[c] += gw * u[c];
            gu[c] += gw * a[c];
        }
    }
}

void nemp_tp_bwd(i64 N, i64 C, i64 K, i64 nA, i64 nU, i64 nP, i64 npath, const i64 *in1, const i64 *in2,
                 const i64 *out, const i64 *path, const REAL *coef, const REAL *A, const REAL *U, const REAL *w,
                 const REAL *gP, REAL *gA, REAL *gU) {
#define CALL(CC) tp_bwd_row(i, CC, K, nA, nU, nP, npath, in1, in2, out, path, coef, A, U, w, gP, gA, gU)
#pragma omp parallel for schedule(static) num_threads(nemp_nt())
    for (i64 i = 0; i < N; ++i) BY_CHANNELS(C, CALL)
#undef CALL
}

/* ----------------------------------------------------------------------------------
 * Per-species channel mixing on nodes: out[i] = scale * X[i] @ W[s_i] with X (N, M, C),
 * W[s] (C, C) at W + s * ldW (row-major), out (N, M, C). With transpose != 0 it is
 * X[i] @ W[s_i]^T, the backward with respect to X.
 * ---------------------------------------------------------------------------------- */
ROW species_mm_row(i64 i, const i64 C, i64 M, const i64 *species, const REAL *X, const REAL *W, i64 ldW,
                   int transpose, REAL scale, REAL *out) {
    const REAL *Ws = W + species[i] * ldW, *Xi = X + i * M * C;
    REAL *oi = out + i * M * C;
    for (i64 m = 0; m < M; ++m) {
        const REAL *x = Xi + m * C;
        REAL acc[C];
        for (i64 d = 0; d < C; ++d) acc[d] = 0;
        for (i64 c = 0; c < C; ++c)
            for (i64 d = 0; d < C; ++d) acc[d] += x[c] * (transpose ? Ws[d * C + c] : Ws[c * C + d]);
        for (i64 d = 0; d < C; ++d) oi[m * C + d] = scale * acc[d];
    }
}

void nemp_species_mm(i64 N, i64 M, i64 C, const i64 *species, const REAL *X, const REAL *W, i64 ldW, int transpose,
                     double scale, REAL *out) {
#define CALL(CC) species_mm_row(i, CC, M, species, X, W, ldW, transpose, (REAL)scale, out)
#pragma omp parallel for schedule(static) num_threads(nemp_nt())
    for (i64 i = 0; i < N; ++i) BY_CHANNELS(C, CALL)
#undef CALL
}

/* ----------------------------------------------------------------------------------
 * Neighbour list (ase_nemp.nl.cells): every directed pair (i, j, S), S integer lattice
 * shifts, with |x_j - x_i + S @ cell| < cutoff, periodic self-images included, i == j
 * with S = 0 not. Always in double, whatever REAL.
 *
 * Atoms are binned in fractional coordinates: along a periodic direction k into nb[k]
 * slices of [0, 1) (positions wrapped, the wrap n0 remembered), along an open one into
 * nb[k] slices of the atoms' own extent, nb[k] as many as the cutoff allows and the
 * grid at most max_bins cells. A slice is at least as thick as the cutoff except along
 * a periodic direction thinner than it (nb 1), so each atom looks r[k] = ceil(cutoff /
 * slice thickness) slices either way (1 unless the cell is thin), a periodic slice
 * index beyond the grid meaning the next image (shift T).
 * x_j - x_i + S @ cell = xw_j + T @ cell - xw_i with S = T + n0_i - n0_j.
 *
 * Two passes over the atoms, in parallel: count (ptr), then fill; pairs come sorted by
 * i, then by slice offset and j, the same order on any number of threads. Returns the
 * number of pairs; when that exceeds cap nothing but ptr is written (call again with
 * cap >= the return value). -2 (NEMP_NO_MEMORY) if scratch could not be allocated.
 * ---------------------------------------------------------------------------------- */
static inline i64 floor_div(i64 a, i64 b) {
    const i64 q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

typedef struct {
    i64 nb[3], r[3], pbc[3];
    double lo[3], width[3], cut2;
    const double *cell, *xw;
    const i64 *start, *atoms, *bin, *n0;
} nl_grid;

/* visit every pair of atom i: count them (out == NULL) or write them from slot k */
static i64 nl_atom(const nl_grid *g, i64 i, i64 k, i64 *i_out, i64 *j_out, i64 *S_out) {
    const i64 bx = g->bin[3 * i], by = g->bin[3 * i + 1], bz = g->bin[3 * i + 2];
    const double *xi = g->xw + 3 * i;
    i64 count = 0;
    for (i64 dz = -g->r[2]; dz <= g->r[2]; ++dz) {
        i64 cz = bz + dz, tz = 0;
        if (g->pbc[2]) { tz = floor_div(cz, g->nb[2]); cz -= tz * g->nb[2]; }
        else if (cz < 0 || cz >= g->nb[2]) continue;
        for (i64 dy = -g->r[1]; dy <= g->r[1]; ++dy) {
            i64 cy = by + dy, ty = 0;
            if (g->pbc[1]) { ty = floor_div(cy, g->nb[1]); cy -= ty * g->nb[1]; }
            else if (cy < 0 || cy >= g->nb[1]) continue;
            for (i64 dx = -g->r[0]; dx <= g->r[0]; ++dx) {
                i64 cx = bx + dx, tx = 0;
                if (g->pbc[0]) { tx = floor_div(cx, g->nb[0]); cx -= tx * g->nb[0]; }
                else if (cx < 0 || cx >= g->nb[0]) continue;
                const double *c = g->cell;
                const double sx = tx * c[0] + ty * c[3] + tz * c[6] - xi[0];
                const double sy = tx * c[1] + ty * c[4] + tz * c[7] - xi[1];
                const double sz = tx * c[2] + ty * c[5] + tz * c[8] - xi[2];
                const int zero_shift = tx == 0 && ty == 0 && tz == 0;
                const i64 b = (cz * g->nb[1] + cy) * g->nb[0] + cx;
                for (i64 a = g->start[b]; a < g->start[b + 1]; ++a) {
                    const i64 j = g->atoms[a];
                    const double *xj = g->xw + 3 * j;
                    const double vx = xj[0] + sx, vy = xj[1] + sy, vz = xj[2] + sz;
                    if (vx * vx + vy * vy + vz * vz >= g->cut2 || (zero_shift && j == i)) continue;
                    if (j_out) {
                        i_out[k + count] = i;
                        j_out[k + count] = j;
                        i64 *S = S_out + 3 * (k + count);
                        S[0] = tx + g->n0[3 * i] - g->n0[3 * j];
                        S[1] = ty + g->n0[3 * i + 1] - g->n0[3 * j + 1];
                        S[2] = tz + g->n0[3 * i + 2] - g->n0[3 * j + 2];
                    }
                    ++count;
                }
            }
        }
    }
    return count;
}

i64 nemp_neighbours(i64 N, const double *x, const double *cell, const double *inv, const i64 *pbc, double cutoff,
                    i64 max_bins, i64 threads, i64 cap, i64 *ptr, i64 *i_out, i64 *j_out, i64 *S_out) {
    nl_grid g;
    double *xw = (double *)malloc((size_t)(3 * N > 0 ? 3 * N : 1) * sizeof(double));
    i64 *n0 = (i64 *)malloc((size_t)(3 * N > 0 ? 3 * N : 1) * sizeof(i64));
    i64 *bin = (i64 *)malloc((size_t)(3 * N > 0 ? 3 * N : 1) * sizeof(i64));
    i64 *atoms = (i64 *)malloc((size_t)(N > 0 ? N : 1) * sizeof(i64));
    i64 *start = NULL;
    if (!xw || !n0 || !bin || !atoms) {
        free(xw); free(n0); free(bin); free(atoms);
        return NEMP_NO_MEMORY;
    }
    double smin[3] = {0, 0, 0}, smax[3] = {0, 0, 0}, height[3];
    for (i64 i = 0; i < N; ++i)
        for (int k = 0; k < 3; ++k) {
            double s = x[3 * i] * inv[k] + x[3 * i + 1] * inv[3 + k] + x[3 * i + 2] * inv[6 + k];
            i64 w = 0;
            if (pbc[k]) {
                w = (i64)floor(s);
                s -= (double)w;
                if (s >= 1.0) { s = 0.0; ++w; }  /* -1e-17 wraps to 1.0 in floating point */
            }
            n0[3 * i + k] = w;
            xw[3 * i + k] = s; /* fractional for now */
            if (i == 0 || s < smin[k]) smin[k] = s;
            if (i == 0 || s > smax[k]) smax[k] = s;
        }
    /* slices as thin as the cutoff allows (the plane spacing of direction k is 1 / |column
     * k of inv|), fewer where the grid would exceed max_bins: thicker slices stay correct */
    double want[3];
    for (int k = 0; k < 3; ++k) {
        height[k] = 1.0 / sqrt(inv[k] * inv[k] + inv[3 + k] * inv[3 + k] + inv[6 + k] * inv[6 + k]);
        const double extent = (pbc[k] ? 1.0 : smax[k] - smin[k]) * height[k];
        want[k] = extent / cutoff < 1.0 ? 1.0 : floor(extent / cutoff);
    }
    double shrink = 1.0;
    for (;;) {
        double product = 1.0;
        for (int k = 0; k < 3; ++k) {
            g.nb[k] = (i64)(want[k] * shrink < 1.0 ? 1.0 : floor(want[k] * shrink));
            product *= (double)g.nb[k];
        }
        if (product <= (double)(max_bins > 1 ? max_bins : 1) || shrink < 1e-9) break;
        shrink *= 0.9 * cbrt((double)max_bins / product);
    }
    for (int k = 0; k < 3; ++k) {
        g.pbc[k] = pbc[k];
        g.lo[k] = pbc[k] ? 0.0 : smin[k];
        const double span = pbc[k] ? 1.0 : smax[k] - smin[k];
        g.width[k] = span > 0 ? span / (double)g.nb[k] : 1.0;
        const double thick = g.width[k] * height[k];
        g.r[k] = thick > 0 ? (i64)ceil(cutoff / thick - 1e-12) : 1;
        if (g.r[k] < 1) g.r[k] = 1;
        if (!pbc[k] && g.r[k] > g.nb[k]) g.r[k] = g.nb[k];
    }
    const i64 nbin = g.nb[0] * g.nb[1] * g.nb[2];
    start = (i64 *)calloc((size_t)nbin + 1, sizeof(i64));
    if (!start) {
        free(xw); free(n0); free(bin); free(atoms);
        return NEMP_NO_MEMORY;
    }
    for (i64 i = 0; i < N; ++i) {
        i64 b[3];
        for (int k = 0; k < 3; ++k) {
            i64 c = (i64)floor((xw[3 * i + k] - g.lo[k]) / g.width[k]);
            b[k] = c < 0 ? 0 : (c >= g.nb[k] ? g.nb[k] - 1 : c);
            bin[3 * i + k] = b[k];
        }
        start[(b[2] * g.nb[1] + b[1]) * g.nb[0] + b[0] + 1]++;
        /* Cartesian wrapped position: xw = x - n0 @ cell */
        for (int c = 0; c < 3; ++c)
            xw[3 * i + c] = x[3 * i + c] - (double)n0[3 * i] * cell[c] - (double)n0[3 * i + 1] * cell[3 + c]
                            - (double)n0[3 * i + 2] * cell[6 + c];
    }
    for (i64 b = 0; b < nbin; ++b) start[b + 1] += start[b];
    {
        i64 *fill = (i64 *)malloc((size_t)nbin * sizeof(i64));
        if (!fill) {
            free(xw); free(n0); free(bin); free(start); free(atoms);
            return NEMP_NO_MEMORY;
        }
        memcpy(fill, start, (size_t)nbin * sizeof(i64));
        for (i64 i = 0; i < N; ++i) atoms[fill[(bin[3 * i + 2] * g.nb[1] + bin[3 * i + 1]) * g.nb[0] + bin[3 * i]]++] = i;
        free(fill);
    }
    g.cut2 = cutoff * cutoff;
    g.cell = cell;
    g.xw = xw;
    g.start = start;
    g.atoms = atoms;
    g.bin = bin;
    g.n0 = n0;
    const int nt = threads > 0 ? (int)threads : 1;
    ptr[0] = 0;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (i64 i = 0; i < N; ++i) ptr[i + 1] = nl_atom(&g, i, 0, NULL, NULL, NULL);
    for (i64 i = 0; i < N; ++i) ptr[i + 1] += ptr[i];
    const i64 total = ptr[N];
    if (total <= cap) {
#pragma omp parallel for schedule(static) num_threads(nt)
        for (i64 i = 0; i < N; ++i) nl_atom(&g, i, ptr[i], i_out, j_out, S_out);
    }
    free(xw); free(n0); free(bin); free(start); free(atoms);
    return total;
}

/* The pairs of a list (i, j, S) still within cutoff at positions x, in their order:
 * what a Verlet list built with a skin is filtered to. Returns how many were kept. */
i64 nemp_within(i64 E, const double *x, const double *cell, const i64 *i, const i64 *j, const i64 *S, double cutoff,
                i64 *i_out, i64 *j_out, i64 *S_out) {
    const double cut2 = cutoff * cutoff;
    i64 kept = 0;
    for (i64 e = 0; e < E; ++e) {
        const double *xi = x + 3 * i[e], *xj = x + 3 * j[e];
        const double s0 = (double)S[3 * e], s1 = (double)S[3 * e + 1], s2 = (double)S[3 * e + 2];
        const double vx = xj[0] - xi[0] + s0 * cell[0] + s1 * cell[3] + s2 * cell[6];
        const double vy = xj[1] - xi[1] + s0 * cell[1] + s1 * cell[4] + s2 * cell[7];
        const double vz = xj[2] - xi[2] + s0 * cell[2] + s1 * cell[5] + s2 * cell[8];
        if (vx * vx + vy * vy + vz * vz < cut2) {
            i_out[kept] = i[e];
            j_out[kept] = j[e];
            S_out[3 * kept] = S[3 * e];
            S_out[3 * kept + 1] = S[3 * e + 1];
            S_out[3 * kept + 2] = S[3 * e + 2];
            ++kept;
        }
    }
    return kept;
}
