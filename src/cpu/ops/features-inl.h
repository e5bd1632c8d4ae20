// Feature maps of the linear family, vectorised: phi(x) for identity, elu+1, relu, exp, and
// phi'(x) for backward passes. Include at file scope after hwy/highway.h.
#if defined(ATTNKIT_CPU_OPS_FEATURES_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNKIT_CPU_OPS_FEATURES_INL_H_
#undef ATTNKIT_CPU_OPS_FEATURES_INL_H_
#else
#define ATTNKIT_CPU_OPS_FEATURES_INL_H_
#endif

#include <hwy/contrib/math/math-inl.h>
#include <hwy/highway.h>

#include <algorithm>

#include "attnkit/options.hpp"
#include "src/cpu/ops/matmul-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu {
namespace HWY_NAMESPACE {

// out[0:dkp) = phi(x[0:dk)), zero beyond dk (so padded lanes add nothing to dots).
HWY_INLINE void FeatureRow(const float* HWY_RESTRICT x, int64_t dk, int64_t dkp, FeatureMap map,
                           float* HWY_RESTRICT out) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  CopyPadded(x, dk, out, dkp);
  const auto zero = hn::Zero(d), one = hn::Set(d, 1.0f);
  for (int64_t i = 0; i < dkp; i += N) {
    const auto v = hn::LoadU(d, out + i);
    switch (map) {
      case FeatureMap::kIdentity:
        break;
      case FeatureMap::kRelu:
        hn::StoreU(hn::Max(v, zero), d, out + i);
        break;
      case FeatureMap::kEluPlusOne:
        hn::StoreU(hn::IfThenElse(hn::Gt(v, zero), hn::Add(v, one), hn::Exp(d, v)), d, out + i);
        break;
      case FeatureMap::kExp:
        hn::StoreU(hn::Exp(d, v), d, out + i);
        break;
    }
  }
  std::fill(out + dk, out + dkp, 0.0f);
}

// out[0:dkp) = phi'(x[0:dk)) * g[0:dk) (the chain rule through phi), zero beyond dk.
HWY_INLINE void FeatureGradRow(const float* HWY_RESTRICT x, const float* HWY_RESTRICT g, int64_t dk,
                               int64_t dkp, FeatureMap map, float* HWY_RESTRICT out) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  CopyPadded(x, dk, out, dkp);
  const auto zero = hn::Zero(d);
  for (int64_t i = 0; i < dkp; i += N) {
    const auto v = hn::LoadU(d, out + i), gv = hn::LoadU(d, g + i);
    switch (map) {
      case FeatureMap::kIdentity:
        hn::StoreU(gv, d, out + i);
        break;
      case FeatureMap::kRelu:
        hn::StoreU(hn::IfThenElseZero(hn::Gt(v, zero), gv), d, out + i);
        break;
      case FeatureMap::kEluPlusOne:
        hn::StoreU(hn::Mul(gv, hn::IfThenElse(hn::Gt(v, zero), hn::Set(d, 1.0f), hn::Exp(d, v))), d,
                   out + i);
        break;
      case FeatureMap::kExp:
        hn::StoreU(hn::Mul(gv, hn::Exp(d, v)), d, out + i);
        break;
    }
  }
  std::fill(out + dk, out + dkp, 0.0f);
}

}  // namespace HWY_NAMESPACE
}  // namespace attnkit::cpu
HWY_AFTER_NAMESPACE();

#endif  // ATTNKIT_CPU_OPS_FEATURES_INL_H_
