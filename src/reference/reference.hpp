// Double-precision references, one per mechanism, written straight from
// ../shared/SPEC.md: naive loops, readable, slow, always built. They are the
// oracle for every fast kernel. All views are float64 and already validated
// (shapes as in AttentionArgs); they depend only on the public types.
#pragma once

#include <functional>

#include "attnkit/args.hpp"
#include "attnkit/options.hpp"
#include "attnkit/problem.hpp"

namespace attnkit::ref {

// out = softmax(x) v with x the masked logits of p (every mask: Problem::keys, bias_row);
// lse (optional, float64 [B, Hq, Sq]) = log sum_j exp(x_j); fully masked rows give out = 0,
// lse = -inf.
void softmax_ref(const AttentionArgs& a, const Problem& p);
inline void softmax_ref(const AttentionArgs& a, const AttentionOptions& o) {
  softmax_ref(a, Problem::resolve(a, o));
}

// Gradients of softmax_ref: with P = softmax(x), O = P v: dv = P^T dout, dP = dout v^T,
// D_i = dout_i . O_i, dS = P (dP - D), dq = s c' dS k, dk = s c' dS^T q with c' the
// softcap's slope (1 without one); kv-head gradients summed over their query heads.
void softmax_backward_ref(const BackwardArgs& g, const Problem& p);
inline void softmax_backward_ref(const BackwardArgs& g, const AttentionOptions& o) {
  softmax_backward_ref(g, Problem::resolve(g.forward, o));
}

// de Brebisson & Vincent: r = sum_t w_t (phi(k_t).phi(q)) v_t, normalised per c.norm.
void linear_ref(const AttentionArgs& a, const AttentionOptions& o, const LinearConfig& c);

// Gradients of linear_ref (dq, dk, dv overwritten; with c.gated also dgate [B, Sk, Hk]).
// Per query: a_ij = w_j phi(q_i).phi(k_j), out_i = f_i sum_j a_ij v_j, f_i the normaliser
// (kernel: 1 / sum_j a_ij); the chain runs through f_i, w_j = sigmoid(g_j)^2 and phi'.
void linear_backward_ref(const BackwardArgs& g, const AttentionOptions& o, const LinearConfig& c,
                         const TensorView& dgate);

// Performer/RFA with positive random features drawn by random_features(c.seed, Hk, ...).
void rfa_ref(const AttentionArgs& a, const AttentionOptions& o, const RfaConfig& c);

// Randomized Attention, unbiased paper form, draws from CounterRng(c.seed); every mask of p
// but softcap.
void ra_ref(const AttentionArgs& a, const Problem& p, const RaConfig& c);
inline void ra_ref(const AttentionArgs& a, const AttentionOptions& o, const RaConfig& c) {
  ra_ref(a, Problem::resolve(a, o), c);
}

// LARA with 1-D segment-mean landmarks (non-causal only).
void lara_ref(const AttentionArgs& a, const AttentionOptions& o, const LaraConfig& c);

// Top-k attention: softmax over the k largest visible masked logits of each query (every
// mask of p, as softmax_ref; ties to the lower key index).
void topk_ref(const AttentionArgs& a, const Problem& p, const TopkConfig& c);
inline void topk_ref(const AttentionArgs& a, const AttentionOptions& o, const TopkConfig& c) {
  topk_ref(a, Problem::resolve(a, o), c);
}
// Gradients of topk_ref: softmax backward over each query's kept keys (the selection is
// piecewise constant, so it carries no gradient), through the softcap when there is one.
void topk_backward_ref(const BackwardArgs& g, const Problem& p, const TopkConfig& c);
inline void topk_backward_ref(const BackwardArgs& g, const AttentionOptions& o,
                              const TopkConfig& c) {
  topk_backward_ref(g, Problem::resolve(g.forward, o), c);
}

// Top-k feed-forward: out[t] = sum_{j in topk_j(x_t . keys_j)} relu(x_t . keys_j) values_j.
// x: [T, Dm], keys: [F, Dm], values: [F, Dout], out: [T, Dout] (rank 2, float64).
void topk_ff_ref(const ConstTensorView& x, const ConstTensorView& keys,
                 const ConstTensorView& values, const TensorView& out, int k);

// Luna: non-causal pack/unpack through a.memory, or the causal running-average form.
void luna_ref(const AttentionArgs& a, const AttentionOptions& o);
// Gradients of luna_ref: dq, dk, dv and, when g.dmemory is present, the memory's gradient.
// Non-causal composes softmax_backward_ref (unpack, then pack); causal is direct per row.
void luna_backward_ref(const BackwardArgs& g, const AttentionOptions& o);

// Chunk-wise memory-augmented attention (RMT recurrence + filtered memory write).
void memory_ref(const AttentionArgs& a, const AttentionOptions& o, const MemoryConfig& c);
// Gradients of memory_ref (dq, dk, dv, and dmemory, dfilter when present): the memory
// before each chunk is recomputed, then chunks are differentiated last to first (write,
// then reads), through the filter's adjoint.
void memory_backward_ref(const BackwardArgs& g, const AttentionOptions& o, const MemoryConfig& c);

// Heinsen: softmax over logits LSE_i(q_i + k_i), evaluated quadratically.
void heinsen_ref(const AttentionArgs& a, const AttentionOptions& o);

// Log-features of row n of head h of q (key = false) or k (key = true): lf[0:F).
using LogFeatureFn = std::function<void(int64_t b, int64_t n, int64_t h, bool key, double* lf)>;
// Receives dL/dlf for that row, to chain through the feature map (accumulate into dq / dk).
using LogFeatureGradFn =
    std::function<void(int64_t b, int64_t n, int64_t h, bool key, const double* dlf)>;
// Gradients of out_i = sum_j softmax_j(l_ij) v_j with l_ij = LSE_r(lq_ir + lk_jr) over the
// visible keys: Heinsen's logits, and RFA's in log-feature space. Quadratic and direct:
// dl_ij = P_ij (dout_i.v_j - dout_i.out_i), dl_ij/dlq_ir = dl_ij/dlk_jr = softmax_r(lq_i + lk_j).
// Zeroes dq, dk, dv, writes dv, and hands dL/dlq, dL/dlk row by row to chain.
void lse_logits_backward_ref(const BackwardArgs& g, const AttentionOptions& o, int64_t features,
                             const LogFeatureFn& log_features, const LogFeatureGradFn& chain);
// Gradients of heinsen_ref (lq = q, lk = k).
void heinsen_backward_ref(const BackwardArgs& g, const AttentionOptions& o);
// Gradients of rfa_ref: lq_r = s^(1/2) w_r.q - s |q|^2 / 2 (likewise k), chained to q, k.
void rfa_backward_ref(const BackwardArgs& g, const AttentionOptions& o, const RfaConfig& c);

}  // namespace attnkit::ref
