// de Brebisson & Vincent linear attention (SPEC 1), with gate and feature maps.
#include "ref_common.hpp"
#include "reference.hpp"

namespace attnkit::ref {
namespace {

double feature(FeatureMap m, double x) {
  switch (m) {
    case FeatureMap::kIdentity:
      return x;
    case FeatureMap::kEluPlusOne:
      return x > 0 ? x + 1.0 : std::exp(x);
    case FeatureMap::kRelu:
      return x > 0 ? x : 0.0;
    case FeatureMap::kExp:
      return std::exp(x);
  }
  return x;
}

}  // namespace

void linear_ref(const AttentionArgs& a, const AttentionOptions& o, const LinearConfig& c) {
  const Dims n(a);
  std::vector<double> fq(n.Dk), fk(n.Dk);
  for (int64_t b = 0; b < n.B; ++b) {
    const int64_t len = key_length(a, b);
    for (int64_t h = 0; h < n.Hq; ++h) {
      const int64_t hk = n.kv_head(h);
      for (int64_t i = 0; i < n.Sq; ++i) {
        const int64_t nk = visible_keys(o.causal, n.Sq, n.Sk, len, i);
        const double* q = row(a.q, b, i, h);
        for (int64_t d = 0; d < n.Dk; ++d) fq[d] = feature(c.feature_map, q[d]);
        double* out = row(a.out, b, i, h);
        std::fill(out, out + n.Dv, 0.0);
        double z = 0;  // phi(q) . sum_t w_t phi(k_t)
        for (int64_t j = 0; j < nk; ++j) {
          const double* k = row(a.k, b, j, hk);
          for (int64_t d = 0; d < n.Dk; ++d) fk[d] = feature(c.feature_map, k[d]);
          double w = 1.0;
          if (c.gated) {
            const double u = 1.0 / (1.0 + std::exp(-a.gate.at<const double>(b, j, hk)));
            w = u * u;
          }
          const double score = w * dot(fq.data(), fk.data(), n.Dk);
          z += score;
          const double* v = row(a.v, b, j, hk);
          for (int64_t d = 0; d < n.Dv; ++d) out[d] += score * v[d];
        }
        double norm = 1.0;
        switch (c.norm) {
          case LinearNorm::kNone:
            break;
          case LinearNorm::kLength:
            norm = nk > 0 ? 1.0 / nk : 0.0;
            break;
          case LinearNorm::kFixed1000:
            norm = nk > 0 ? 1000.0 / nk : 0.0;
            break;
          case LinearNorm::kKernel:
            norm = z > 0 ? 1.0 / z : 0.0;
            break;
        }
        for (int64_t d = 0; d < n.Dv; ++d) out[d] *= norm;
      }
    }
  }
}

}  // namespace attnkit::ref
