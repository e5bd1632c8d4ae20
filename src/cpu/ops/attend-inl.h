// A small dense softmax attention on packed operands, for kernels that attend over short
// blocks (memory slots, landmarks): out = softmax_rows(scale * Q K^T, masked) V.
// Include at file scope after hwy/highway.h.
#if defined(ATTNKIT_CPU_OPS_ATTEND_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNKIT_CPU_OPS_ATTEND_INL_H_
#undef ATTNKIT_CPU_OPS_ATTEND_INL_H_
#else
#define ATTNKIT_CPU_OPS_ATTEND_INL_H_
#endif

#include <hwy/highway.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "src/cpu/ops/matmul-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu {
namespace HWY_NAMESPACE {

// In place: each of `rows` rows of s (leading dim lds) becomes softmax over its first
// visible(r) entries, zero elsewhere (up to `cols`); rows with none stay all zero.
template <typename Visible>
HWY_INLINE void SoftmaxRows(float* s, int64_t lds, int64_t rows, int64_t cols,
                            const Visible& visible) {
  for (int64_t r = 0; r < rows; ++r) {
    float* x = s + r * lds;
    const int64_t n = visible(r);
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j]);
    float sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += (x[j] = std::exp(x[j] - m));
    const float inv = n > 0 ? 1.0f / sum : 0.0f;
    for (int64_t j = 0; j < n; ++j) x[j] *= inv;
    std::fill(x + n, x + cols, 0.0f);
  }
}

// out [rows][ldo] = softmax(scale * q kt, visible) v, with q [rows][ldq] (any row stride),
// kt [depth][ldk] (keys transposed, ldk >= nk rounded to lanes), v [nk][ldv].
// s: scratch of rows * ldk floats.
template <typename Visible>
HWY_INLINE void Attend(const float* q, int64_t ldq, int64_t rows, int64_t depth, const float* kt,
                       int64_t ldk, int64_t nk, const float* v, int64_t ldv, int64_t cols_v,
                       float scale, const Visible& visible, float* s, float* out, int64_t ldo) {
  MatMul(q, ldq, kt, ldk, s, ldk, rows, ldk, depth, /*accumulate=*/false);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < nk; ++j) s[r * ldk + j] *= scale;
  SoftmaxRows(s, ldk, rows, ldk, visible);
  MatMul(s, ldk, v, ldv, out, ldo, rows, cols_v, nk, /*accumulate=*/false);
}

// Row-wise forms on row-major padded operands (keys, vals [nk][dp], dp a multiple of lanes),
// for backward passes: p [nk] = softmax_j(scale q . k_j) over j < n.
HWY_INLINE void SoftmaxRow(const float* q, const float* keys, int64_t n, int64_t dp, float scale,
                           float* p) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) m = std::max(m, p[j] = scale * Dot(q, keys + j * dp, dp));
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) sum += (p[j] = std::exp(p[j] - m));
  for (int64_t j = 0; j < n; ++j) p[j] /= sum;
}

// Adds the gradients of out_r = softmax_j(scale q_r . k_j, j < visible(r)) v_j for `rows`
// rows: q, dout [rows][dp] -> dq [rows][dp]; keys, vals [nk][dp] -> dk, dv [nk][dp]
// (dk may alias dv). p: 2 nk floats of scratch.
template <typename Visible>
HWY_INLINE void AttendBackwardRows(const float* q, const float* dout, int64_t rows,
                                   const float* keys, const float* vals, int64_t nk, int64_t dp,
                                   float scale, const Visible& visible, float* p, float* dq,
                                   float* dk, float* dv) {
  float* dprob = p + nk;
  for (int64_t r = 0; r < rows; ++r) {
    const float* qr = q + r * dp;
    const float* dr = dout + r * dp;
    const int64_t n = visible(r);
    if (n == 0) continue;
    SoftmaxRow(qr, keys, n, dp, scale, p);
    float dd = 0.0f;  // dout_r . out_r
    for (int64_t j = 0; j < n; ++j) dd += p[j] * (dprob[j] = Dot(dr, vals + j * dp, dp));
    for (int64_t j = 0; j < n; ++j) {
      const float ds = scale * p[j] * (dprob[j] - dd);
      Axpy(ds, keys + j * dp, dq + r * dp, dp);
      Axpy(ds, qr, dk + j * dp, dp);
      Axpy(p[j], dr, dv + j * dp, dp);
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace attnkit::cpu
HWY_AFTER_NAMESPACE();

#endif  // ATTNKIT_CPU_OPS_ATTEND_INL_H_
