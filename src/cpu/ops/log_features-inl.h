// Log-feature pieces shared by the log-feature linear kernels (heinsen, rfa / performer)
// forward and backward: the per-(batch, kv head) slot and the key update against running
// per-feature maxima. Include at file scope after hwy/highway.h.
#if defined(ATTNKIT_CPU_OPS_LOG_FEATURES_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNKIT_CPU_OPS_LOG_FEATURES_INL_H_
#undef ATTNKIT_CPU_OPS_LOG_FEATURES_INL_H_
#else
#define ATTNKIT_CPU_OPS_LOG_FEATURES_INL_H_
#endif

#include <hwy/contrib/math/math-inl.h>
#include <hwy/highway.h>

#include <algorithm>
#include <limits>

#include "src/cpu/kernels.hpp"
#include "src/cpu/ops/matmul-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

inline constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// c = sum_j exp(lk_j - m) v_j^T, z = sum_j exp(lk_j - m), m = running max_j lk_j.
struct Slot {
  float* c;  // [fp][dvp]
  float* z;  // [fp]
  float* m;  // [fp]
};

// Log-features of a key (with_norm) or query row into lf[0:fp); padding lanes get -inf.
HWY_INLINE void ComputeLogFeatures(const float* x, int64_t dk, const LogFeatures& f,
                                   const float* omega, int64_t fp, bool with_norm, float* lf) {
  if (omega == nullptr) {
    std::copy_n(x, dk, lf);
    std::fill(lf + dk, lf + fp, kNegInf);
    return;
  }
  const float s = f.sqrt_scale;
  const float norm = with_norm ? 0.5f * s * s * Dot(x, x, dk) : 0.0f;
  for (int64_t r = 0; r < f.features; ++r) lf[r] = s * Dot(omega + r * dk, x, dk) - norm;
  std::fill(lf + f.features, lf + fp, kNegInf);
}

// Adds key features lk[0:fp) with value v[0:dvp) (zero padded) to a slot.
// tmp: 2 * fp floats of scratch.
HWY_INLINE void AddKey(const Slot& st, const float* HWY_RESTRICT lk, const float* HWY_RESTRICT v,
                       int64_t fp, int64_t dvp, float* HWY_RESTRICT tmp) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  float* scale = tmp;
  float* e = tmp + fp;
  bool rescale = false;
  const auto neg_inf = hn::Set(d, kNegInf);
  for (int64_t r = 0; r < fp; r += N) {
    const auto m = hn::LoadU(d, st.m + r);
    const auto x = hn::LoadU(d, lk + r);
    const auto nm = hn::Max(m, x);
    // exp(m - nm) is 1 when unchanged (also for -inf == -inf); exp(x - nm) is 0 for x = -inf.
    const auto sc = hn::IfThenElse(hn::Eq(m, nm), hn::Set(d, 1.0f), hn::Exp(d, hn::Sub(m, nm)));
    const auto ev = hn::IfThenZeroElse(hn::Eq(x, neg_inf), hn::Exp(d, hn::Sub(x, nm)));
    rescale |= !hn::AllTrue(d, hn::Eq(sc, hn::Set(d, 1.0f)));
    hn::StoreU(nm, d, st.m + r);
    hn::StoreU(sc, d, scale + r);
    hn::StoreU(ev, d, e + r);
    hn::StoreU(hn::MulAdd(hn::LoadU(d, st.z + r), sc, ev), d, st.z + r);
  }
  for (int64_t r = 0; r < fp; ++r) {
    float* cr = st.c + r * dvp;
    if (rescale && scale[r] != 1.0f) Scale(scale[r], cr, dvp);
    if (e[r] != 0.0f) Axpy(e[r], v, cr, dvp);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace attnkit::cpu
HWY_AFTER_NAMESPACE();

#endif  // ATTNKIT_CPU_OPS_LOG_FEATURES_INL_H_
