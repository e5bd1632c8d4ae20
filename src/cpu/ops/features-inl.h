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

// phi(x[0:dk)) into phi and phi'(x) into dphi (both [0:dkp), zero beyond dk) in one pass, one
// exponential per element: a backward reads x once and then only multiplies by dphi.
HWY_INLINE void FeatureRowWithGrad(const float* HWY_RESTRICT x, int64_t dk, int64_t dkp,
                                   FeatureMap map, float* HWY_RESTRICT phi,
                                   float* HWY_RESTRICT dphi) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  CopyPadded(x, dk, phi, dkp);
  const auto zero = hn::Zero(d), one = hn::Set(d, 1.0f);
  for (int64_t i = 0; i < dkp; i += N) {
    const auto v = hn::LoadU(d, phi + i);
    switch (map) {
      case FeatureMap::kIdentity:
        hn::StoreU(one, d, dphi + i);
        break;
      case FeatureMap::kRelu:
        hn::StoreU(hn::Max(v, zero), d, phi + i);
        hn::StoreU(hn::IfThenElseZero(hn::Gt(v, zero), one), d, dphi + i);
        break;
      case FeatureMap::kEluPlusOne: {
        const auto e = hn::Exp(d, v);
        const auto pos = hn::Gt(v, zero);
        hn::StoreU(hn::IfThenElse(pos, hn::Add(v, one), e), d, phi + i);
        hn::StoreU(hn::IfThenElse(pos, one, e), d, dphi + i);
        break;
      }
      case FeatureMap::kExp: {
        const auto e = hn::Exp(d, v);
        hn::StoreU(e, d, phi + i);
        hn::StoreU(e, d, dphi + i);
        break;
      }
    }
  }
  std::fill(phi + dk, phi + dkp, 0.0f);
  std::fill(dphi + dk, dphi + dkp, 0.0f);
}

}  // namespace HWY_NAMESPACE
}  // namespace attnkit::cpu
HWY_AFTER_NAMESPACE();

#endif  // ATTNKIT_CPU_OPS_FEATURES_INL_H_
