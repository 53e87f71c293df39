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
        const REAL *Ye = Y + e * ldY, *gb = gb_tmp + e * lc;
        for (i64 l = 0; l < lf1; ++l) {
            const REAL *gbl = gb + l * C;
            for (i64 m = l * l; m < (l + 1) * (l + 1); ++m) {
                const REAL y = Ye[m];
                REAL *g = gVj + m * C;
                for (i64 c = 0; c < C; ++c) g[c] += gbl[c] * y;
            }
        }
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
        if (Z) {
            const REAL *Zj = Z + jdx[e] * nf * C, *be = beta + e * ldB;
            for (i64 l = 0; l < lf1; ++l) {
                const REAL *bl = be + l * C;
                for (i64 m = l * l; m < (l + 1) * (l + 1); ++m) {
                    const REAL *z = Zj + m * C;
                    REAL *u = Ui + m * C;
                    for (i64 c = 0; c < C; ++c) u[c] += bl[c] * z[c];
                }
            }
        }
        const REAL *ae = alpha + e * ldA;
        for (i64 l = 0; l < LA; ++l) {
            const REAL *al = ae + l * C;
            for (i64 m = l * l; m < (l + 1) * (l + 1); ++m) {
                const REAL y = Ye[m];
                REAL *aa = Ai + m * C;
                for (i64 c = 0; c < C; ++c) aa[c] += al[c] * y;
            }
        }
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
        const REAL *gUi = gU + idx[e] * nf * C, *be = beta + e * ldB;
        for (i64 l = 0; l < lf1; ++l) {
            const REAL *bl = be + l * C;
            for (i64 m = l * l; m < (l + 1) * (l + 1); ++m) {
                const REAL *gu = gUi + m * C;
                REAL *g = gZj + m * C;
                for (i64 c = 0; c < C; ++c) g[c] += gu[c] * bl[c];
            }
        }
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
