// heinsen: softmax-like attention with constant cost per token in log space (SPEC 5).
// float32 runs the log-feature linear kernel (src/cpu/log_linear.cpp) with lq = q, lk = k;
// float64 runs the quadratic reference.
#include "src/cpu/kernels.hpp"
#include "src/mechanisms/linear_stream.hpp"
#include "src/mechanisms/registry.hpp"
#include "src/mechanisms/validate.hpp"
#include "src/reference/reference.hpp"

namespace attnkit::detail {
namespace {

class Heinsen final : public Mechanism {
 public:
  using Mechanism::Mechanism;
  std::string_view name() const override { return "heinsen"; }
  Capabilities capabilities() const override {
    return {.causal = true, .streaming = true, .backward = true};
  }
  void validate_backward(const BackwardArgs& g) const override {
    validate(g.forward);
    check_backward(g, input_dtype(g.forward));
  }
  void backward_reference(const BackwardArgs& g, const Problem&) const override {
    ref::heinsen_backward_ref(g, options());
  }
  void backward_kernel(const BackwardArgs& g, const Problem& p, Context& ctx) const override {
    cpu::log_linear_backward(g, p, cpu::LogFeatures{}, ctx);
  }
  // State per kv head: dK x dV sums, dK normaliser and dK running maxima (float32).
  std::unique_ptr<StreamingState> new_stream(const StreamSpec& s) const override {
    check_stream_spec(s);
    const cpu::LogFeatures f{};
    return make_state([&] {
      return std::make_unique<FixedStateStream>(
          s, cpu::LinearState(s.batch, s.kv_heads, s.head_dim, s.value_dim, /*log_space=*/true),
          [f](auto& st, auto& k, auto& v, auto&, Context& ctx) {
            cpu::log_linear_append(st, k, v, f, ctx);
          },
          [f](auto& st, auto& q, auto& out, Context& ctx) {
            cpu::log_linear_query(st, q, out, f, ctx);
          });
    });
  }

 protected:
  void validate(const AttentionArgs& a) const override { check_qkv(a, input_dtype(a)); }
  void run_reference(const AttentionArgs& a, const Problem&) const override {
    ref::heinsen_ref(a, options());
  }
  void run_kernel(const AttentionArgs& a, const Problem& p, Context& ctx) const override {
    cpu::log_linear_forward(a, p, cpu::LogFeatures{}, ctx);
  }
};

}  // namespace

std::unique_ptr<Mechanism> make_heinsen(const AttentionOptions& o, KeyValues&) {
  if (o.scale != 0.0)
    throw Error("scale",
                "heinsen attention has no logit scale; leave it unset (0, or None in Python)");
  return std::make_unique<Heinsen>(o);
}

}  // namespace attnkit::detail
