// The KV-cache stream of the mechanisms that read every token (softmax, topk): the cache
// (growing, or a sliding window's ring) and the stream's logit masks, with the mechanism's
// kernel run on a query against it.
#pragma once

#include <algorithm>
#include <functional>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "attnkit/mechanism.hpp"
#include "attnkit/problem.hpp"
#include "src/mechanisms/validate.hpp"

namespace attnkit::detail {

// Query rows up to which a call is a decode step: its mechanism's decode kernel reads each
// row's keys once instead of packing them for a tile of rows.
inline constexpr int64_t kDecodeQueries = 8;

// A float32 call of at most kDecodeQueries rows and no packed batch: the shape the decode
// kernels (softmax_decode, topk_decode) take; each mechanism adds what its kernel cannot do.
inline bool decode_shaped(const AttentionArgs& a) {
  return a.q.dtype == DType::kF32 && a.k.dtype == DType::kF32 && a.q.shape[1] <= kDecodeQueries &&
         !a.mask.varlen();
}

// Softmax attention by the kernel that suits the call: the decode kernel for a decode step
// with key-range masks only and no lse (it has no logit masks and no lse), else the tiled
// one (src/mechanisms/softmax.cpp: softmax's forward, its KV cache, memory's stream reads).
void softmax_kernel(const AttentionArgs& a, const Problem& p, Context& ctx);

// KV cache: keys and values per (batch, kv head), contiguous in time; grows by doubling.
// With a sliding window, a ring buffer of window + 1 tokens that never grows: token t sits in
// slot t % (window + 1). Queries attend every cached token without positions, so the ring's
// order does not matter to the kernels that read it (softmax, top-k: sums and selections).
class KvCache final : public StreamingState {
 public:
  // The mechanism's kernel for q [B, Tq, Hq, Dk] against the cache as k, v [B, len, Hk, D]
  // (non-causal: every query sees every cached token), with the stream's logit masks.
  using QueryKernel = std::function<void(const AttentionArgs&, const Problem&, Context&)>;

  KvCache(const StreamSpec& spec, float scale, QueryKernel kernel)
      : spec_(spec), scale_(scale), kernel_(std::move(kernel)) {
    reserve(ring() ? spec.window + 1 : std::max<int64_t>(spec.max_tokens, 16));
    if (spec.alibi_slopes.present()) {  // copied: the caller's array need not outlive us
      const ConstTensorView& t = spec.alibi_slopes;
      const int64_t rows = t.rank == 2 ? t.shape[0] : 1;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t h = 0; h < spec.heads; ++h)
          slopes_.push_back(static_cast<const float*>(
              t.data)[t.rank == 2 ? r * t.stride[0] + h * t.stride[1] : h * t.stride[0]]);
      spec_.alibi_slopes =
          make_view(slopes_.data(), t.rank == 2 ? std::initializer_list<int64_t>{rows, spec.heads}
                                                : std::initializer_list<int64_t>{spec.heads});
    }
  }

  void append(const ConstTensorView& k, const ConstTensorView& v, Context&) override {
    check_stream_append(spec_, k, v);
    const int64_t t = k.shape[1];
    if (!ring() && len_ + t >= kMaxDim) {  // a ring's length only counts tokens
      throw Error(
          "k", "the KV cache would hold " + std::to_string(len_ + t) + " tokens; at most 2^31 - 1");
    }
    if (!ring() && len_ + t > cap_) reserve(std::min(std::max(2 * cap_, len_ + t), kMaxDim - 1));
    // A ring keeps only the last cap_ of the appended tokens.
    const int64_t first = ring() ? std::max<int64_t>(0, t - cap_) : 0;
    for (int64_t b = 0; b < spec_.batch; ++b)
      for (int64_t h = 0; h < spec_.kv_heads; ++h)
        for (int64_t i = first; i < t; ++i) {
          const int64_t slot = ring() ? (len_ + i) % cap_ : len_ + i;
          std::copy_n(k.row<const float>(b, i, h), spec_.head_dim, key_row(b, h, slot));
          std::copy_n(v.row<const float>(b, i, h), spec_.value_dim, value_row(b, h, slot));
        }
    len_ += t;
  }

  void query(const ConstTensorView& q, const TensorView& out, Context& ctx) override {
    check_stream_query(spec_, q, out);
    AttentionArgs a;
    a.q = q;
    a.out = out;
    a.k = cache_view(keys_.data(), spec_.head_dim);
    a.v = cache_view(values_.data(), spec_.value_dim);
    if (q.shape[1] == 0) return;
    // Logit masks: the query rows sit at the last positions (the cache is in order).
    std::vector<int32_t> positions;
    const bool biased = spec_.softcap > 0 || spec_.alibi_slopes.present();
    if (biased) {
      a.mask.softcap = spec_.softcap;
      a.mask.alibi_slopes = spec_.alibi_slopes;
      positions.assign(spec_.batch, static_cast<int32_t>(len_ - q.shape[1]));
      a.mask.query_positions = positions;
    }
    kernel_(a, Problem::resolve(a, {.scale = scale_}), ctx);
    check_result(as_const(out), "out", a);
  }

  size_t state_bytes() const override { return (keys_.size() + values_.size()) * sizeof(float); }
  int64_t length() const override { return len_; }

 private:
  bool ring() const { return spec_.window >= 0; }
  int64_t cached() const { return ring() ? std::min(len_, cap_) : len_; }
  float* key_row(int64_t b, int64_t h, int64_t i) {
    return keys_.data() + ((b * spec_.kv_heads + h) * cap_ + i) * spec_.head_dim;
  }
  float* value_row(int64_t b, int64_t h, int64_t i) {
    return values_.data() + ((b * spec_.kv_heads + h) * cap_ + i) * spec_.value_dim;
  }
  // [B, len, Hk, D] view of a [B][Hk][cap][D] buffer.
  ConstTensorView cache_view(const float* data, int64_t dim) const {
    ConstTensorView v;
    v.data = data;
    v.dtype = DType::kF32;
    v.rank = 4;
    v.shape = {spec_.batch, cached(), spec_.kv_heads, dim};
    v.stride = {spec_.kv_heads * cap_ * dim, dim, cap_ * dim, 1};
    return v;
  }
  // Sizes fit in int64: check_stream_spec bounds batch x kv_heads x max_tokens x dims, and
  // append bounds the length by 2^31.
  void reserve(int64_t cap) {
    if (static_cast<double>(spec_.batch) * spec_.kv_heads * cap *
            (spec_.head_dim + spec_.value_dim) >=
        kMaxStreamElements) {
      throw Error("window", "a ring of " + std::to_string(cap) + " tokens x batch x kv_heads " +
                                "must be < 2^40 elements");
    }
    std::vector<float> k, v;
    try {
      k.resize(spec_.batch * spec_.kv_heads * cap * spec_.head_dim);
      v.resize(spec_.batch * spec_.kv_heads * cap * spec_.value_dim);
    } catch (const std::bad_alloc&) {
      throw OutOfMemory("stream: cannot grow the KV cache to " + std::to_string(cap) + " tokens");
    }
    for (int64_t bh = 0; bh < spec_.batch * spec_.kv_heads; ++bh) {
      std::copy_n(keys_.data() + bh * cap_ * spec_.head_dim, len_ * spec_.head_dim,
                  k.data() + bh * cap * spec_.head_dim);
      std::copy_n(values_.data() + bh * cap_ * spec_.value_dim, len_ * spec_.value_dim,
                  v.data() + bh * cap * spec_.value_dim);
    }
    keys_.swap(k);
    values_.swap(v);
    cap_ = cap;
  }

  StreamSpec spec_;
  float scale_;
  QueryKernel kernel_;
  int64_t len_ = 0, cap_ = 0;
  std::vector<float> keys_, values_;
  std::vector<float> slopes_;  // the copied ALiBi slopes spec_.alibi_slopes views
};

}  // namespace attnkit::detail
