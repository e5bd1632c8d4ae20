// Every registered mechanism: float32 forward against its float64 reference, configs.
#include <cmath>
#include <functional>
#include <map>

#include "src/reference/reference.hpp"
#include "tests/testing/harness.hpp"

namespace attnkit::testing {
namespace {

using RefFn = std::function<void(const AttentionArgs&, const AttentionOptions&)>;

// name -> (config string, the reference with the same config).
std::map<std::string, std::pair<std::string, RefFn>> cases() {
  return {
      {"softmax", {"", [](auto& a, auto& o) { ref::softmax_ref(a, o); }}},
      {"linear",
       {"map=elu1,norm=kernel",
        [](auto& a, auto& o) {
          ref::linear_ref(a, o, {.map = FeatureMap::kEluPlusOne, .norm = LinearNorm::kKernel});
        }}},
      {"heinsen", {"", [](auto& a, auto& o) { ref::heinsen_ref(a, o); }}},
      {"rfa",
       {"features=32,seed=3",
        [](auto& a, auto& o) {
          ref::rfa_ref(a, o, {.features = 32, .orthogonal = false, .seed = 3});
        }}},
      {"performer",
       {"features=32,seed=3",
        [](auto& a, auto& o) {
          ref::rfa_ref(a, o, {.features = 32, .orthogonal = true, .seed = 3});
        }}},
      {"ra",
       {"samples=4,seed=2",
        [](auto& a, auto& o) { ref::ra_ref(a, o, {.samples = 4, .seed = 2}); }}},
      {"lara", {"landmarks=4", [](auto& a, auto& o) { ref::lara_ref(a, o, {.landmarks = 4}); }}},
      {"topk", {"k=5", [](auto& a, auto& o) { ref::topk_ref(a, o, {.k = 5}); }}},
      {"luna", {"", [](auto& a, auto& o) { ref::luna_ref(a, o); }}},
      {"memory",
       {"chunk=8,width=3",
        [](auto& a, auto& o) { ref::memory_ref(a, o, {.chunk = 8, .width = 3}); }}},
  };
}

TEST(Registry, ListsEveryMechanismOnce) {
  const std::vector<std::string> names = mechanism_names();
  EXPECT_EQ(names.size(), cases().size());
  for (const auto& n : names) EXPECT_EQ(cases().count(n), 1u) << n;
}

TEST(Registry, Float32ForwardMatchesReference) {
  Context ctx(2);
  for (const auto& [name, c] : cases()) {
    for (bool causal : {false, true}) {
      const AttentionOptions o{.causal = causal};
      std::unique_ptr<Mechanism> m;
      try {
        m = make_mechanism(name, o, c.first);
      } catch (const Error& e) {
        EXPECT_TRUE(causal) << name << ": " << e.what();  // only lara refuses, and only causal
        EXPECT_EQ(name, "lara");
        continue;
      }
      EXPECT_EQ(m->capabilities().causal || !causal, true) << name;
      const bool mem = m->capabilities().needs_memory;
      Dims d{2, 20, 20, 4, 2, 16, 16};
      Problem p(d, 77, Layout::kHeadMajorPadded, mem ? 3 : 0), r = p;
      p.key_lengths = r.key_lengths = {20, 13};
      m->forward(p.args32(), ctx);
      c.second(r.args64(), o);
      const Report rep = compare(p.out, true, r.out);
      EXPECT_LE(rep.max_abs, allowed(Budget{}, 0.0, rep.ref_max))
          << name << (causal ? " causal " : " ") << rep.str();
      if (mem) {
        const Report mrep = compare(p.memory_out, true, r.memory_out);
        EXPECT_LE(mrep.max_abs, allowed(Budget{}, 0.0, mrep.ref_max)) << name << " memory_out";
      }
    }
  }
}

TEST(Registry, ExtremeHeadDimsAndSingleTokens) {
  // Head dims 1 and 1024 (the largest accepted), one query, one key: every kernel agrees
  // with its reference.
  Context ctx(2);
  for (const auto& [name, c] : cases()) {
    for (Dims d :
         {Dims{1, 1, 1, 2, 1, 1, 1}, Dims{1, 3, 3, 1, 1, 1024, 1024}, Dims{2, 1, 5, 2, 2, 7, 7}}) {
      const auto m = make_mechanism(name, {}, c.first);
      if (name == "memory") d.Sk = d.Sq;  // chunks cut queries and keys alike
      Problem p(d, 5, Layout::kContiguous, m->capabilities().needs_memory ? 2 : 0), r = p;
      m->forward(p.args32(), ctx);
      c.second(r.args64(), {});
      const Report rep = compare(p.out, true, r.out);
      // Head dims to 1024: a float32 dot product rounds up to Dk times.
      EXPECT_LE(rep.max_abs, allowed(Budget{.c = static_cast<double>(d.Dk)}, 0.0, rep.ref_max))
          << name << " " << to_string(d) << " " << rep.str();
    }
  }
}

// Capabilities::bfloat16 tells the truth: a mechanism that claims bfloat16 inputs runs them
// (float32 out, near the float64 reference); one that does not refuses them by naming q.
TEST(Registry, Bfloat16CapabilityMatchesWhatForwardAccepts) {
  Context ctx(1);
  for (const auto& [name, c] : cases()) {
    const auto m = make_mechanism(name, {}, c.first);
    Problem p({1, 8, 8, 2, 2, 16, 16}, 3, Layout::kContiguous,
              m->capabilities().needs_memory ? 2 : 0);
    const std::vector<bfloat16> q = round_to_bf16(p.q), k = round_to_bf16(p.k),
                                v = round_to_bf16(p.v);
    Problem r = p;
    AttentionArgs a = p.args32();
    a.q = bf16_view(q, p.q);
    a.k = bf16_view(k, p.k);
    a.v = bf16_view(v, p.v);
    if (!m->capabilities().bfloat16) {
      EXPECT_EQ(m->check(a).rfind("q: ", 0), 0u) << name << ": " << m->check(a);
      continue;
    }
    m->forward(a, ctx);
    m->forward(r.args64(), ctx);  // the float64 reference on the same rounded inputs
    const Report rep = compare(p.out, true, r.out);
    EXPECT_LE(rep.max_abs, 0.05 * rep.ref_max + 1e-6) << name << " " << rep.str();
  }
}

TEST(Registry, ConfigErrorsNameTheKey) {
  auto message = [](std::string_view name, std::string_view cfg, AttentionOptions o = {}) {
    try {
      make_mechanism(name, o, cfg);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message("topk", "k=0"), "config k: must be in [1, 1073741824], got 0");
  EXPECT_EQ(message("topk", "kk=3"), "config: unknown key 'kk' for mechanism 'topk'");
  EXPECT_EQ(message("topk", "k"), "config: 'k' must be key=value");
  EXPECT_EQ(message("linear", "map=tanh"),
            "config map: 'tanh' must be one of: identity, elu1, relu, exp");
  EXPECT_EQ(message("linear", "norm=kernel"),
            "config norm: 'kernel' needs a positive feature map (map=elu1, relu or exp)");
  EXPECT_EQ(message("rfa", "seed=-1"), "config seed: '-1' is not a non-negative integer");
  EXPECT_EQ(message("lara", "", {.causal = true}),
            "causal: lara is non-causal by nature (its landmarks pool the whole sequence)");
  EXPECT_EQ(message("nope", ""),
            "mechanism: unknown name 'nope' (known: softmax, linear, heinsen, rfa, performer, ra, "
            "lara, topk, luna, memory)");
  EXPECT_EQ(message("softmax", "", {.scale = -1.0}),
            "scale: must be finite and >= 0 (0 means 1/sqrt(head_dim))");
  EXPECT_EQ(message("heinsen", "", {.scale = 0.5}),
            "scale: heinsen attention has no logit scale; leave it unset (0, or None in Python)");
}

// describe() and config_keys() come from what the factory parsed: every key, with the value
// given or its default, and a given value reads back the same.
TEST(Registry, DescribeListsEveryConfigKeyWithItsValue) {
  for (const std::string& name : mechanism_names()) {
    const auto keys = config_keys(name);
    const auto m = make_mechanism(name);
    for (const ConfigKey& k : keys) {
      EXPECT_FALSE(k.help.empty()) << name << " " << k.key;
      EXPECT_NE(m->describe().find(k.key + "=" + k.default_value), std::string::npos)
          << m->describe() << " lacks " << k.key;
    }
    EXPECT_EQ(m->config().size(), keys.size()) << name;
  }
  const auto lara = make_mechanism("lara", {}, "alpha=0.5,seed=7,mis=bh");
  EXPECT_EQ(lara->describe(), "lara(landmarks=16,mis=bh,alpha=0.5,sample=0,seed=7) non-causal");
  EXPECT_EQ(
      make_mechanism("memory", {.causal = true}, "temperature=2,filter_type=maxpool")->describe(),
      "memory(chunk=128,width=1,filter_type=maxpool,temperature=2) causal");
}

}  // namespace
}  // namespace attnkit::testing
