// linear: de Brebisson & Vincent linear attention with gate and feature maps (SPEC 1).
#include "src/mechanisms/reference_backed.hpp"
#include "src/mechanisms/registry.hpp"
#include "src/mechanisms/validate.hpp"
#include "src/reference/reference.hpp"

namespace attnkit::detail {
namespace {

const std::vector<std::string> kMaps = {"identity", "elu1", "relu", "exp"};
const std::vector<std::string> kNorms = {"none", "length", "fixed1000", "kernel"};

class Linear final : public ReferenceBacked {
 public:
  Linear(const AttentionOptions& o, const LinearConfig& c) : ReferenceBacked(o), c_(c) {}
  std::string_view name() const override { return "linear"; }
  Capabilities capabilities() const override { return {.causal = true}; }
  std::string describe() const override {
    return "linear(map=" + kMaps[static_cast<int>(c_.feature_map)] +
           ",norm=" + kNorms[static_cast<int>(c_.norm)] + ",gated=" + (c_.gated ? "1" : "0") + ") " +
           to_string(options());
  }

 protected:
  void validate(const AttentionArgs& a) const override {
    const Shape sh = check_qkv(a, input_dtype(a));
    check_unused(a, name(), false, /*gate=*/c_.gated, false, false);
    if (c_.gated) {
      check_tensor(a.gate, "gate", 3, input_dtype(a));
      if (a.gate.shape[0] != sh.B || a.gate.shape[1] != sh.Sk || a.gate.shape[2] != sh.Hk) {
        throw Error("gate", "shape " + shape_string(a.gate) + " must be [B, Sk, Hk]");
      }
      check_finite(a.gate, "gate");
    }
  }
  void reference(const AttentionArgs& a) const override { ref::linear_ref(a, options(), c_); }

 private:
  LinearConfig c_;
};

}  // namespace

std::unique_ptr<Mechanism> make_linear(const AttentionOptions& o, KeyValues& kv) {
  if (o.scale != 0.0) throw Error("scale", "linear attention has no logit scale; leave it 0");
  LinearConfig c;
  c.feature_map = static_cast<FeatureMap>(kv.get_choice("map", 0, kMaps));
  c.norm = static_cast<LinearNorm>(kv.get_choice("norm", 0, kNorms));
  c.gated = kv.get_bool("gated", false);
  c.chunk = kv.get_int("chunk", c.chunk, 1, 4096);
  if (c.norm == LinearNorm::kKernel && c.feature_map == FeatureMap::kIdentity) {
    throw Error("config norm", "'kernel' needs a positive feature map (map=elu1, relu or exp)");
  }
  return std::make_unique<Linear>(o, c);
}

}  // namespace attnkit::detail
