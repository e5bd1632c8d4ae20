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
  const Dims n(a, o);
  const int64_t L = a.memory.shape[1];
  const double s = logit_scale(o, n.Dk);
  std::vector<double> packed(L * n.Dv), logits;
  std::vector<const double*> vrows;
  for (int64_t b = 0; b < n.B; ++b) {
    const int64_t len = n.key_length(b);
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
          const int64_t nk = n.keys(b, i).end;
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

namespace {

// Non-causal: the two softmax attentions of luna_ref, differentiated by the softmax
// reference backward: unpack (keys = values = Yp, so dYp = dk + dv), then pack.
void luna_noncausal_backward_ref(const BackwardArgs& g, const AttentionOptions& o,
                                 const TensorView& dmemory) {
  const AttentionArgs& a = g.forward;
  const int64_t B = a.q.shape[0], L = a.memory.shape[1], Hq = a.q.shape[2], Dv = a.v.shape[3];
  const AttentionOptions plain{.scale = o.scale, .causal = false};
  Tensor<double> packed({B, L, Hq, Dv}), dk_u({B, L, Hq, Dv}), dv_u({B, L, Hq, Dv});
  AttentionArgs pack;
  pack.q = a.memory;
  pack.k = a.k;
  pack.v = a.v;
  pack.out = packed.view();
  pack.key_lengths = a.key_lengths;
  softmax_ref(pack, plain);
  AttentionArgs unpack;
  unpack.q = a.q;
  unpack.k = packed.cview();
  unpack.v = packed.cview();
  unpack.out = a.out;
  softmax_backward_ref(
      {.forward = unpack, .dout = g.dout, .dq = g.dq, .dk = dk_u.view(), .dv = dv_u.view()}, plain);
  for (size_t x = 0; x < dk_u.vec().size(); ++x) dk_u.vec()[x] += dv_u.vec()[x];
  softmax_backward_ref(
      {.forward = pack, .dout = dk_u.cview(), .dq = dmemory, .dk = g.dk, .dv = g.dv}, plain);
}

}  // namespace

void luna_backward_ref(const BackwardArgs& g, const AttentionOptions& o) {
  const AttentionArgs& a = g.forward;
  const Dims n(a, o);
  const int64_t L = a.memory.shape[1];
  Tensor<double> dmem_scratch;
  TensorView dmemory = g.dmemory;
  if (!dmemory.present()) {
    dmem_scratch = Tensor<double>({n.B, L, n.Hq, n.Dk});
    dmemory = dmem_scratch.view();
  }
  if (!o.causal) {
    luna_noncausal_backward_ref(g, o, dmemory);
    return;
  }
  // Causal, directly per row: Y = (1/t) sum_{j<t} a_j v_j, z_l = s q.Y_l, pi = softmax(z),
  // out = pi Y. dY_l = pi_l dout + s dz_l q with dz_l = pi_l (dout.Y_l - dout.out); then
  // per visible key: dv_j += a_jl dY_l / t, da_jl = dY_l.v_j / t, and through
  // a = softplus_ln2(u), u = s k_j.p_l, da/du = sigmoid(u ln 2): dk_j, dp_l.
  const double s = logit_scale(o, n.Dk);
  zero_rows(g.dq), zero_rows(g.dk), zero_rows(g.dv), zero_rows(dmemory);
  std::vector<double> y(L * n.Dv), pi(L), dy(L * n.Dv), u;
  for (int64_t b = 0; b < n.B; ++b) {
    for (int64_t h = 0; h < n.Hq; ++h) {
      const int64_t hk = n.kv_head(h);
      auto logit_u = [&](int64_t j, int64_t l) {
        return s * dot(row(a.k, b, j, hk), row(a.memory, b, l, h), n.Dk);
      };
      for (int64_t i = 0; i < n.Sq; ++i) {
        const int64_t t = n.keys(b, i).end;
        if (t == 0) continue;
        std::fill(y.begin(), y.end(), 0.0);
        for (int64_t j = 0; j < t; ++j) {
          const double* v = row(a.v, b, j, hk);
          for (int64_t l = 0; l < L; ++l) {
            const double aj = softplus_ln2(logit_u(j, l)) / t;
            for (int64_t d = 0; d < n.Dv; ++d) y[l * n.Dv + d] += aj * v[d];
          }
        }
        const double* q = row(a.q, b, i, h);
        const double* dout = row(g.dout, b, i, h);
        for (int64_t l = 0; l < L; ++l) pi[l] = s * dot(q, &y[l * n.Dv], n.Dv);
        softmax_inplace(pi);
        double dout_o = 0;
        for (int64_t l = 0; l < L; ++l) dout_o += pi[l] * dot(dout, &y[l * n.Dv], n.Dv);
        double* dq = row(g.dq, b, i, h);
        for (int64_t l = 0; l < L; ++l) {
          const double dz = pi[l] * (dot(dout, &y[l * n.Dv], n.Dv) - dout_o);
          for (int64_t d = 0; d < n.Dv; ++d) {
            dq[d] += s * dz * y[l * n.Dv + d];
            dy[l * n.Dv + d] = pi[l] * dout[d] + s * dz * q[d];
          }
        }
        for (int64_t j = 0; j < t; ++j) {
          const double* k = row(a.k, b, j, hk);
          const double* v = row(a.v, b, j, hk);
          double* dk = row(g.dk, b, j, hk);
          double* dv = row(g.dv, b, j, hk);
          for (int64_t l = 0; l < L; ++l) {
            const double uj = logit_u(j, l);
            const double* dyl = &dy[l * n.Dv];
            for (int64_t d = 0; d < n.Dv; ++d) dv[d] += softplus_ln2(uj) * dyl[d] / t;
            const double da = dot(dyl, v, n.Dv) / t;
            const double gu = s * da / (1.0 + std::exp2(-uj));  // * sigmoid(u ln 2)
            const double* p = row(a.memory, b, l, h);
            double* dp = row(dmemory, b, l, h);
            for (int64_t d = 0; d < n.Dk; ++d) {
              dk[d] += gu * p[d];
              dp[d] += gu * k[d];
            }
          }
        }
      }
    }
  }
}

}  // namespace attnkit::ref
