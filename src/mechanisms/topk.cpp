// topk: top-k attention with query chunks (SPEC 3(a)), and top-k feed-forward.
// float32 runs src/cpu/topk.cpp; float64 runs the reference.
#include <cmath>

#include "src/cpu/kernels.hpp"
#include "src/mechanisms/kv_cache.hpp"
#include "src/mechanisms/registry.hpp"
#include "src/mechanisms/validate.hpp"
#include "src/reference/reference.hpp"

namespace attnkit {
namespace detail {
namespace {

class Topk final : public Mechanism {
 public:
  Topk(const AttentionOptions& o, const TopkConfig& c) : Mechanism(o), c_(c) {}
  std::string_view name() const override { return "topk"; }
  Capabilities capabilities() const override {
    return {
        .causal = true, .streaming = true, .kv_cache = true, .backward = true, .masks = kAllMasks};
  }

  // A KV cache (or a window's ring) with top-k over the cached tokens per query: a decode
  // step equals the last row of the causal forward with the same masks.
  std::unique_ptr<StreamingState> new_stream(const StreamSpec& s) const override {
    check_stream_spec(s, /*window_ok=*/true);
    return make_state([&] {
      return std::make_unique<KvCache>(
          s, logit_scale(options(), s.head_dim),
          [c = c_](const AttentionArgs& a, const Problem& p, Context& ctx) { run(a, p, c, ctx); });
    });
  }
  void validate_backward(const BackwardArgs& g) const override {
    validate(g.forward);
    check_backward(g, input_dtype(g.forward));
  }
  void backward_reference(const BackwardArgs& g, const Problem& p) const override {
    ref::topk_backward_ref(g, p, c_);
  }
  void backward_kernel(const BackwardArgs& g, const Problem& p, Context& ctx) const override {
    cpu::topk_backward(g, p, c_.k, c_.query_chunk, ctx);
  }

 protected:
  void validate(const AttentionArgs& a) const override { check_qkv(a, input_dtype(a)); }
  void run_reference(const AttentionArgs& a, const Problem& p) const override {
    ref::topk_ref(a, p, c_);
  }
  void run_kernel(const AttentionArgs& a, const Problem& p, Context& ctx) const override {
    run(a, p, c_, ctx);
  }

 private:
  // A decode step (any mask) reads each row's keys once; more rows share packed keys.
  static void run(const AttentionArgs& a, const Problem& p, const TopkConfig& c, Context& ctx) {
    if (decode_shaped(a)) {
      cpu::topk_decode(a, p, c.k, ctx);
    } else {
      cpu::topk_forward(a, p, c.k, c.query_chunk, ctx);
    }
  }

  TopkConfig c_;
};

}  // namespace

std::unique_ptr<Mechanism> make_topk(const AttentionOptions& o, KeyValues& kv) {
  TopkConfig c;
  c.k = kv.get_int("k", c.k, 1, 1 << 30, "keys kept per query (k >= Sk: exact softmax)");
  c.query_chunk =
      kv.get_int("query_chunk", c.query_chunk, 1, 1 << 20,
                 "queries scored together by one task (query_chunk x Sk scores per thread)");
  return std::make_unique<Topk>(o, c);
}

}  // namespace detail

void topk_feed_forward(const ConstTensorView& x, const ConstTensorView& keys,
                       const ConstTensorView& values, const TensorView& out, int k, Context& ctx) {
  using detail::check_tensor;
  const DType dt = x.present() && x.dtype == DType::kF64 ? DType::kF64 : DType::kF32;
  check_tensor(x, "x", 2, dt);
  check_tensor(keys, "keys", 2, dt);
  check_tensor(values, "values", 2, dt);
  check_tensor(as_const(out), "out", 2, dt);
  detail::check_no_self_overlap(as_const(out), "out");
  if (k < 1) throw Error("k", "must be >= 1, got " + std::to_string(k));
  if (x.shape[1] < 1) throw Error("x", "dim 1 (model dim) must be >= 1");
  if (keys.shape[1] != x.shape[1]) {
    throw Error("keys", "dim 1 (" + std::to_string(keys.shape[1]) + ") must equal x dim 1 (" +
                            std::to_string(x.shape[1]) + ")");
  }
  if (values.shape[0] != keys.shape[0]) {
    throw Error("values", "dim 0 (" + std::to_string(values.shape[0]) +
                              ") must equal keys dim 0 (" + std::to_string(keys.shape[0]) + ")");
  }
  if (out.shape[0] != x.shape[0] || out.shape[1] != values.shape[1]) {
    throw Error("out", "shape " + shape_string(out) + " must be [T, Dout] = [" +
                           std::to_string(x.shape[0]) + ", " + std::to_string(values.shape[1]) +
                           "]");
  }
  for (auto [t, name] : {std::pair{x, "x"}, {keys, "keys"}, {values, "values"}}) {
    detail::check_finite(t, name);
    detail::check_no_overlap(as_const(out), "out", t, name);
  }
  if (x.shape[0] == 0) return;
  if (dt == DType::kF64) {
    ref::topk_ff_ref(x, keys, values, out, k);
  } else {
    cpu::topk_ff_forward(x, keys, values, out, k, ctx);
  }
}

}  // namespace attnkit
