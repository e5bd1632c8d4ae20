// Chunk-wise memory-augmented attention (SPEC 4.2 + 4.3), at kernel level:
// the sequence is cut into chunks of c.chunk tokens; memory M_0 = a.memory ([B, m, Hq, D]).
// For chunk tau (tokens t0..t1):
//   token i reads [M_tau ; K_chunk] with values [M_tau ; V_chunk] (memory rows are keys and
//   values, tied), logits s q_i . key; causal: chunk tokens j <= i only.
//   memory write: M_{tau+1}[r] = softmax over [M_tau ; F(K_chunk)] of (M_tau[r] . key) / T
//   applied to [M_tau ; F(V_chunk)], F = the filter of arXiv 2404.00798 (depthwise conv with
//   a.filter [Hk, kappa] or a box filter, or max-pool; 'same' padding inside the chunk's
//   valid tokens), T = c.temperature or sqrt(D).
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
  const int64_t kappa = c.width, left = (kappa - 1) / 2;
  std::vector<double> out((t1 - t0) * dim, 0.0);
  for (int64_t i = t0; i < t1; ++i) {
    double* o = &out[(i - t0) * dim];
    if (c.filter_type == MemoryFilter::kMaxPool) std::fill(o, o + dim, kNegInf);
    for (int64_t w = 0; w < kappa; ++w) {
      const int64_t src = i - left + w;
      if (src < t0 || src >= t1) continue;  // zero padding (conv) / ignored (max-pool)
      const double* x = row(t, b, src, hk);
      if (c.filter_type == MemoryFilter::kMaxPool) {
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
  const Dims n(a, o);
  const int64_t m = a.memory.shape[1], D = n.Dk;
  const double s = logit_scale(o, D);
  const double temp = c.temperature > 0 ? c.temperature : std::sqrt(static_cast<double>(D));
  std::vector<double> mem(m * D), next(m * D), w;
  std::vector<const double*> krows, vrows;
  for (int64_t b = 0; b < n.B; ++b) {
    const int64_t len = n.key_length(b);
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

namespace {

// Backward of one dense attention out_r = softmax_j(scale q_r . k_j, j < visible(r)) v_j:
// adds to dq rows, dk rows, dv rows (row pointers, dim d).
template <typename Visible>
void attend_backward(const std::vector<const double*>& q, const std::vector<const double*>& k,
                     const std::vector<const double*>& v, const Visible& visible, double scale,
                     const std::vector<const double*>& dout, int64_t d,
                     const std::vector<double*>& dq, const std::vector<double*>& dk,
                     const std::vector<double*>& dv) {
  for (size_t r = 0; r < q.size(); ++r) {
    const size_t n = visible(r);
    softmax_row_backward(q[r], dout[r], {k.begin(), k.begin() + n}, {v.begin(), v.begin() + n},
                         scale, d, d, dq[r], {dk.begin(), dk.begin() + n},
                         {dv.begin(), dv.begin() + n});
  }
}

// Adjoint of filter_rows: adds the gradient of filtered rows [t0, t1) (grad, rows of dim)
// to the rows of dt at (b, hk), and (conv with weights, dweights present) to the weights'
// gradient. Max-pool routes to the first maximum, as the forward keeps it.
void filter_rows_backward(const ConstTensorView& t, const TensorView& dt, int64_t b, int64_t hk,
                          int64_t t0, int64_t t1, int64_t dim, const MemoryConfig& c,
                          const ConstTensorView& weights, const std::vector<double>& grad,
                          const TensorView& dweights) {
  const int64_t kappa = c.width, left = (kappa - 1) / 2;
  for (int64_t i = t0; i < t1; ++i) {
    const double* gi = &grad[(i - t0) * dim];
    for (int64_t d = 0; d < dim; ++d) {
      int64_t arg = -1;
      for (int64_t w = 0; w < kappa; ++w) {
        const int64_t src = i - left + w;
        if (src < t0 || src >= t1) continue;
        if (c.filter_type == MemoryFilter::kMaxPool) {
          if (arg < 0 || row(t, b, src, hk)[d] > row(t, b, arg, hk)[d]) arg = src;
        } else {
          const double wt = weights.present() ? weights.at<const double>(hk, w) : 1.0 / kappa;
          row(dt, b, src, hk)[d] += wt * gi[d];
          if (dweights.present()) dweights.at<double>(hk, w) += gi[d] * row(t, b, src, hk)[d];
        }
      }
      if (arg >= 0) row(dt, b, arg, hk)[d] += gi[d];
    }
  }
}

// The memory before each chunk of (b, h), mems[tau] (m x D), by the writes of memory_ref.
std::vector<std::vector<double>> memories_before_chunks(const AttentionArgs& a,
                                                        const MemoryConfig& c, int64_t b, int64_t h,
                                                        int64_t hk, int64_t len, double temp) {
  const int64_t m = a.memory.shape[1], D = a.q.shape[3], Sq = a.q.shape[1];
  const int64_t chunks = (Sq + c.chunk - 1) / c.chunk;
  std::vector<std::vector<double>> mems(chunks + 1, std::vector<double>(m * D));
  for (int64_t r = 0; r < m; ++r) std::copy_n(row(a.memory, b, r, h), D, &mems[0][r * D]);
  for (int64_t tau = 0; tau < chunks; ++tau) {
    const int64_t t0 = tau * c.chunk, t1 = std::min(Sq, t0 + c.chunk);
    const int64_t valid_end = std::clamp(len, t0, t1);
    const std::vector<double>& mem = mems[tau];
    std::vector<double>& next = mems[tau + 1];
    if (valid_end == t0) {
      next = mem;
      continue;
    }
    const std::vector<double> fk = filter_rows(a.k, b, hk, t0, valid_end, D, c, a.filter);
    const std::vector<double> fv = filter_rows(a.v, b, hk, t0, valid_end, D, c, a.filter);
    std::vector<double> w(m + valid_end - t0);
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t j = 0; j < static_cast<int64_t>(w.size()); ++j)
        w[j] = dot(&mem[r * D], j < m ? &mem[j * D] : &fk[(j - m) * D], D) / temp;
      softmax_inplace(w);
      for (int64_t x = 0; x < D; ++x) {
        double acc = 0;
        for (int64_t j = 0; j < static_cast<int64_t>(w.size()); ++j)
          acc += w[j] * (j < m ? mem[j * D + x] : fv[(j - m) * D + x]);
        next[r * D + x] = acc;
      }
    }
  }
  return mems;
}

// The write of chunk [t0, valid_end) of (b, hk): queries M, keys [M ; F(K)], values
// [M ; F(V)], scale 1 / temp. From dmem (the gradient after the write) adds the gradient of
// the memory before it to dprev and the filtered rows' gradients to dk, dv (and dfilter).
void write_backward(const BackwardArgs& g, const MemoryConfig& c, int64_t b, int64_t hk, int64_t t0,
                    int64_t valid_end, const std::vector<const double*>& mrows,
                    const std::vector<double>& dmem, double temp, std::vector<double>& dprev) {
  const AttentionArgs& a = g.forward;
  const int64_t m = static_cast<int64_t>(mrows.size()), D = a.q.shape[3], nv = valid_end - t0;
  const std::vector<double> fk = filter_rows(a.k, b, hk, t0, valid_end, D, c, a.filter);
  const std::vector<double> fv = filter_rows(a.v, b, hk, t0, valid_end, D, c, a.filter);
  std::vector<double> dfk(nv * D, 0.0), dfv(nv * D, 0.0), dk_m(m * D, 0.0), dv_m(m * D, 0.0);
  std::vector<const double*> keys = mrows, vals = mrows, dnext(m);
  std::vector<double*> dkeys, dvals, dprev_rows(m);
  for (int64_t r = 0; r < m; ++r) {
    dnext[r] = &dmem[r * D];
    dprev_rows[r] = &dprev[r * D];
    dkeys.push_back(&dk_m[r * D]);
    dvals.push_back(&dv_m[r * D]);
  }
  for (int64_t j = 0; j < nv; ++j) {
    keys.push_back(&fk[j * D]);
    vals.push_back(&fv[j * D]);
    dkeys.push_back(&dfk[j * D]);
    dvals.push_back(&dfv[j * D]);
  }
  attend_backward(
      mrows, keys, vals, [&](size_t) { return m + nv; }, 1.0 / temp, dnext, D, dprev_rows, dkeys,
      dvals);
  for (int64_t x = 0; x < m * D; ++x) dprev[x] += dk_m[x] + dv_m[x];
  filter_rows_backward(a.k, g.dk, b, hk, t0, valid_end, D, c, a.filter, dfk, g.dfilter);
  filter_rows_backward(a.v, g.dv, b, hk, t0, valid_end, D, c, a.filter, dfv, g.dfilter);
}

}  // namespace

void memory_backward_ref(const BackwardArgs& g, const AttentionOptions& o, const MemoryConfig& c) {
  const AttentionArgs& a = g.forward;
  const Dims n(a, o);
  const int64_t m = a.memory.shape[1], D = n.Dk;
  const double s = logit_scale(o, D);
  const double temp = c.temperature > 0 ? c.temperature : std::sqrt(static_cast<double>(D));
  zero_rows(g.dq), zero_rows(g.dk), zero_rows(g.dv);
  if (g.dfilter.present()) {
    for (int64_t h = 0; h < g.dfilter.shape[0]; ++h)
      for (int64_t w = 0; w < g.dfilter.shape[1]; ++w) g.dfilter.at<double>(h, w) = 0.0;
  }
  const int64_t chunks = (n.Sq + c.chunk - 1) / c.chunk;
  for (int64_t b = 0; b < n.B; ++b) {
    const int64_t len = n.key_length(b);
    for (int64_t h = 0; h < n.Hq; ++h) {
      const int64_t hk = n.kv_head(h);
      std::vector<std::vector<double>> mems = memories_before_chunks(a, c, b, h, hk, len, temp);
      auto chunk_span = [&](int64_t tau) {
        const int64_t t0 = tau * c.chunk, t1 = std::min(n.Sq, t0 + c.chunk);
        return std::tuple{t0, t1, std::clamp(len, t0, t1)};
      };
      // Backward through the chunks, last first; dmem is the gradient of the memory after
      // the chunk (zero after the last: the loss reads out only).
      std::vector<double> dmem(m * D, 0.0);
      for (int64_t tau = chunks - 1; tau >= 0; --tau) {
        const auto [t0, t1, valid_end] = chunk_span(tau);
        const int64_t nv = valid_end - t0;
        std::vector<double>& mem = mems[tau];
        std::vector<const double*> mrows(m);
        for (int64_t r = 0; r < m; ++r) mrows[r] = &mem[r * D];
        std::vector<double> dprev(m * D, 0.0);
        std::vector<double*> dprev_rows(m);
        for (int64_t r = 0; r < m; ++r) dprev_rows[r] = &dprev[r * D];
        if (nv > 0) {
          write_backward(g, c, b, hk, t0, valid_end, mrows, dmem, temp, dprev);
        } else {
          dprev = dmem;  // the memory passed through unchanged
        }
        // The reads: chunk queries over [M ; K_chunk] with values [M ; V_chunk].
        std::vector<const double*> q, keys = mrows, vals = mrows, dout;
        std::vector<double*> dq, dkeys = dprev_rows, dvals = dprev_rows;
        for (int64_t i = t0; i < t1; ++i) {
          q.push_back(row(a.q, b, i, h));
          dout.push_back(row(g.dout, b, i, h));
          dq.push_back(row(g.dq, b, i, h));
        }
        for (int64_t j = t0; j < valid_end; ++j) {
          keys.push_back(row(a.k, b, j, hk));
          vals.push_back(row(a.v, b, j, hk));
          dkeys.push_back(row(g.dk, b, j, hk));
          dvals.push_back(row(g.dv, b, j, hk));
        }
        attend_backward(
            q, keys, vals,
            [&](size_t r) { return m + (o.causal ? std::min<int64_t>(nv, r + 1) : nv); }, s, dout,
            D, dq, dkeys, dvals);
        dmem = dprev;
      }
      if (g.dmemory.present()) {
        for (int64_t r = 0; r < m; ++r) std::copy_n(&dmem[r * D], D, row(g.dmemory, b, r, h));
      }
    }
  }
}

}  // namespace attnkit::ref
