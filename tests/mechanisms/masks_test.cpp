// Masks: the float64 reference against the masks' definitions and closed forms, then the
// softmax kernel (forward, lse, backward) against the reference over every mask kind and
// their combination, bitwise across thread counts, and masked gradients against finite
// differences.
#include "tests/testing/masks.hpp"

#include <cmath>
#include <limits>

#include "src/reference/reference.hpp"
#include "tests/testing/gradients.hpp"

namespace attnkit::testing {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// The visibility rule of mask.hpp, written out from its comment: key j of query row i of
// sequence b.
bool visible(const MaskSpec& m, const Dims& d, bool causal, int64_t b, int64_t i, int64_t j) {
  const int64_t p = (m.query_positions.empty() ? d.Sk - d.Sq : m.query_positions[b]) + i;
  const int64_t lo = m.key_begin.empty() ? 0 : m.key_begin[b];
  const int64_t hi = m.key_lengths.empty() ? d.Sk : m.key_lengths[b];
  if (j < lo || j >= hi) return false;
  if (causal && j > p) return false;
  if (m.window_left >= 0 && j < p - m.window_left) return false;
  if (m.window_right >= 0 && j > p + m.window_right) return false;
  return true;
}

// The same visibility as a dense [B, Hq, Sq, Sk] bool attn_mask (an independent encoding).
MaskSpec as_bool_mask(const MaskSpec& m, const Dims& d, bool causal) {
  MaskSpec dense{.name = m.name + " as a bool mask"};
  dense.attn_mask = MaskSpec::AttnMask::kBool;
  dense.mask_shape = {d.B, d.Hq, d.Sq, d.Sk};
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.Hq; ++h)
      for (int64_t i = 0; i < d.Sq; ++i)
        for (int64_t j = 0; j < d.Sk; ++j)
          dense.mask_bool.push_back(visible(m, d, causal, b, i, j));
  return dense;
}

TEST(MaskReference, KeyRangesAndWindowsEqualTheirDenseBoolMask) {
  const Dims d{3, 6, 11, 2, 1, 4, 3};
  for (bool causal : {false, true}) {
    for (const MaskSpec& m : mask_sweep(d, causal)) {
      if (!m.alibi.empty() || m.softcap > 0 || m.attn_mask != MaskSpec::AttnMask::kNone) continue;
      SCOPED_TRACE(m.name + (causal ? " causal" : ""));
      Problem p(d, 3), dense_p = p;
      AttentionArgs a = p.args64();
      m.apply(a);
      ref::softmax_ref(a, AttentionOptions{.causal = causal});
      const MaskSpec dense = as_bool_mask(m, d, causal);
      AttentionArgs b = dense_p.args64();
      dense.apply(b);
      ref::softmax_ref(b, AttentionOptions{});
      EXPECT_EQ(p.out.f64, dense_p.out.f64);
    }
  }
}

TEST(MaskReference, ClosedForms) {
  // q = 0: every logit is its bias, so the weights are closed forms.
  const Dims d{1, 3, 5, 1, 1, 2, 1};
  Problem p(d, 4);
  std::fill(p.q.f64.begin(), p.q.f64.end(), 0.0);
  const auto v = [&](int64_t j) { return p.v.f64[j]; };  // [1, 5, 1, 1] contiguous
  {  // ALiBi: w_j = exp(-slope |p_i - j|), p_i = i + 2.
    MaskSpec m{.alibi = {0.7}};
    AttentionArgs a = p.args64();
    m.apply(a);
    ref::softmax_ref(a, AttentionOptions{});
    for (int64_t i = 0; i < 3; ++i) {
      double num = 0, den = 0;
      for (int64_t j = 0; j < 5; ++j) {
        const double w = std::exp(-0.7 * std::abs(i + 2 - j));
        num += w * v(j), den += w;
      }
      EXPECT_NEAR(p.out.f64[i], num / den, 1e-15);
    }
  }
  {  // Additive log-weights: out = sum w_j v_j / sum w_j; a -inf drops the key.
    MaskSpec m{.attn_mask = MaskSpec::AttnMask::kFloat, .mask_shape = {1, 1, 1, 5}};
    const double w[5] = {1, 2, 0, 4, 0.5};
    for (double x : w) m.mask_f64.push_back(x > 0 ? std::log(x) : -kInf);
    AttentionArgs a = p.args64();
    m.apply(a);
    ref::softmax_ref(a, AttentionOptions{});
    double num = 0, den = 0;
    for (int64_t j = 0; j < 5; ++j) num += w[j] * v(j), den += w[j];
    for (int64_t i = 0; i < 3; ++i) EXPECT_NEAR(p.out.f64[i], num / den, 1e-15);
  }
  {  // Softcap, two keys, D = 1: weights softmax(c tanh(s q k_j / c)).
    Problem t({1, 1, 2, 1, 1, 1, 1}, 5);
    t.q.f64 = {1.5}, t.k.f64 = {2.0, -1.0}, t.v.f64 = {3.0, -2.0};
    MaskSpec m{.softcap = 1.25};
    AttentionArgs a = t.args64();
    m.apply(a);
    ref::softmax_ref(a, AttentionOptions{.scale = 0.8});
    const double l0 = 1.25 * std::tanh(0.8 * 3.0 / 1.25), l1 = 1.25 * std::tanh(-0.8 * 1.5 / 1.25);
    const double p0 = 1.0 / (1.0 + std::exp(l1 - l0));
    EXPECT_NEAR(t.out.f64[0], p0 * 3.0 + (1 - p0) * -2.0, 1e-15);
  }
}

TEST(MaskReference, RowsWithNoVisibleKeyGiveZerosAndMinusInfLse) {
  const Dims d{2, 4, 6, 2, 2, 3, 3};
  MaskSpec none{.attn_mask = MaskSpec::AttnMask::kBool, .mask_shape = {2, 2, 4, 6}};
  none.mask_bool.assign(2 * 2 * 4 * 6, 1);
  for (int64_t j = 0; j < 6; ++j) none.mask_bool[(1 * 4 + 2) * 6 + j] = 0;  // b 0, h 1, row 2
  none.key_begin = {0, 6};                                                  // b 1: no key
  none.window_left = 5;
  Problem p(d, 6);
  std::vector<double> lse(2 * 2 * 4);
  AttentionArgs a = p.args64();
  a.lse = make_view(lse.data(), {2, 2, 4});
  none.apply(a);
  ref::softmax_ref(a, AttentionOptions{.causal = true});
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t i = 0; i < 4; ++i) {
        const bool empty = b == 1 || (h == 1 && i == 2);
        EXPECT_EQ(std::isinf(lse[(b * 2 + h) * 4 + i]), empty) << b << h << i;
        for (int64_t x = 0; x < 3; ++x) {
          const double o = p.out.f64[((b * 4 + i) * 2 + h) * 3 + x];
          if (empty) {
            EXPECT_EQ(o, 0.0);
          }
        }
      }
}

// The quadratic mechanisms take every mask natively (ra: all but softcap).
struct Quadratic {
  std::string name, config;
};
const Quadratic kQuadratic[] = {
    {"softmax", ""}, {"topk", "k=7,query_chunk=5"}, {"ra", "samples=3"}};

// ra refuses softcap (MasksProperty checks the refusal) and has no backward.
bool admits(const Quadratic& q, const MaskSpec& m) { return q.name != "ra" || m.softcap == 0; }
bool has_backward(const Quadratic& q) { return q.name != "ra"; }

// The float32 kernel within the error budget of the reference (and softmax's lse).
void expect_forward_matches(const Quadratic& q, const Dims& d, bool causal, const MaskSpec& m,
                            Context& ctx, uint32_t seed) {
  Problem p(d, seed, Layout::kHeadMajorPadded), r = p;
  const auto mech = make_mechanism(q.name, {.causal = causal}, q.config);
  const bool lse_too = mech->capabilities().emits_lse;
  std::vector<float> lse(d.B * d.Hq * d.Sq);
  std::vector<double> lse_ref(lse.size());
  AttentionArgs a = p.args32(), b = r.args64();
  if (lse_too) {
    a.lse = make_view(lse.data(), {d.B, d.Hq, d.Sq});
    b.lse = make_view(lse_ref.data(), {d.B, d.Hq, d.Sq});
  }
  m.apply(a), m.apply(b);
  mech->forward(a, ctx);
  if (lse_too) {
    ref::softmax_ref(b, AttentionOptions{.causal = causal});  // lse is float32-only in forward
  } else {
    mech->forward(b, ctx);
  }
  const Report rep = compare(p.out, true, r.out);
  const double tol = allowed(Budget{.c = 64}, 0.0, rep.ref_max);
  if (q.name == "ra") {
    // ra samples a key by inverse CDF: a uniform within float32 rounding of a CDF step picks
    // a neighbouring key in one of the two (a whole other sample). Allow one such row in 500.
    int64_t bad = 0;
    for (size_t i = 0; i < p.out.f32.size(); ++i)
      bad += std::abs(p.out.f32[i] - r.out.f64[i]) > tol;
    EXPECT_LE(bad, d.Dv * (d.B * d.Sq * d.Hq / 500 + 1)) << rep.str();
  } else {
    EXPECT_LE(rep.max_abs, tol) << rep.str();
  }
  if (lse_too) expect_lse_matches(lse, lse_ref);
}

TEST(MaskKernel, ForwardMatchesReference) {
  Context ctx(2);
  uint32_t seed = 10;
  // Several key and query blocks (128), GQA, Sq != Sk both ways, one decode-like row.
  for (const Quadratic& q : kQuadratic)
    for (const Dims& d : {Dims{2, 150, 300, 4, 2, 32, 24}, Dims{3, 1, 200, 2, 1, 16, 16},
                          Dims{1, 260, 140, 2, 2, 20, 36}}) {
      for (bool causal : {false, true})
        for (const MaskSpec& m : mask_sweep(d, causal)) {
          if (!admits(q, m)) continue;
          SCOPED_TRACE(q.name + " " + m.name + (causal ? " causal " : " ") + to_string(d));
          expect_forward_matches(q, d, causal, m, ctx, seed++);
        }
    }
}

TEST(MaskKernel, BackwardMatchesReferenceBitwiseAcrossThreads) {
  uint32_t seed = 40;
  for (const Quadratic& q : kQuadratic)
    for (const Dims& d : {Dims{2, 70, 150, 4, 2, 16, 24}, Dims{1, 150, 90, 2, 1, 24, 8}}) {
      if (!has_backward(q)) continue;
      for (bool causal : {false, true})
        for (const MaskSpec& m : mask_sweep(d, causal)) {
          SCOPED_TRACE(q.name + " " + m.name + (causal ? " causal " : " ") + to_string(d));
          const auto mech = make_mechanism(q.name, {.causal = causal}, q.config);
          seed += 2;
          expect_kernel_gradients(*mech, Problem(d, seed), seed + 1, 256,
                                  [&](AttentionArgs& a) { m.apply(a); });
        }
    }
}

TEST(MaskKernel, MaskedGradientsMatchFiniteDifferences) {
  const Dims d{2, 4, 7, 2, 1, 3, 2};
  uint32_t seed = 70;
  for (const Quadratic& q : kQuadratic)
    for (bool causal : {false, true})
      for (const MaskSpec& m : mask_sweep(d, causal)) {
        if (!has_backward(q)) continue;
        SCOPED_TRACE(q.name + " " + m.name + (causal ? " causal" : ""));
        const auto mech =
            make_mechanism(q.name, {.causal = causal}, q.name == "topk" ? "k=3" : q.config);
        seed += 2;
        expect_fd_gradients(*mech, Problem(d, seed), seed + 1, 1e-6,
                            [&](AttentionArgs& a) { m.apply(a); });
      }
}

TEST(MaskKernel, ForwardBitwiseAcrossThreads) {
  const Dims d{2, 200, 300, 4, 2, 16, 16};
  for (const Quadratic& q : kQuadratic)
    for (const MaskSpec& m : mask_sweep(d, true)) {
      if (!admits(q, m)) continue;
      SCOPED_TRACE(q.name + " " + m.name);
      std::vector<float> first;
      for (int threads : {1, 2, 7}) {
        Context ctx(threads);
        Problem p(d, 90);
        AttentionArgs a = p.args32();
        m.apply(a);
        make_mechanism(q.name, {.causal = true}, q.config)->forward(a, ctx);
        if (first.empty()) {
          first = p.out.f32;
        } else {
          EXPECT_EQ(p.out.f32, first) << threads << " threads";
        }
      }
    }
}

}  // namespace
}  // namespace attnkit::testing
