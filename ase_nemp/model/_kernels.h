/*
 * The functions of the fused CPU kernels (_kernels.c) that Python calls: the one list of
 * their signatures. ase_nemp.model.kernels reads its ctypes bindings from this file, and
 * the library is compiled with this file in front of _kernels.c, so a definition that
 * drifts from its prototype here does not compile. Pointers are to contiguous arrays of
 * the library's REAL (float or double) or of i64; int return values are NEMP_OK (0) or a
 * negative error code.
 */
#ifndef NEMP_KERNELS_H
#define NEMP_KERNELS_H
#include <stdint.h>
#ifndef REAL
#define REAL double
#endif
typedef int64_t i64;

int nemp_set_threads(int n);
void nemp_edge_inv_fwd(i64 N, i64 C, i64 lf1, i64 ldY, const i64 *ptr, const i64 *jdx, const REAL *Y,
    const REAL *V, const REAL *Qe, i64 ldQe, const REAL *Qr, i64 ldQr, int want_eps, REAL *eps, REAL *rho,
    REAL *a_out, REAL *b_out);
int nemp_edge_inv_bwd(i64 N, i64 E, i64 C, i64 lf1, i64 ldY, const i64 *ptr, const i64 *jdx,
    const REAL *Y, const REAL *V, const REAL *Qe, i64 ldQe,
    const REAL *Qr, i64 ldQr, const REAL *a, const REAL *b, const REAL *g_eps, const REAL *g_rho, REAL *gY,
    REAL *gV, REAL *gQe, i64 ldgQe, REAL *gQr, i64 ldgQr, REAL *gb_tmp, REAL *gVn);
void nemp_node_dens_fwd(i64 N, i64 C, i64 lf1, i64 LA, i64 ldY, const i64 *ptr, const i64 *jdx,
    const REAL *Y, const REAL *Z, const REAL *beta, i64 ldB, const REAL *alpha, i64 ldA, REAL *U, REAL *A);
void nemp_node_dens_bwd(i64 N, i64 C, i64 lf1, i64 LA, i64 ldY, const i64 *ptr,
    const i64 *jdx, const REAL *Y, const REAL *Z, const REAL *beta,
    i64 ldB, const REAL *alpha, i64 ldA, const REAL *gU, const REAL *gA, REAL *gY, REAL *gbeta, i64 ldgB,
    REAL *galpha, i64 ldgA, REAL *gZ);
int nemp_mlp_fwd(i64 E, i64 din, i64 F, i64 dout, i64 nb, i64 nl, const REAL *x, i64 ldx, const REAL *Win,
    const REAL *bin, const REAL *Wh, const REAL *bh, const REAL *Wout, const REAL *bout, REAL *y, REAL *D);
int nemp_mlp_bwd(i64 E, i64 din, i64 F, i64 dout, i64 nb, i64 nl, const REAL *Win, const REAL *Wh,
    const REAL *Wout, const REAL *D, const REAL *gy, REAL *gx);
void nemp_geom_fwd(i64 E, i64 L, i64 C, i64 NR, i64 p, double eps, double rc, const REAL *r, const i64 *pair,
    const REAL *ktab, const REAL *wtab, REAL *Y, REAL *f, REAL *X0, REAL *e0);
void nemp_geom_bwd(i64 E, i64 L, i64 C, i64 NR, i64 p, double eps, double rc, const REAL *r, const i64 *pair,
    const REAL *ktab, const REAL *wtab, const REAL *gY, const REAL *gf, const REAL *gX0, const REAL *ge0,
    REAL *gr);
void nemp_tp_fwd(i64 N, i64 C, i64 K, i64 nA, i64 nU, i64 nP, i64 npath, const i64 *in1, const i64 *in2,
    const i64 *out, const i64 *path, const REAL *coef, const REAL *A, const REAL *U, const REAL *w, REAL *P);
void nemp_tp_bwd(i64 N, i64 C, i64 K, i64 nA, i64 nU, i64 nP, i64 npath, const i64 *in1, const i64 *in2,
    const i64 *out, const i64 *path, const REAL *coef, const REAL *A, const REAL *U, const REAL *w,
    const REAL *gP, REAL *gA, REAL *gU);
void nemp_species_mm(i64 N, i64 M, i64 C, const i64 *species, const REAL *X, const REAL *W, i64 ldW,
    int transpose, double scale, REAL *out);
i64 nemp_within(i64 E, const double *x, const double *cell, const i64 *i, const i64 *j, const i64 *S, double cutoff,
    i64 *i_out, i64 *j_out, i64 *S_out);
i64 nemp_neighbours(i64 N, const double *x, const double *cell, const double *inv, const i64 *pbc, double cutoff,
    i64 max_bins, i64 threads, i64 cap, i64 *ptr, i64 *i_out, i64 *j_out, i64 *S_out);
#endif
