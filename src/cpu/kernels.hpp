// Plain entry points of the fast CPU kernels. Each dispatches once per call to the
// best Highway target compiled in; callers have validated the arguments.
#pragma once

#include <algorithm>
#include <vector>

#include "attnkit/args.hpp"
#include "attnkit/context.hpp"
#include "attnkit/options.hpp"
#include "attnkit/problem.hpp"
#include "src/cpu/tiles.hpp"

namespace attnkit::cpu {

// src (bfloat16 or float16, rows contiguous, any other strides) widened exactly into dst:
// float32, contiguous in src's shape (src's element count).
void widen(const ConstTensorView& src, float* dst, Context& ctx);
// src (float32, contiguous in dst's shape) rounded to nearest even into dst (bfloat16 or
// float16; float16 gives +-Inf past 65504's rounding range).
void narrow(const float* src, const TensorView& dst, Context& ctx);

// Tiled online-softmax ("flash") attention, float32, every mask of p. q/k/v/out as in
// AttentionArgs; lse optional float32 [B, Hq, Sq]. O(B Hk Sk (Dk + Dv)) extra memory for
// packed K/V.
void softmax_forward(const AttentionArgs& a, const Problem& p, Context& ctx);
// softmax_forward for bfloat16 inputs on the tile path (src/cpu/softmax_tiles.cpp): path
// is tiles::Bf16Path::kAmx or kAmxEmulated. Every mask of p; P rounded to bfloat16 for P V.
void softmax_tiles_forward(const AttentionArgs& a, const Problem& p, tiles::Bf16Path path,
                           Context& ctx);
// Whether bfloat16 gradients run on the tiles (tiles::on_tiles(tiles::bf16_path()));
// otherwise softmax_backward widens bfloat16 rows to float32 as it packs them.
inline bool tiles_backward_path() { return tiles::on_tiles(tiles::bf16_path()); }
// Gradients of exact softmax attention (dq, dk, dv overwritten), float32, every mask of p
// (as softmax_forward): one pass over key
// blocks per (batch, kv head, key partition) with FlashAttention-2's five products; dq^T
// summed per fixed partition in order, so the result does not depend on the thread count.
// lse from AttentionArgs::lse when given (else a forward pass recomputes it). bfloat16 q, k,
// v, out, dout and gradients: on the tiles (tiles_backward_path()) the five products from
// bfloat16 with P and dS rounded to bfloat16 (float32 accumulation); otherwise the float32
// kernel on the rows widened as they are packed, the gradients rounded as they are stored.
void softmax_backward(const BackwardArgs& g, const Problem& p, Context& ctx);

// AVX512-BF16 score tiles (src/cpu/softmax_bf16.cpp), used by softmax_forward for
// bfloat16 inputs on the tiles::Bf16Path::kDot path.
namespace bf16 {
// s[r][0:keys) = sum_p dot(q2[r][p], kt2[p][j]) over pairs of bfloat16 packed in uint32.
// q2: [rows][ldq], kt2: [pairs][ldk], s: [rows][lds]; keys a multiple of 32.
void scores(const uint32_t* q2, int64_t ldq, int64_t rows, const uint32_t* kt2, int64_t pairs,
            int64_t ldk, int64_t keys, float* s, int64_t lds);
// The bfloat16 tile path's online softmax over one span of keys for 16 queries, key-major
// (requires tiles::dot_usable()): st [keys][ld] scores (lane n: query n), `keys` a multiple
// of 32 starting at key j0; query n sees keys [begin[n], end[n]) (int32 [16]). Works in log2
// units x = c s (c = scale log2(e), log2(e) when st is already scaled): m[16] the running max
// of x, l[16] the running sum of 2^(x - m). Writes P = 2^(x - m) as bfloat16 pairs of keys,
// pt [keys / 2][ld] uint32 (low half key 2p, high 2p + 1; 0 where not visible), and rescales
// ot ([dvp][ld], O transposed) and l by 2^(m_old - m). Exponentials from a degree-4
// polynomial (relative error 2.7e-6, far below the 2^-9 of rounding P). st is overwritten.
void softmax_columns(float* st, int64_t ld, int64_t keys, int64_t j0, const int32_t* begin,
                     const int32_t* end, float c, float* m, float* l, float* ot, int64_t dvp,
                     uint32_t* pt);
// The tile path's gathers (requires tiles::dot_usable(); 15 stride < 2^30): for the 16 rows
// row0 + j stride (j < 16) of `dim` bfloat16,
//   transpose16:  dst[c * ld + j] = row j's element c (bfloat16 columns);
//   gather_pairs: dst[p * ld + j] = row j's elements 2p (low half), 2p + 1 (high; 0 past
//                 dim): bfloat16 pairs of dims;
// and scaled_column: dst[c] = scale src[c * ld] for c < n (a float32 column as a row).
void transpose16(const uint16_t* row0, int64_t stride, int64_t dim, uint16_t* dst, int64_t ld);
void gather_pairs(const uint16_t* row0, int64_t stride, int64_t dim, uint32_t* dst, int64_t ld);
void scaled_column(const float* src, int64_t ld, int64_t n, float scale, float* dst);
// VDPBF16PS on registers (16 chains of 16 lanes x 2 products: 1024 flops per iteration),
// the dot path's peak for benchmarks. Requires tiles::dot_usable().
float dot_peak_loop(int64_t iters);
}  // namespace bf16

// Attention of a few queries over a long KV cache, streamed without packing (split over
// keys, merged by log-sum-exp in a fixed order). Each row reads its keys p.keys(b, i)
// (padding, causal position, window); no logit masks (p.biased()) and no lse.
void softmax_decode(const AttentionArgs& a, const Problem& p, Context& ctx);

// Zeroes the dk, dv rows of (batch b, kv head hk): a backward task that owns a kv head's
// key rows starts from these and accumulates its query heads' contributions.
inline void zero_key_gradients(const BackwardArgs& g, int64_t b, int64_t hk) {
  for (int64_t j = 0; j < g.dk.shape[1]; ++j) {
    float* dk = g.dk.row<float>(b, j, hk);
    float* dv = g.dv.row<float>(b, j, hk);
    std::fill(dk, dk + g.dk.shape[3], 0.0f);
    std::fill(dv, dv + g.dv.shape[3], 0.0f);
  }
}

// Head-dim padding of every fixed-size state: a multiple of every target's lane count.
inline constexpr int64_t kStatePad = 16;
// x rounded up to a multiple of m (signed sizes; hwy::RoundUpTo takes size_t).
inline int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t pad_to_state(int64_t x) { return RoundUp(x, kStatePad); }

// Fixed-size state of the linear families, one slot per (batch, kv head):
// c = sum_j e_j v_j^T ([features][dvp]), z = sum_j e_j, and for log-feature kernels the
// running per-feature log-maximum m that e_j = exp(log-feature_j - m) is taken against.
// `features` is padded to kStatePad; padding rows stay inert (c = z = 0, m = -inf).
struct LinearState {
  int64_t batch = 0, kv_heads = 0, features = 0, dv = 0, dvp = 0;
  int64_t tokens = 0;
  std::vector<float> c, z, m;
  LinearState() = default;
  LinearState(int64_t batch, int64_t kv_heads, int64_t features, int64_t dv, bool log_space);
  float* c_slot(int64_t s) { return c.data() + s * features * dvp; }
  float* z_slot(int64_t s) { return z.data() + s * features; }
  float* m_slot(int64_t s) { return m.data() + s * features; }
  size_t bytes() const { return (c.size() + z.size() + m.size()) * sizeof(float) + sizeof(tokens); }
};

// Log-feature linear attention: out_i = sum_j sum_r exp(lq_ir + lk_jr) v_j / sum_j sum_r
// exp(lq_ir + lk_jr), evaluated with per-feature running maxima, so no exp overflows.
//   heinsen: lq = q, lk = k (features = Dk).
//   rfa/performer: lq_r = sqrt(s) w_r.q, lk_r = sqrt(s) w_r.k - s|k|^2/2 (features = S);
//   omega: [Hk][S][Dk] float32 projections (the |q|^2 term cancels in the ratio).
struct LogFeatures {
  const float* omega = nullptr;  // null: identity (heinsen)
  int64_t features = 0;
  float sqrt_scale = 1.0f;
};
void log_linear_forward(const AttentionArgs& a, const Problem& p, const LogFeatures& f,
                        Context& ctx);
void log_linear_append(LinearState& s, const ConstTensorView& k, const ConstTensorView& v,
                       const LogFeatures& f, Context& ctx);
void log_linear_query(LinearState& s, const ConstTensorView& q, const TensorView& out,
                      const LogFeatures& f, Context& ctx);
// Gradients of log_linear_forward (dq, dk, dv overwritten), O(N F Dv): a forward sweep over
// query rows and a reverse sweep over keys, both against running per-feature maxima (no exp
// argument above 0). One task per (batch, kv head).
void log_linear_backward(const BackwardArgs& g, const Problem& p, const LogFeatures& f,
                         Context& ctx);

// Gradients of linear_forward (dq, dk, dv and, when gated, dgate overwritten), float32, in
// O(N D^2): a forward sweep over query rows (dq from the running state) and a reverse sweep
// over keys (dk, dv, dgate from the running sum of phi(q) dnum^T). One task per
// (batch, kv head) owns its key rows and its query heads' rows.
void linear_backward(const BackwardArgs& g, const Problem& p, const LinearConfig& c, Context& ctx);

// de Brebisson & Vincent linear attention with feature maps, gate and normalisers.
// Causal prefill is chunked (intra-chunk matmul + carried state).
void linear_forward(const AttentionArgs& a, const Problem& p, const LinearConfig& c, Context& ctx);
// Streaming (recurrent form). gate [B, T, Hk] float32 logits (gated=1) or absent: token t
// adds sigmoid(gate)^2 phi(k_t) v_t^T to C and sigmoid(gate)^2 phi(k_t) to z.
void linear_append(LinearState& s, const ConstTensorView& k, const ConstTensorView& v,
                   const ConstTensorView& gate, const LinearConfig& c, Context& ctx);
void linear_query(LinearState& s, const ConstTensorView& q, const TensorView& out,
                  const LinearConfig& c, Context& ctx);

// Causal Luna (running-average form): per (batch, q head) the state acc = sum_j a_j v_j^T
// ([L][dvp]) with a_j[l] = softplus_ln2(s k_j . p_l); out_t = softmax_l(s q_t . acc_l / t)
// acc / t. memory: [B, L, Hq, Dk] float32. LinearState slots are (batch, q head) here.
void luna_causal_forward(const AttentionArgs& a, const Problem& p, Context& ctx);
// Gradients of luna_causal_forward: dq, dk, dv and (when present) dmemory, O(N L D).
void luna_causal_backward(const BackwardArgs& g, const Problem& p, Context& ctx);
void luna_append(LinearState& s, const ConstTensorView& k, const ConstTensorView& v,
                 const ConstTensorView& memory, float scale, Context& ctx);
void luna_query(LinearState& s, const ConstTensorView& q, const TensorView& out,
                const ConstTensorView& memory, float scale, Context& ctx);

// Top-k attention: per query, softmax over its k largest visible masked logits (every mask
// of p; ties to the lower key index). A task scores query_chunk rows at once over their
// key range, so extra memory is O(query_chunk * Sk) per thread plus the packed keys.
void topk_forward(const AttentionArgs& a, const Problem& p, int k, int query_chunk, Context& ctx);
// topk_forward's result for a few query rows against a long key sequence (decode): each row
// scored from the key rows, no packing. Any mask.
void topk_decode(const AttentionArgs& a, const Problem& p, int k, Context& ctx);
// Gradients of topk_forward (dq, dk, dv overwritten): the same scores and selection, then
// softmax backward over the kept keys. One task per (batch, kv head).
void topk_backward(const BackwardArgs& g, const Problem& p, int k, int query_chunk, Context& ctx);
// Top-k feed-forward: out[t] = sum over the k largest x_t . keys_j of relu(x_t . keys_j) values_j.
// x [T, Dm], keys [F, Dm], values [F, Dout], out [T, Dout], float32, rows contiguous.
void topk_ff_forward(const ConstTensorView& x, const ConstTensorView& keys,
                     const ConstTensorView& values, const TensorView& out, int k, Context& ctx);

// Chunk-wise memory-augmented attention (RMT recurrence + filtered memory write):
// per (batch, q head) sequentially over chunks; every read and write is a small softmax
// attention done with the register-tiled matmul. filter: optional [Hk, width] weights.
void memory_forward(const AttentionArgs& a, const Problem& p, const MemoryConfig& c, Context& ctx);
// Gradients of memory_forward: dq, dk, dv and (when present) dmemory and dfilter (the conv
// filter weights' gradient, per task, summed in order). One task per (batch, kv head); keeps
// the memory before every chunk.
void memory_backward(const BackwardArgs& g, const Problem& p, const MemoryConfig& c, Context& ctx);

// Randomized Attention (unbiased): the same draws as ref::ra_ref (CounterRng streams
// (b, h, i); uniform counter t; normal counters 2^40 + t Dk + d); every mask of p but softcap.
void ra_forward(const AttentionArgs& a, const Problem& p, const RaConfig& c, Context& ctx);

// LARA with 1-D segment-mean landmarks (non-causal), as ref::lara_ref.
void lara_forward(const AttentionArgs& a, const Problem& p, const LaraConfig& c, Context& ctx);

}  // namespace attnkit::cpu
