// Luna (SPEC 4.1). Projections belong to the model; at kernel level the memory P
// arrives already projected per head ([B, L, Hq, Dk]) and keys = values = packed memory
// on unpack (tied), so Dk == Dv.
// Non-causal: Yp = softmax(s P K^T + pad) V (pack); out = softmax(s Q Yp^T) Yp (unpack).
// Causal running average: a_j = softplus_beta(s k_j . p_lambda), beta = ln 2 (a(0) = 1);
//   Yp_t = (1/t) sum_{j visible} a_j v_j ;  out_t = softmax_lambda(s q_t . Yp_t) Yp_t.
// memory_out (optional) receives Yp (causal: over all valid keys).
#include "ref_common.hpp"
#include "reference.hpp"

namespace attnkit::ref {
namespace {

// log2(1 + 2^z): softplus with beta = ln 2, computed without overflow.
double softplus_ln2(double z) {
  return z > 0 ? z + std::log2(1.0 + std::exp2(-z)) : std::log2(1.0 + std::exp2(z));
}

// out = softmax_lambda(s q . mem_lambda) mem  (mem: L rows of dim).
void unpack(const double* q, const std::vector<double>& mem, int64_t L, int64_t dim, double s,
            double* out) {
  std::vector<double> w(L);
  std::vector<const double*> rows(L);
  for (int64_t l = 0; l < L; ++l) {
    w[l] = s * dot(q, &mem[l * dim], dim);
    rows[l] = &mem[l * dim];
  }
  softmax_inplace(w);
  weighted_rows(w, rows, dim, out);
}

}  // namespace

void luna_ref(const AttentionArgs& a, const AttentionOptions& o) {
  const Dims n(a);
  const int64_t L = a.memory.shape[1];
  const double s = logit_scale(o, n.Dk);
  std::vector<double> packed(L * n.Dv), logits;
  std::vector<const double*> vrows;
  for (int64_t b = 0; b < n.B; ++b) {
    const int64_t len = key_length(a, b);
    for (int64_t h = 0; h < n.Hq; ++h) {
      const int64_t hk = n.kv_head(h);
      if (!o.causal) {
        logits.resize(len);
        vrows.resize(len);
        for (int64_t l = 0; l < L; ++l) {
          for (int64_t j = 0; j < len; ++j) {
            logits[j] = s * dot(row(a.memory, b, l, h), row(a.k, b, j, hk), n.Dk);
            vrows[j] = row(a.v, b, j, hk);
          }
          softmax_inplace(logits);
          weighted_rows(logits, vrows, n.Dv, &packed[l * n.Dv]);
        }
        for (int64_t i = 0; i < n.Sq; ++i)
          unpack(row(a.q, b, i, h), packed, L, n.Dv, s, row(a.out, b, i, h));
      } else {
        // Running sum acc = sum_{j visible} a_j v_j; rows see monotone key prefixes.
        std::vector<double> acc(L * n.Dv, 0.0);
        int64_t added = 0;
        auto add_keys = [&](int64_t upto) {
          for (; added < upto; ++added) {
            const double* v = row(a.v, b, added, hk);
            for (int64_t l = 0; l < L; ++l) {
              const double aj =
                  softplus_ln2(s * dot(row(a.k, b, added, hk), row(a.memory, b, l, h), n.Dk));
              for (int64_t d = 0; d < n.Dv; ++d) acc[l * n.Dv + d] += aj * v[d];
            }
          }
          for (size_t x = 0; x < acc.size(); ++x) packed[x] = upto > 0 ? acc[x] / upto : 0.0;
        };
        for (int64_t i = 0; i < n.Sq; ++i) {
          const int64_t nk = visible_keys(true, n.Sq, n.Sk, len, i);
          add_keys(nk);
          double* out = row(a.out, b, i, h);
          if (nk == 0) {
            std::fill(out, out + n.Dv, 0.0);
          } else {
            unpack(row(a.q, b, i, h), packed, L, n.Dv, s, out);
          }
        }
        add_keys(len);  // the final memory over all valid keys, for memory_out
      }
      if (a.memory_out.present()) {
        for (int64_t l = 0; l < L; ++l)
          std::copy_n(&packed[l * n.Dv], n.Dv, row(a.memory_out, b, l, h));
      }
    }
  }
}

}  // namespace attnkit::ref
