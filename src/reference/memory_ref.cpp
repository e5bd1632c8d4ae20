// Chunk-wise memory-augmented attention (SPEC 4.2 + 4.3), at kernel level:
// the sequence is cut into chunks of c.chunk tokens; memory M_0 = a.memory ([B, m, Hq, D]).
// For chunk tau (tokens t0..t1):
//   token i reads [M_tau ; K_chunk] with values [M_tau ; V_chunk] (memory rows are keys and
//   values, tied), logits s q_i . key; causal: chunk tokens j <= i only.
//   memory write: M_{tau+1}[r] = softmax over [M_tau ; F(K_chunk)] of (M_tau[r] . key) / T
//   applied to [M_tau ; F(V_chunk)], F = the filter of arXiv 2404.00798 (depthwise conv with
//   a.filter [Hk, kappa] or a box filter, or max-pool; 'same' padding inside the chunk's
//   valid tokens), T = c.pack_temperature or sqrt(D).
// Chunks see earlier chunks only through memory. A chunk with no valid token leaves the
// memory unchanged. memory_out receives the final memory. Requires Sq == Sk, Dk == Dv.
#include "ref_common.hpp"
#include "reference.hpp"

namespace attnkit::ref {
namespace {

// Filtered rows of t (b, h) for tokens [t0, t1): 'same' padding, left = (kappa - 1) / 2.
std::vector<double> filter_rows(const ConstTensorView& t, int64_t b, int64_t hk, int64_t t0,
                                int64_t t1, int64_t dim, const MemoryConfig& c,
                                const ConstTensorView& weights) {
  const int64_t kappa = c.filter_width, left = (kappa - 1) / 2;
  std::vector<double> out((t1 - t0) * dim, 0.0);
  for (int64_t i = t0; i < t1; ++i) {
    double* o = &out[(i - t0) * dim];
    if (c.filter == MemoryFilter::kMaxPool) std::fill(o, o + dim, kNegInf);
    for (int64_t w = 0; w < kappa; ++w) {
      const int64_t src = i - left + w;
      if (src < t0 || src >= t1) continue;  // zero padding (conv) / ignored (max-pool)
      const double* x = row(t, b, src, hk);
      if (c.filter == MemoryFilter::kMaxPool) {
        for (int64_t d = 0; d < dim; ++d) o[d] = std::max(o[d], x[d]);
      } else {
        const double wt = weights.present() ? weights.at<const double>(hk, w) : 1.0 / kappa;
        for (int64_t d = 0; d < dim; ++d) o[d] += wt * x[d];
      }
    }
  }
  return out;
}

}  // namespace

void memory_ref(const AttentionArgs& a, const AttentionOptions& o, const MemoryConfig& c) {
  const Dims n(a);
  const int64_t m = a.memory.shape[1], D = n.Dk;
  const double s = logit_scale(o, D);
  const double temp =
      c.pack_temperature > 0 ? c.pack_temperature : std::sqrt(static_cast<double>(D));
  std::vector<double> mem(m * D), next(m * D), w;
  std::vector<const double*> krows, vrows;
  for (int64_t b = 0; b < n.B; ++b) {
    const int64_t len = key_length(a, b);
    for (int64_t h = 0; h < n.Hq; ++h) {
      const int64_t hk = n.kv_head(h);
      for (int64_t r = 0; r < m; ++r) std::copy_n(row(a.memory, b, r, h), D, &mem[r * D]);
      for (int64_t t0 = 0; t0 < n.Sq; t0 += c.chunk) {
        const int64_t t1 = std::min(n.Sq, t0 + c.chunk);
        const int64_t valid_end = std::clamp(len, t0, t1);
        // Token reads.
        for (int64_t i = t0; i < t1; ++i) {
          const int64_t last = o.causal ? std::min(valid_end, i + 1) : valid_end;
          krows.clear();
          vrows.clear();
          for (int64_t r = 0; r < m; ++r) krows.push_back(&mem[r * D]);
          for (int64_t j = t0; j < last; ++j) krows.push_back(row(a.k, b, j, hk));
          vrows = krows;
          for (int64_t j = t0; j < last; ++j) vrows[m + j - t0] = row(a.v, b, j, hk);
          const double* q = row(a.q, b, i, h);
          w.resize(krows.size());
          for (size_t j = 0; j < krows.size(); ++j) w[j] = s * dot(q, krows[j], D);
          softmax_inplace(w);
          weighted_rows(w, vrows, D, row(a.out, b, i, h));
        }
        if (valid_end == t0) continue;  // nothing to write into memory
        // Memory write through the filter.
        const std::vector<double> fk = filter_rows(a.k, b, hk, t0, valid_end, D, c, a.filter);
        const std::vector<double> fv = filter_rows(a.v, b, hk, t0, valid_end, D, c, a.filter);
        krows.clear();
        vrows.clear();
        for (int64_t r = 0; r < m; ++r) {
          krows.push_back(&mem[r * D]);
          vrows.push_back(&mem[r * D]);
        }
        for (int64_t j = 0; j < valid_end - t0; ++j) {
          krows.push_back(&fk[j * D]);
          vrows.push_back(&fv[j * D]);
        }
        for (int64_t r = 0; r < m; ++r) {
          w.resize(krows.size());
          for (size_t j = 0; j < krows.size(); ++j) w[j] = dot(&mem[r * D], krows[j], D) / temp;
          softmax_inplace(w);
          weighted_rows(w, vrows, D, &next[r * D]);
        }
        mem.swap(next);
      }
      if (a.memory_out.present()) {
        for (int64_t r = 0; r < m; ++r) std::copy_n(&mem[r * D], D, row(a.memory_out, b, r, h));
      }
    }
  }
}

}  // namespace attnkit::ref
