#include "tests/testing/sweep.hpp"

#include <cmath>
#include <limits>

namespace attnkit::testing {
namespace {

std::vector<Dims> shapes(const SweepOptions& o) {
  std::vector<Dims> s = {
      {1, 1, 1, 1, 1, 16, 16},   {1, 2, 7, 2, 1, 16, 16},     {1, 63, 64, 2, 2, 32, 32},
      {1, 65, 65, 1, 1, 64, 64}, {1, 64, 130, 4, 2, 80, 80},  {1, 130, 64, 2, 2, 128, 128},
      {2, 33, 47, 4, 4, 16, 48}, {1, 100, 100, 3, 1, 24, 24},
  };
  for (Dims& d : s) {
    if (o.equal_lengths) d.Sk = d.Sq;
    if (o.equal_dims) d.Dv = d.Dk;
  }
  return s;
}

}  // namespace

void sweep_against_reference(const std::string& name, const std::string& config, const RefFn& ref,
                             const SweepOptions& o) {
  Context ctx(2);
  uint32_t seed = 1000;
  for (bool causal : {false, true}) {
    if (causal && !o.causal) continue;
    const AttentionOptions opts{.causal = causal};
    const auto m = make_mechanism(name, opts, config);
    for (const Dims& d : shapes(o)) {
      for (Layout layout : {Layout::kContiguous, Layout::kHeadMajorPadded}) {
        for (bool padded : {false, true}) {
          SCOPED_TRACE(name + " " + config + " " + to_string(d) + (causal ? " causal" : "") +
                       (layout == Layout::kHeadMajorPadded ? " strided" : "") +
                       (padded ? " padded" : ""));
          Problem p(d, seed++, layout, o.memory_len);
          if (padded) {
            for (int64_t b = 0; b < d.B; ++b)
              p.key_lengths.push_back(static_cast<int32_t>(d.Sk - (d.Sk * (b + 1)) / 3));
          }
          Problem r = p;
          m->forward(p.args32(), ctx);
          ref(r.args64(), opts);
          const Report rep = compare(p.out, true, r.out);
          EXPECT_LE(rep.max_abs,
                    o.c * std::numeric_limits<float>::epsilon() * std::max(rep.ref_max, 1.0))
              << rep.str();
          if (o.memory_len > 0) {
            const Report mr = compare(p.memory_out, true, r.memory_out);
            EXPECT_LE(mr.max_abs,
                      o.c * std::numeric_limits<float>::epsilon() * std::max(mr.ref_max, 1.0))
                << "memory_out " << mr.str();
          }
        }
      }
    }
    // Same output for 1, 2 and 7 threads, bit for bit.
    const Dims d{2, 150, 150, 4, 2, 32, 32};
    Problem base(d, seed++, Layout::kContiguous, o.memory_len);
    std::vector<std::vector<float>> outs;
    for (int threads : {1, 2, 7}) {
      Context c(threads);
      Problem p = base;
      m->forward(p.args32(), c);
      outs.push_back(p.out.f32);
    }
    EXPECT_EQ(outs[0], outs[1]) << name << " 1 vs 2 threads";
    EXPECT_EQ(outs[0], outs[2]) << name << " 1 vs 7 threads";
  }
}

void check_streaming_matches_causal(const std::string& name, const std::string& config, double tol,
                                    int64_t memory_len) {
  Context ctx(2);
  const Dims d{2, 90, 90, 4, 2, 32, 32};
  Problem p(d, 7, Layout::kContiguous, memory_len);
  const auto m = make_mechanism(name, {.causal = true}, config);
  m->forward(p.args32(), ctx);
  StreamSpec spec{
      .batch = d.B, .heads = d.Hq, .kv_heads = d.Hk, .head_dim = d.Dk, .value_dim = d.Dv};
  if (memory_len > 0) spec.memory = p.memory.view32();
  const std::unique_ptr<StreamingState> stream = m->new_stream(spec);
  std::vector<float> out(d.B * d.Hq * d.Dv);
  const size_t bytes0 = stream->state_bytes();
  for (int64_t t = 0; t < d.Sk; ++t) {
    auto slice = [&](const Operand& o) {
      ConstTensorView v = o.view32();
      v.data = o.f32.data() + t * o.stride[1];
      v.shape[1] = 1;
      return v;
    };
    stream->append(slice(p.k), slice(p.v), ctx);
    stream->query(slice(p.q), make_view(out.data(), {d.B, 1, d.Hq, d.Dv}), ctx);
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t h = 0; h < d.Hq; ++h)
        for (int64_t c = 0; c < d.Dv; ++c) {
          const float want =
              p.out.f32[b * p.out.stride[0] + t * p.out.stride[1] + h * p.out.stride[2] + c];
          ASSERT_NEAR(out[(b * d.Hq + h) * d.Dv + c], want, tol) << name << " t=" << t;
        }
  }
  EXPECT_EQ(stream->length(), d.Sk);
  if (!m->capabilities().kv_cache) {
    EXPECT_EQ(stream->state_bytes(), bytes0) << name << ": state must not grow";
  }
}

void check_bf16_matches_float32(const std::string& name, const std::vector<std::string>& configs,
                                float tol, double p_rounding) {
  Context ctx(2);
  for (const std::string& cfg : configs) {
    for (int variant = 0; variant < 5; ++variant) {
      const bool causal = variant != 0 && variant != 4, masked = variant == 2;
      // An odd head dim (causal case) exercises padding of bfloat16 pairs; the masked shape
      // spans several query and key blocks with Dv = 128, the last ones several spans of
      // keys, and in the last the keys grow along the sequence, so that each span's logits
      // outgrow the running max by far (a max that must be renewed, not reused).
      const Dims d = masked         ? Dims{1, 150, 300, 2, 2, 64, 128}
                     : variant >= 3 ? Dims{1, 40, 1100, 2, 1, 64, 64}
                                    : Dims{2, 70, 90, 4, 2, causal ? 37 : 48, 40};
      Problem p(d, 31, Layout::kHeadMajorPadded);
      for (int64_t j = 0; variant == 4 && j < d.Sk; ++j) {
        for (int64_t h = 0; h < d.Hk; ++h)
          for (int64_t x = 0; x < d.Dk; ++x) {
            const int64_t at = j * p.k.stride[1] + h * p.k.stride[2] + x;
            p.k.f64[at] *= 1.0 + 0.2 * static_cast<double>(j);
            p.k.f32[at] = static_cast<float>(p.k.f64[at]);
          }
      }
      const std::vector<bfloat16> q = round_to_bf16(p.q), k = round_to_bf16(p.k),
                                  v = round_to_bf16(p.v);
      Problem r = p;
      const auto m = make_mechanism(name, {.causal = causal}, cfg);
      const uint32_t needs = kMaskWindow | kMaskSoftcap;
      if (masked && (m->capabilities().masks & needs) != needs) continue;
      Mask mask;
      if (masked) mask.window_left = 100, mask.softcap = 5.0;
      AttentionArgs ar = r.args32();
      ar.mask = mask;
      m->forward(ar, ctx);
      AttentionArgs a = p.args32();
      a.mask = mask;
      a.q = bf16_view(q, p.q);
      a.k = bf16_view(k, p.k);
      a.v = bf16_view(v, p.v);
      m->forward(a, ctx);
      float worst = 0, vmax = 0;
      for (size_t i = 0; i < p.out.f32.size(); ++i)
        worst = std::max(worst, std::abs(p.out.f32[i] - r.out.f32[i]));
      for (float x : p.v.f32) vmax = std::max(vmax, std::abs(x));
      // Growing keys scale the logits (by up to 1 + 0.2 Sk), and their float32 rounding with
      // them: the paths that sum the scores' products in other orders differ by that much more.
      const double logit_growth = variant == 4 ? 1.0 + 0.2 * static_cast<double>(d.Sk) : 1.0;
      EXPECT_LE(worst, tol * logit_growth + p_rounding * vmax)
          << name << " " << cfg << " " << to_string(d) << (causal ? " causal" : "")
          << (masked ? " window softcap" : "") << (variant == 4 ? " growing keys" : "");
    }
  }
  Problem p({1, 4, 4, 1, 1, 8, 8}, 1);
  const std::vector<bfloat16> q = round_to_bf16(p.q), k = round_to_bf16(p.k),
                              v = round_to_bf16(p.v);
  AttentionArgs a = p.args32();
  a.q = bf16_view(q, p.q);
  a.k = bf16_view(k, p.k);
  a.v = bf16_view(v, p.v);
  make_mechanism(name)->forward(a, ctx);
  std::vector<uint16_t> out(p.out.f32.size());
  a.out = narrow_mut(out, p.out, DType::kBF16);
  make_mechanism(name)->forward(a, ctx);
  for (size_t i = 0; i < out.size(); ++i)  // a bfloat16 out: the float32 one, rounded once
    ASSERT_EQ(out[i], to_bfloat16(p.out.f32[i]).bits) << name << " element " << i;
}

}  // namespace attnkit::testing
