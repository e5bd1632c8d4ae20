// rfa / performer: positive random-feature attention (SPEC 2(a)); performer draws
// block-orthogonal features by default, rfa i.i.d. ones. float32 runs the log-feature
// linear kernel (src/cpu/log_linear.cpp); float64 the reference. Both draw the same
// projections from random_features(seed, Hk, S, Dk, orthogonal).
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "attnkit/random.hpp"
#include "src/cpu/kernels.hpp"
#include "src/mechanisms/linear_stream.hpp"
#include "src/mechanisms/registry.hpp"
#include "src/mechanisms/validate.hpp"
#include "src/reference/reference.hpp"

namespace attnkit::detail {
namespace {

class Rfa final : public Mechanism {
 public:
  Rfa(const AttentionOptions& o, const RfaConfig& c, std::string_view name)
      : Mechanism(o), c_(c), name_(name) {}
  std::string_view name() const override { return name_; }
  Capabilities capabilities() const override {
    return {.causal = true, .streaming = true, .backward = true};
  }
  void validate_backward(const BackwardArgs& g) const override {
    validate(g.forward);
    check_backward(g, input_dtype(g.forward));
  }
  void backward_reference(const BackwardArgs& g, const Problem&) const override {
    ref::rfa_backward_ref(g, options(), c_);
  }
  void backward_kernel(const BackwardArgs& g, const Problem& p, Context& ctx) const override {
    const auto omega = projections(g.forward.k.shape[2], g.forward.q.shape[3]);
    cpu::log_linear_backward(g, p, features(*omega, g.forward.q.shape[3]), ctx);
  }
  // State per kv head: S x dV sums, S normaliser and S running maxima (float32).
  std::unique_ptr<StreamingState> new_stream(const StreamSpec& s) const override {
    check_stream_spec(s);
    auto omega = projections(s.kv_heads, s.head_dim);
    const cpu::LogFeatures f = features(*omega, s.head_dim);
    return make_state([&] {
      return std::make_unique<FixedStateStream>(
          s, cpu::LinearState(s.batch, s.kv_heads, c_.features, s.value_dim, /*log_space=*/true),
          [f](auto& st, auto& k, auto& v, auto&, Context& ctx) {
            cpu::log_linear_append(st, k, v, f, ctx);
          },
          [f](auto& st, auto& q, auto& out, Context& ctx) {
            cpu::log_linear_query(st, q, out, f, ctx);
          },
          omega);
    });
  }

 protected:
  void validate(const AttentionArgs& a) const override { check_qkv(a, input_dtype(a)); }
  void run_reference(const AttentionArgs& a, const Problem&) const override {
    ref::rfa_ref(a, options(), c_);
  }
  void run_kernel(const AttentionArgs& a, const Problem& p, Context& ctx) const override {
    const auto omega = projections(a.k.shape[2], a.q.shape[3]);
    cpu::log_linear_forward(a, p, features(*omega, a.q.shape[3]), ctx);
  }

 private:
  // The draws for (kv_heads, dim), made once per mechanism and shape: drawing (Box-Muller,
  // Gram-Schmidt blocks) cost ~10% of a performer call at N=4k.
  std::shared_ptr<const std::vector<float>> projections(int64_t kv_heads, int64_t dim) const {
    const std::lock_guard lock(draws_mu_);
    const std::pair<int64_t, int64_t> key{kv_heads, dim};
    // A bounded cache: past a model's few shapes it starts over.
    if (draws_.size() >= 16 && draws_.count(key) == 0) draws_.clear();
    auto& slot = draws_[key];
    if (slot == nullptr) {
      const std::vector<double> w = random_features(
          c_.seed, static_cast<int>(kv_heads), c_.features, static_cast<int>(dim), c_.orthogonal);
      slot = std::make_shared<const std::vector<float>>(w.begin(), w.end());
    }
    return slot;
  }
  cpu::LogFeatures features(const std::vector<float>& omega, int64_t dim) const {
    return {.omega = omega.data(),
            .features = c_.features,
            .sqrt_scale = std::sqrt(logit_scale(options(), dim))};
  }

  RfaConfig c_;
  std::string name_;
  mutable std::mutex draws_mu_;
  mutable std::map<std::pair<int64_t, int64_t>, std::shared_ptr<const std::vector<float>>> draws_;
};

std::unique_ptr<Mechanism> make(const AttentionOptions& o, KeyValues& kv, bool orthogonal,
                                std::string_view name) {
  RfaConfig c;
  c.features = kv.get_int("features", c.features, 1, 65536, "S: random features per head");
  c.orthogonal =
      kv.get_bool("orthogonal", orthogonal, "block-orthogonal draws (Performer FAVOR+); 0: i.i.d.");
  c.seed = kv.get_u64("seed", c.seed, "random projections: same seed, same result");
  return std::make_unique<Rfa>(o, c, name);
}

}  // namespace

std::unique_ptr<Mechanism> make_rfa(const AttentionOptions& o, KeyValues& kv) {
  return make(o, kv, false, "rfa");
}
std::unique_ptr<Mechanism> make_performer(const AttentionOptions& o, KeyValues& kv) {
  return make(o, kv, true, "performer");
}

}  // namespace attnkit::detail
