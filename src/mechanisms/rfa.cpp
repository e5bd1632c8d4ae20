// rfa / performer: positive random-feature attention (SPEC 2(a)); performer draws
// block-orthogonal features by default, rfa i.i.d. ones.
#include "src/mechanisms/reference_backed.hpp"
#include "src/mechanisms/registry.hpp"
#include "src/mechanisms/validate.hpp"
#include "src/reference/reference.hpp"

namespace attnkit::detail {
namespace {

class Rfa final : public ReferenceBacked {
 public:
  Rfa(const AttentionOptions& o, const RfaConfig& c, std::string_view name)
      : ReferenceBacked(o), c_(c), name_(name) {}
  std::string_view name() const override { return name_; }
  Capabilities capabilities() const override { return {.causal = true}; }
  std::string describe() const override {
    return name_ + "(features=" + std::to_string(c_.features) + ",orthogonal=" +
           (c_.orthogonal ? "1" : "0") + ",seed=" + std::to_string(c_.seed) + ") " + to_string(options());
  }

 protected:
  void validate(const AttentionArgs& a) const override {
    check_qkv(a, input_dtype(a));
    check_unused(a, name(), false, false, false, false);
  }
  void reference(const AttentionArgs& a) const override { ref::rfa_ref(a, options(), c_); }

 private:
  RfaConfig c_;
  std::string name_;
};

std::unique_ptr<Mechanism> make(const AttentionOptions& o, KeyValues& kv, bool orthogonal,
                                std::string_view name) {
  RfaConfig c;
  c.features = kv.get_int("features", c.features, 1, 65536);
  c.orthogonal = kv.get_bool("orthogonal", orthogonal);
  c.seed = kv.get_u64("seed", c.seed);
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
