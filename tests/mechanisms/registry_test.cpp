// Every registered mechanism: float32 forward against its float64 reference, configs.
#include <algorithm>
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

// Half an ulp at 1 of a narrow dtype: the relative error of rounding to it.
double half_ulp(DType t) { return t == DType::kBF16 ? 0x1p-8 : 0x1p-11; }

// fn(element offset) for every element of o's [B, S, H, D] shape under its strides.
template <typename Fn>
void for_each_element(const Operand& o, Fn&& fn) {
  for (int64_t b = 0; b < o.shape[0]; ++b)
    for (int64_t t = 0; t < o.shape[1]; ++t)
      for (int64_t h = 0; h < o.shape[2]; ++h)
        for (int64_t c = 0; c < o.shape[3]; ++c)
          fn(b * o.stride[0] + t * o.stride[1] + h * o.stride[2] + c);
}

// Narrow gradients (got, laid out like want) against the float32 kernel's on the same values:
// within their rounding (half an ulp, plus 1e-5 of the largest for kernels whose order of
// summation follows the layout); bfloat16 kernels (native) round P and dS too: 2^-7 of it.
void expect_narrow_grads(const std::vector<uint16_t>& got, const Operand& want, DType t,
                         bool native, const std::string& what) {
  double worst = 0, wmax = 0;
  for_each_element(want, [&](int64_t o) { wmax = std::max(wmax, std::abs(double{want.f32[o]})); });
  for_each_element(want, [&](int64_t o) {
    const double w = want.f32[o], g = from_narrow_bits(got[o], t);
    worst = std::max(worst, std::abs(g - w) - half_ulp(t) * std::abs(w));
  });
  EXPECT_LE(worst, (native ? 0x1p-7 : 1e-5) * wmax + 1e-7) << what;
}

// Every mechanism takes bfloat16 and float16 q, k, v (strided), writes out in their dtype
// (exactly the rounding of the float32 out the same call gives when out is float32), near the
// float64 reference on the same rounded values; its backward writes narrow gradients, the
// float32 kernel's rounded.
TEST(Registry, NarrowInputsRunEveryMechanismInTheirDtype) {
  Context ctx(2);
  for (const auto& [name, c] : cases()) {
    for (DType dt : {DType::kBF16, DType::kF16}) {
      for (bool causal : {false, true}) {
        if (causal && name == "lara") continue;  // non-causal by nature
        const auto m = make_mechanism(name, {.causal = causal}, c.first);
        const Capabilities caps = m->capabilities();
        const std::string what = name + " " + dtype_name(dt) + (causal ? " causal" : "");
        Problem p({2, 12, 12, 4, 2, 16, 16}, 41, Layout::kHeadMajorPadded,
                  caps.needs_memory ? 3 : 0);
        const std::vector<uint16_t> q = round_to_narrow(p.q, dt), k = round_to_narrow(p.k, dt),
                                    v = round_to_narrow(p.v, dt);
        Problem r = p;
        m->forward(r.args64(), ctx);  // the reference on the rounded values
        std::vector<uint16_t> out(p.out.f32.size());
        AttentionArgs a = p.args32();
        a.q = narrow_view(q, p.q, dt);
        a.k = narrow_view(k, p.k, dt);
        a.v = narrow_view(v, p.v, dt);
        a.out = narrow_mut(out, p.out, dt);
        m->forward(a, ctx);
        AttentionArgs wide = a;
        wide.out = p.out.mut32();
        m->forward(wide, ctx);
        const bool native = dt == DType::kBF16 && caps.bfloat16;
        double vmax = 0, ref_max = 0, worst = 0;
        int64_t unrounded = 0;
        for (float x : p.v.f32) vmax = std::max(vmax, std::abs(double{x}));
        for_each_element(p.out, [&](int64_t o) {
          const double want = r.out.f64[o], got = from_narrow_bits(out[o], dt);
          ref_max = std::max(ref_max, std::abs(want));
          worst = std::max(worst, std::abs(got - want) - half_ulp(dt) * std::abs(want));
          unrounded += out[o] != to_narrow_bits(p.out.f32[o], dt);
        });
        EXPECT_EQ(unrounded, 0) << what << ": narrow out is not the float32 out rounded";
        // bfloat16 kernels round P for P V: 2^-9 of max |v| (twice, for slack).
        EXPECT_LE(worst, allowed(Budget{}, 0.0, ref_max) + (native ? 0x1p-8 * vmax : 0.0)) << what;
        if (caps.needs_memory) {
          const Report mrep = compare(p.memory_out, true, r.memory_out);
          EXPECT_LE(mrep.max_abs, allowed(Budget{}, 0.0, mrep.ref_max)) << what << " memory_out";
        }
        if (!caps.backward) continue;
        // The float32 yardstick reads the same values: the rounded inputs, the narrow out.
        for_each_element(
            p.out, [&](int64_t o) { p.out.f64[o] = p.out.f32[o] = from_narrow_bits(out[o], dt); });
        Grads g32(p, 9);
        const std::vector<uint16_t> dout = round_to_narrow(g32.dout, dt);
        Grads gn = g32;
        std::vector<uint16_t> dq(g32.dq.f32.size()), dk(g32.dk.f32.size()), dv(g32.dv.f32.size());
        BackwardArgs g = gn.args32(p);
        g.forward.q = a.q;
        g.forward.k = a.k;
        g.forward.v = a.v;
        g.forward.out = narrow_mut(out, p.out, dt);
        g.dout = narrow_view(dout, g32.dout, dt);
        g.dq = narrow_mut(dq, g32.dq, dt);
        g.dk = narrow_mut(dk, g32.dk, dt);
        g.dv = narrow_mut(dv, g32.dv, dt);
        m->backward(g, ctx);
        m->backward(g32.args32(p), ctx);
        const bool native_grads = dt == DType::kBF16 && caps.bfloat16_backward;
        expect_narrow_grads(dq, g32.dq, dt, native_grads, what + " dq");
        expect_narrow_grads(dk, g32.dk, dt, native_grads, what + " dk");
        expect_narrow_grads(dv, g32.dv, dt, native_grads, what + " dv");
        if (caps.needs_memory) {  // dmemory is float32 (memory is)
          double worst_m = 0, mmax = 0;
          for (size_t i = 0; i < gn.dmemory.f32.size(); ++i) {
            worst_m = std::max(worst_m, std::abs(double{gn.dmemory.f32[i] - g32.dmemory.f32[i]}));
            mmax = std::max(mmax, std::abs(double{g32.dmemory.f32[i]}));
          }
          EXPECT_LE(worst_m, 1e-5 * mmax + 1e-7) << what << " dmemory";
        }
      }
    }
  }
}

// Narrow arguments break the rules with the argument named: mixed dtypes, an out of a third
// dtype, NaN and Inf, and a float16 out that the result does not fit (65504 and more).
TEST(Registry, NarrowInputsFailClearly) {
  Context ctx(1);
  Problem p({1, 4, 4, 1, 1, 8, 8}, 3);
  const std::vector<uint16_t> qh = round_to_narrow(p.q, DType::kF16),
                              kb = round_to_narrow(p.k, DType::kBF16);
  std::vector<uint16_t> out(p.out.f32.size());
  const auto softmax = make_mechanism("softmax");
  AttentionArgs a = p.args32();
  a.q = narrow_view(qh, p.q, DType::kF16);
  a.k = narrow_view(kb, p.k, DType::kBF16);
  EXPECT_EQ(softmax->check(a), "k: must be float16, got bfloat16");
  const std::vector<uint16_t> kh = round_to_narrow(p.k, DType::kF16),
                              vh = round_to_narrow(p.v, DType::kF16);
  a.k = narrow_view(kh, p.k, DType::kF16);
  a.v = narrow_view(vh, p.v, DType::kF16);
  a.out = narrow_mut(out, p.out, DType::kBF16);
  EXPECT_EQ(softmax->check(a),
            "out: must be float16 or float32 (for float16 q, k, v), got bfloat16");
  a.out = p.out.mut64();
  EXPECT_EQ(softmax->check(a),
            "out: must be float16 or float32 (for float16 q, k, v), got float64");
  a.out = narrow_mut(out, p.out, DType::kF16);
  EXPECT_EQ(softmax->check(a), "");
  for (uint16_t bad : {uint16_t{0x7c00}, uint16_t{0x7e00}}) {  // +Inf, NaN
    std::vector<uint16_t> vbad = vh;
    vbad[5] = bad;
    AttentionArgs b = a;
    b.v = narrow_view(vbad, p.v, DType::kF16);
    EXPECT_EQ(error_of([&] { softmax->forward(b, ctx); }), "v: must be finite (found NaN or Inf)");
  }
  // sum_j (q . k_j) v_j with entries 200: 4 keys * 8 * 200^3 = 2.56e8, past float16's range.
  std::vector<uint16_t> big(qh.size(), to_float16(200.0f).bits);
  const auto plain = make_mechanism("linear", {}, "map=identity,norm=none");
  AttentionArgs b = a;
  b.q = narrow_view(big, p.q, DType::kF16);
  b.k = b.v = narrow_view(big, p.k, DType::kF16);
  const std::string e = error_of([&] { plain->forward(b, ctx); });
  EXPECT_EQ(e.rfind("out: float16 cannot hold the result", 0), 0u) << e;
  b.out = p.out.mut32();  // a float32 out holds it
  plain->forward(b, ctx);
  EXPECT_FLOAT_EQ(p.out.f32[0], 2.56e8f);
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
