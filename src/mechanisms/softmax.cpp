// softmax: exact attention. float32 runs the tiled online-softmax kernel
// (src/cpu/softmax.cpp); float64 runs the reference. Streaming keeps a KV cache
// (src/mechanisms/kv_cache.hpp).
#include <algorithm>
#include <cmath>
#include <limits>

#include "src/cpu/kernels.hpp"
#include "src/mechanisms/kv_cache.hpp"
#include "src/mechanisms/registry.hpp"
#include "src/mechanisms/validate.hpp"
#include "src/reference/reference.hpp"

namespace attnkit::detail {

void softmax_kernel(const AttentionArgs& a, const Problem& p, Context& ctx) {
  if (decode_shaped(a) && !p.biased() && !a.lse.present()) {
    cpu::softmax_decode(a, p, ctx);  // reads each row's keys once
  } else {
    cpu::softmax_forward(a, p, ctx);
  }
}

namespace {

class Softmax final : public Mechanism {
 public:
  using Mechanism::Mechanism;
  std::string_view name() const override { return "softmax"; }
  Capabilities capabilities() const override {
    return {.causal = true,
            .streaming = true,
            .kv_cache = true,
            .backward = true,
            .emits_lse = true,
            .bfloat16 = true,
            .bfloat16_backward = true,
            .bf16_path = true,
            .masks = kAllMasks};
  }

  std::unique_ptr<StreamingState> new_stream(const StreamSpec& s) const override {
    check_stream_spec(s, /*window_ok=*/true);
    return make_state([&] {
      return std::make_unique<KvCache>(s, logit_scale(options(), s.head_dim), softmax_kernel);
    });
  }

  void validate_backward(const BackwardArgs& g) const override {
    // float32, float64, or bfloat16 throughout (q, k, v, out, dout and the gradients).
    const DType in = input_dtype(g.forward);
    const Shape sh = check_qkv(g.forward, in);
    // lse, when given, is the forward's (it saves the backward a forward pass; declared by
    // emits_lse, so the base class lets it through).
    check_backward(g, in);
    if (g.forward.lse.present()) {
      const ConstTensorView l = as_const(g.forward.lse);
      for (int64_t b = 0; b < sh.B; ++b)
        for (int64_t h = 0; h < sh.Hq; ++h)
          for (int64_t i = 0; i < sh.Sq; ++i) {
            const float x = l.at<const float>(b, h, i);
            if (std::isnan(x) || x == std::numeric_limits<float>::infinity())
              throw Error("lse", "must be finite or -inf (a row with no visible key)");
          }
    }
  }
  void backward_reference(const BackwardArgs& g, const Problem& p) const override {
    ref::softmax_backward_ref(g, p);
  }
  void backward_kernel(const BackwardArgs& g, const Problem& p, Context& ctx) const override {
    if (p.Sq == 0 && p.Sk == 0) return;
    cpu::softmax_backward(g, p, ctx);
  }

 protected:
  void validate(const AttentionArgs& a) const override { check_qkv(a, input_dtype(a)); }
  void run_reference(const AttentionArgs& a, const Problem& p) const override {
    ref::softmax_ref(a, p);
  }
  void run_kernel(const AttentionArgs& a, const Problem& p, Context& ctx) const override {
    softmax_kernel(a, p, ctx);
  }
};

}  // namespace

std::unique_ptr<Mechanism> make_softmax(const AttentionOptions& o, KeyValues&) {
  return std::make_unique<Softmax>(o);
}

}  // namespace attnkit::detail
