// ra: Randomized Attention, the unbiased quadratic estimator (SPEC 2(a)). float32 runs
// src/cpu/ra.cpp with the same draws as the reference; float64 runs the reference.
#include <cmath>

#include "src/cpu/kernels.hpp"
#include "src/mechanisms/registry.hpp"
#include "src/mechanisms/validate.hpp"
#include "src/reference/reference.hpp"

namespace attnkit::detail {
namespace {

class Ra final : public Mechanism {
 public:
  Ra(const AttentionOptions& o, const RaConfig& c) : Mechanism(o), c_(c) {}
  std::string_view name() const override { return "ra"; }
  // Key ranges and additive biases keep the estimator unbiased; a softcap would not.
  Capabilities capabilities() const override {
    return {.causal = true, .masks = kAllMasks & ~kMaskSoftcap};
  }

 protected:
  void validate(const AttentionArgs& a) const override { check_qkv(a, input_dtype(a)); }
  void run_reference(const AttentionArgs& a, const Problem& p) const override {
    ref::ra_ref(a, p, c_);
  }
  void run_kernel(const AttentionArgs& a, const Problem& p, Context& ctx) const override {
    cpu::ra_forward(a, p, c_, ctx);
  }

 private:
  RaConfig c_;
};

}  // namespace

std::unique_ptr<Mechanism> make_ra(const AttentionOptions& o, KeyValues& kv) {
  RaConfig c;
  c.samples = kv.get_int("samples", c.samples, 1, 1 << 20, "Monte-Carlo samples per query");
  c.seed = kv.get_u64("seed", c.seed, "random draws: same seed, same result");
  return std::make_unique<Ra>(o, c);
}

}  // namespace attnkit::detail
