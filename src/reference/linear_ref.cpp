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

double feature_grad(FeatureMap m, double x) {
  switch (m) {
    case FeatureMap::kIdentity:
      return 1.0;
    case FeatureMap::kEluPlusOne:
      return x > 0 ? 1.0 : std::exp(x);
    case FeatureMap::kRelu:
      return x > 0 ? 1.0 : 0.0;
    case FeatureMap::kExp:
      return std::exp(x);
  }
  return 1.0;
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace

void linear_ref(const AttentionArgs& a, const AttentionOptions& o, const LinearConfig& c) {
  const Dims n(a, o);
  std::vector<double> fq(n.Dk), fk(n.Dk);
  for (int64_t b = 0; b < n.B; ++b) {
    for (int64_t h = 0; h < n.Hq; ++h) {
      const int64_t hk = n.kv_head(h);
      for (int64_t i = 0; i < n.Sq; ++i) {
        const int64_t nk = n.keys(b, i).end;
        const double* q = row(a.q, b, i, h);
        for (int64_t d = 0; d < n.Dk; ++d) fq[d] = feature(c.map, q[d]);
        double* out = row(a.out, b, i, h);
        std::fill(out, out + n.Dv, 0.0);
        // phi = exp: phi(q) . phi(k_j) = sum_d exp(q_d + k_jd), evaluated as
        // exp(shift) sum_d exp(q_d + k_jd - shift) with shift the row's largest exponent, so
        // nothing overflows; the kernel normaliser cancels exp(shift) exactly.
        const bool exp_map = c.map == FeatureMap::kExp;
        double shift = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; exp_map && j < nk; ++j) {
          const double* k = row(a.k, b, j, hk);
          for (int64_t d = 0; d < n.Dk; ++d) shift = std::max(shift, q[d] + k[d]);
        }
        double z = 0;  // phi(q) . sum_t w_t phi(k_t), times exp(-shift) for phi = exp
        for (int64_t j = 0; j < nk; ++j) {
          const double* k = row(a.k, b, j, hk);
          double w = 1.0;
          if (c.gated) {
            const double u = 1.0 / (1.0 + std::exp(-a.gate.at<const double>(b, j, hk)));
            w = u * u;
          }
          double score = 0;
          if (exp_map) {
            for (int64_t d = 0; d < n.Dk; ++d) score += std::exp(q[d] + k[d] - shift);
            score *= w;
          } else {
            for (int64_t d = 0; d < n.Dk; ++d) fk[d] = feature(c.map, k[d]);
            score = w * dot(fq.data(), fk.data(), n.Dk);
          }
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
        if (exp_map && c.norm != LinearNorm::kKernel && nk > 0) norm *= std::exp(shift);
        for (int64_t d = 0; d < n.Dv; ++d) out[d] *= norm;
      }
    }
  }
}

void linear_backward_ref(const BackwardArgs& g, const AttentionOptions& o, const LinearConfig& c,
                         const TensorView& dgate) {
  const AttentionArgs& a = g.forward;
  const Dims n(a, o);
  zero_rows(g.dq), zero_rows(g.dk), zero_rows(g.dv);
  if (c.gated) {
    for (int64_t b = 0; b < n.B; ++b)
      for (int64_t j = 0; j < n.Sk; ++j)
        for (int64_t h = 0; h < n.Hk; ++h) dgate.at<double>(b, j, h) = 0.0;
  }
  std::vector<double> fq(n.Dk), fk(n.Dk), num(n.Dv), a_ij, dfq(n.Dk);
  for (int64_t b = 0; b < n.B; ++b) {
    for (int64_t h = 0; h < n.Hq; ++h) {
      const int64_t hk = n.kv_head(h);
      for (int64_t i = 0; i < n.Sq; ++i) {
        const int64_t nk = n.keys(b, i).end;
        if (nk == 0) continue;
        const double* q = row(a.q, b, i, h);
        const double* dout = row(g.dout, b, i, h);
        for (int64_t d = 0; d < n.Dk; ++d) fq[d] = feature(c.map, q[d]);
        // Forward quantities of the row: a_ij, num_i, den_i, f_i.
        a_ij.assign(nk, 0.0);
        std::fill(num.begin(), num.end(), 0.0);
        double den = 0;
        for (int64_t j = 0; j < nk; ++j) {
          const double* k = row(a.k, b, j, hk);
          for (int64_t d = 0; d < n.Dk; ++d) fk[d] = feature(c.map, k[d]);
          const double w = c.gated ? std::pow(sigmoid(a.gate.at<const double>(b, j, hk)), 2) : 1.0;
          a_ij[j] = w * dot(fq.data(), fk.data(), n.Dk);
          den += a_ij[j];
          const double* v = row(a.v, b, j, hk);
          for (int64_t d = 0; d < n.Dv; ++d) num[d] += a_ij[j] * v[d];
        }
        double f = 1.0, dden = 0.0;
        switch (c.norm) {
          case LinearNorm::kNone:
            break;
          case LinearNorm::kLength:
            f = 1.0 / nk;
            break;
          case LinearNorm::kFixed1000:
            f = 1000.0 / nk;
            break;
          case LinearNorm::kKernel:
            f = den > 0 ? 1.0 / den : 0.0;
            // out = num / den: d den = -(dout . num) / den^2.
            dden = den > 0 ? -dot(dout, num.data(), n.Dv) / (den * den) : 0.0;
            break;
        }
        std::fill(dfq.begin(), dfq.end(), 0.0);
        for (int64_t j = 0; j < nk; ++j) {
          const double* k = row(a.k, b, j, hk);
          const double* v = row(a.v, b, j, hk);
          for (int64_t d = 0; d < n.Dk; ++d) fk[d] = feature(c.map, k[d]);
          const double gj = c.gated ? a.gate.at<const double>(b, j, hk) : 0.0;
          const double w = c.gated ? std::pow(sigmoid(gj), 2) : 1.0;
          const double da = f * dot(dout, v, n.Dv) + dden;  // d loss / d a_ij
          double* dv = row(g.dv, b, j, hk);
          for (int64_t d = 0; d < n.Dv; ++d) dv[d] += f * a_ij[j] * dout[d];
          double* dk = row(g.dk, b, j, hk);
          for (int64_t d = 0; d < n.Dk; ++d) {
            dfq[d] += da * w * fk[d];
            dk[d] += da * w * fq[d] * feature_grad(c.map, k[d]);
          }
          if (c.gated) {
            // w = sigmoid(g)^2: dw/dg = 2 sigmoid(g)^2 (1 - sigmoid(g)).
            const double sg = sigmoid(gj);
            dgate.at<double>(b, j, hk) +=
                da * dot(fq.data(), fk.data(), n.Dk) * 2 * sg * sg * (1 - sg);
          }
        }
        double* dq = row(g.dq, b, i, h);
        for (int64_t d = 0; d < n.Dk; ++d) dq[d] = dfq[d] * feature_grad(c.map, q[d]);
      }
    }
  }
}

}  // namespace attnkit::ref
