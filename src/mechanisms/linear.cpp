// linear: de Brebisson & Vincent linear attention with gate and feature maps (SPEC 1).
// float32 runs src/cpu/linear.cpp (chunked causal prefill, recurrent streaming); map=exp
// with norm=kernel and no gate is Heinsen's mechanism and runs its overflow-free log-space
// kernel. float64 runs the reference.
#include <cmath>

#include "src/cpu/kernels.hpp"
#include "src/mechanisms/linear_stream.hpp"
#include "src/mechanisms/registry.hpp"
#include "src/mechanisms/validate.hpp"
#include "src/reference/reference.hpp"

namespace attnkit::detail {
namespace {

// constexpr, not a std::vector: factories run during other files' static initialisation.
constexpr std::string_view kMaps[] = {"identity", "elu1", "relu", "exp"};
constexpr std::string_view kNorms[] = {"none", "length", "fixed1000", "kernel"};

class Linear final : public Mechanism {
 public:
  Linear(const AttentionOptions& o, const LinearConfig& c) : Mechanism(o), c_(c) {}
  std::string_view name() const override { return "linear"; }
  Capabilities capabilities() const override {
    return {.causal = true,
            .streaming = true,
            .backward = true,
            .uses_gate = c_.gated,
            .bfloat16 = true};
  }
  void validate_backward(const BackwardArgs& g) const override {
    validate(g.forward);
    const DType in = input_dtype(g.forward);
    check_backward(g, in);  // validate() above checked q, k, v (one scan for NaN/Inf)
    if (c_.gated) {
      check_input_gradient(g, g.dgate, "dgate", g.forward.gate, "gate", compute_dtype(in),
                           /*required=*/true);
    } else if (g.dgate.present()) {
      throw Error("dgate", "is only for gated=1");
    }
  }
  void backward_reference(const BackwardArgs& g, const Problem&) const override {
    ref::linear_backward_ref(g, options(), c_, g.dgate);
  }
  void backward_kernel(const BackwardArgs& g, const Problem& p, Context& ctx) const override {
    cpu::linear_backward(g, p, c_, ctx);
  }

  // State per kv head: C (Dk x Dv) and z (Dk) float32, plus the token count. gated=1: each
  // append takes the tokens' gate logits (append_gated).
  std::unique_ptr<StreamingState> new_stream(const StreamSpec& s) const override {
    check_stream_spec(s);
    const LinearConfig c = c_;
    return make_state([&] {
      return std::make_unique<FixedStateStream>(
          s, cpu::LinearState(s.batch, s.kv_heads, s.head_dim, s.value_dim, /*log_space=*/false),
          [c](auto& st, auto& k, auto& v, auto& gate, Context& ctx) {
            cpu::linear_append(st, k, v, gate, c, ctx);
          },
          [c](auto& st, auto& q, auto& out, Context& ctx) {
            cpu::linear_query(st, q, out, c, ctx);
          },
          nullptr, c.gated);
    });
  }

 protected:
  void validate(const AttentionArgs& a) const override {
    const DType in = input_dtype(a);
    const Shape sh = check_qkv(a, in);
    if (c_.gated) {
      check_tensor(a.gate, "gate", 3, compute_dtype(in));
      if (a.gate.shape[0] != sh.B || a.gate.shape[1] != sh.Sk || a.gate.shape[2] != sh.Hk) {
        throw Error("gate", "shape " + shape_string(a.gate) + " must be [B, Sk, Hk]");
      }
      check_finite(a.gate, "gate");
    }
    if (c_.map == FeatureMap::kExp && !log_space() && in != DType::kF64 &&
        !InputsOnly::active()) {  // a value scan: forward does it
      // exp(q).exp(k) summed over keys must stay inside float32.
      for (auto [t, name] : {std::pair{a.q, "q"}, {a.k, "k"}}) {
        if (max_entry(t) > 30.0f) {
          throw Error(name,
                      "entries must be <= 30 with map=exp (exp overflows float32); use norm=kernel "
                      "(Heinsen's log-space form) for larger values");
        }
      }
    }
  }
  void run_reference(const AttentionArgs& a, const Problem&) const override {
    ref::linear_ref(a, options(), c_);
  }
  void run_kernel(const AttentionArgs& a, const Problem& p, Context& ctx) const override {
    if (log_space()) {
      cpu::log_linear_forward(a, p, cpu::LogFeatures{}, ctx);
    } else {
      cpu::linear_forward(a, p, c_, ctx);
    }
  }

 private:
  // phi = exp with the kernel normaliser and no gate is exactly Heinsen's mechanism.
  bool log_space() const {
    return c_.map == FeatureMap::kExp && c_.norm == LinearNorm::kKernel && !c_.gated;
  }
  static float max_entry(const ConstTensorView& t) {
    float m = -INFINITY;
    for (int64_t b = 0; b < t.shape[0]; ++b)
      for (int64_t i = 0; i < t.shape[1]; ++i)
        for (int64_t h = 0; h < t.shape[2]; ++h) {
          for (int64_t d = 0; d < t.shape[3]; ++d) {
            m = std::max(m, t.dtype == DType::kBF16  ? to_float(t.at<const bfloat16>(b, i, h, d))
                            : t.dtype == DType::kF16 ? to_float(t.at<const float16>(b, i, h, d))
                                                     : t.at<const float>(b, i, h, d));
          }
        }
    return m;
  }

  LinearConfig c_;
};

}  // namespace

std::unique_ptr<Mechanism> make_linear(const AttentionOptions& o, KeyValues& kv) {
  if (o.scale != 0.0)
    throw Error("scale",
                "linear attention has no logit scale; leave it unset (0, or None in Python)");
  LinearConfig c;
  c.map = static_cast<FeatureMap>(kv.get_choice("map", 0, kMaps, "feature map phi of q and k"));
  c.norm = static_cast<LinearNorm>(
      kv.get_choice("norm", 0, kNorms, "normaliser: none, 1/T, 1000/T, or phi(q).sum phi(k)"));
  c.gated =
      kv.get_bool("gated", false, "gate u_t = sigmoid(gate) weighs token t by u_t^2 (needs gate)");
  c.chunk = kv.get_int("chunk", c.chunk, 1, 1024, "causal prefill chunk length (kernel blocking)");
  if (c.norm == LinearNorm::kKernel && c.map == FeatureMap::kIdentity) {
    throw Error("config norm", "'kernel' needs a positive feature map (map=elu1, relu or exp)");
  }
  return std::make_unique<Linear>(o, c);
}

}  // namespace attnkit::detail
