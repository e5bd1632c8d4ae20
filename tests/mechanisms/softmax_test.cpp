// softmax: the fast float32 kernel against the float64 reference over swept shapes.
#include <cmath>
#include <limits>
#include <tuple>

#include "src/reference/reference.hpp"
#include "tests/testing/sweep.hpp"

namespace attnkit::testing {
namespace {

struct Case {
  Dims d;
  bool causal;
  Layout layout;
  bool padding;
};

// Runs fast (threads) and reference on one case; checks the error budget and lse.
void check_case(const Case& c, Context& ctx, uint32_t seed) {
  SCOPED_TRACE(to_string(c.d) + (c.causal ? " causal" : "") +
               (c.layout == Layout::kHeadMajorPadded ? " strided" : "") +
               (c.padding ? " padded" : ""));
  Problem p(c.d, seed, c.layout);
  if (c.padding) {
    for (int64_t b = 0; b < c.d.B; ++b)
      p.key_lengths.push_back(static_cast<int32_t>((c.d.Sk * (b + 1)) / (c.d.B + 1)));
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.d.Dk));
  AttentionOptions o{.causal = c.causal};
  // Reference with lse.
  std::vector<double> lse_ref(c.d.B * c.d.Hq * c.d.Sq);
  AttentionArgs a64 = p.args64();
  a64.lse = make_view(lse_ref.data(), {c.d.B, c.d.Hq, c.d.Sq});
  ref::softmax_ref(a64, o);
  // Naive float32 yardstick.
  Operand naive = make_zero_operand(p.out.shape, c.layout);
  naive_softmax32(p, c.causal, scale, naive);
  const Report naive_err = compare(naive, true, p.out);
  // Fast kernel.
  std::vector<float> lse(c.d.B * c.d.Hq * c.d.Sq);
  AttentionArgs a32 = p.args32();
  a32.lse = make_view(lse.data(), {c.d.B, c.d.Hq, c.d.Sq});
  make_mechanism("softmax", o)->forward(a32, ctx);
  const Report r = compare(p.out, true, p.out);
  const double tol = allowed(Budget{}, naive_err.max_abs, r.ref_max);
  EXPECT_LE(r.max_abs, tol) << r.str() << " naive32: " << naive_err.str();
  expect_lse_matches(lse, lse_ref);
}

TEST(Softmax, MatchesReferenceAcrossTileEdges) {
  Context ctx(2);
  uint32_t seed = 1;
  for (int64_t sq : {1, 2, 7, 63, 64, 65, 129})
    for (int64_t sk : {1, 7, 64, 65, 127, 128, 129, 300})
      for (bool causal : {false, true})
        check_case({{1, sq, sk, 2, 2, 32, 32}, causal, Layout::kContiguous, false}, ctx, seed++);
}

// Up to 8 rows without lse or logit masks run the decode kernel (keys read once, split past
// 2048 keys), each row over its own key range: the same budget, strided GQA views, causal
// rows, right and left padding and a window included.
TEST(Softmax, DecodeShapedCallsMatchTheReference) {
  Context ctx(2);
  uint32_t seed = 100;
  for (int64_t sq : {1, 3, 8})
    for (int64_t sk : {1, 7, 300, 5000})
      for (bool causal : {false, true})
        for (Layout layout : {Layout::kContiguous, Layout::kHeadMajorPadded})
          for (bool masked : {false, true}) {
            const Dims d{2, sq, sk, 4, 2, 40, 24};
            SCOPED_TRACE(to_string(d) + (causal ? " causal" : "") + (masked ? " masked" : ""));
            Problem p(d, seed++, layout), r = p;
            // Right padding on row 0, left padding on row 1 (a batched decode step), a window.
            const std::vector<int32_t> lengths{static_cast<int32_t>(sk - sk / 3),
                                               static_cast<int32_t>(sk)};
            const std::vector<int32_t> begin{0, static_cast<int32_t>(sk / 4)};
            if (masked) p.key_lengths = r.key_lengths = lengths;
            const AttentionOptions o{.causal = causal};
            AttentionArgs a = p.args32(), a64 = r.args64();
            if (masked) {
              a.mask.key_begin = a64.mask.key_begin = begin;
              a.mask.window_left = a64.mask.window_left = sk / 2;
            }
            make_mechanism("softmax", o)->forward(a, ctx);
            ref::softmax_ref(a64, o);
            const Report rep = compare(p.out, true, r.out);
            EXPECT_LE(rep.max_abs, allowed(Budget{}, 0.0, rep.ref_max)) << rep.str();
          }
}

TEST(Softmax, MatchesReferenceAcrossHeadDims) {
  Context ctx(2);
  uint32_t seed = 100;
  for (int64_t d : {1, 3, 16, 32, 64, 80, 96, 128, 200})
    for (bool causal : {false, true})
      check_case({{1, 70, 150, 2, 1, d, d}, causal, Layout::kContiguous, false}, ctx, seed++);
  // Dk != Dv.
  check_case({{1, 33, 77, 2, 2, 48, 24}, true, Layout::kContiguous, false}, ctx, seed++);
  check_case({{1, 33, 77, 2, 2, 24, 130}, false, Layout::kContiguous, false}, ctx, seed++);
}

TEST(Softmax, StridedViewsGqaAndPadding) {
  Context ctx(3);
  uint32_t seed = 200;
  for (bool causal : {false, true}) {
    check_case({{2, 65, 130, 8, 2, 64, 64}, causal, Layout::kHeadMajorPadded, false}, ctx, seed++);
    check_case({{3, 40, 200, 4, 1, 32, 32}, causal, Layout::kContiguous, true}, ctx, seed++);
    check_case({{2, 129, 129, 6, 3, 16, 40}, causal, Layout::kHeadMajorPadded, true}, ctx, seed++);
  }
}

TEST(Softmax, FullyMaskedRowsGiveZerosNotNan) {
  Context ctx(2);
  Dims d{2, 5, 6, 2, 2, 8, 8};
  Problem p(d, 7);
  p.key_lengths = {0, 6};  // batch 0 has no keys at all
  std::vector<float> lse(d.B * d.Hq * d.Sq);
  AttentionArgs a = p.args32();
  a.lse = make_view(lse.data(), {d.B, d.Hq, d.Sq});
  make_mechanism("softmax")->forward(a, ctx);
  for (int64_t i = 0; i < d.Sq; ++i)
    for (int64_t h = 0; h < d.Hq; ++h)
      for (int64_t c = 0; c < d.Dv; ++c) EXPECT_EQ(p.out.f32[(i * d.Hq + h) * d.Dv + c], 0.0f);
  for (int64_t i = 0; i < d.Hq * d.Sq; ++i)
    EXPECT_EQ(lse[i], -std::numeric_limits<float>::infinity());
  // Causal with Sq > Sk: bottom-right alignment leaves the first Sq - Sk rows empty.
  Dims e{1, 9, 4, 1, 1, 8, 8};
  Problem c(e, 8);
  make_mechanism("softmax", {.causal = true})->forward(c.args32(), ctx);
  for (float x : c.out.f32) EXPECT_FALSE(std::isnan(x));
  for (int64_t i = 0; i < 5; ++i)
    for (int64_t k = 0; k < e.Dv; ++k) EXPECT_EQ(c.out.f32[i * e.Dv + k], 0.0f);
}

TEST(Softmax, LargeLogitsStayFinite) {
  Context ctx(2);
  Dims d{1, 50, 300, 1, 1, 32, 32};
  Problem p(d, 9);
  for (float& x : p.q.f32) x *= 40.0f;  // logits up to ~1e3 in size
  for (double& x : p.q.f64) x *= 40.0;
  make_mechanism("softmax")->forward(p.args32(), ctx);
  Problem r = p;
  ref::softmax_ref(r.args64(), AttentionOptions{});
  const Report rep = compare(p.out, true, r.out);
  EXPECT_LE(rep.max_abs, 2e-3) << rep.str();  // near-one-hot rows; logits carry |x| ~ 1e3 * eps
}

TEST(Softmax, ExplicitScale) {
  Context ctx(1);
  Dims d{1, 20, 40, 2, 2, 16, 16};
  Problem p(d, 11);
  const AttentionOptions o{.scale = 0.9};
  make_mechanism("softmax", o)->forward(p.args32(), ctx);
  Problem r = p;
  ref::softmax_ref(r.args64(), o);
  EXPECT_LE(compare(p.out, true, r.out).max_abs, 2e-6);
}

TEST(Softmax, KvCacheDecodeAcrossSplitsMatchesPrefill) {
  // More than one 2048-key split, GQA, 1..8 queries (the decode path) and 9 (prefill path).
  Context ctx(2);
  const Dims d{2, 9, 5000, 4, 2, 40, 24};
  Problem p(d, 21);
  auto stream = make_mechanism("softmax")->new_stream(
      {.batch = d.B, .heads = d.Hq, .kv_heads = d.Hk, .head_dim = d.Dk, .value_dim = d.Dv});
  ConstTensorView k = p.k.view32(), v = p.v.view32();
  for (int64_t t0 = 0; t0 < d.Sk; t0 += 1700) {  // appended in uneven blocks
    ConstTensorView kb = k, vb = v;
    kb.data = p.k.f32.data() + t0 * k.stride[1];
    vb.data = p.v.f32.data() + t0 * v.stride[1];
    kb.shape[1] = vb.shape[1] = std::min<int64_t>(1700, d.Sk - t0);
    stream->append(kb, vb, ctx);
  }
  Problem r = p;
  ref::softmax_ref(r.args64(), AttentionOptions{});
  for (int64_t tq : {1, 8, 9}) {
    ConstTensorView q = p.q.view32();
    q.shape[1] = tq;
    std::vector<float> out(d.B * tq * d.Hq * d.Dv);
    stream->query(q, make_view(out.data(), {d.B, tq, d.Hq, d.Dv}), ctx);
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t i = 0; i < tq; ++i)
        for (int64_t h = 0; h < d.Hq; ++h)
          for (int64_t x = 0; x < d.Dv; ++x) {
            const double want =
                r.out.f64[b * r.out.stride[0] + i * r.out.stride[1] + h * r.out.stride[2] + x];
            ASSERT_NEAR(out[((b * tq + i) * d.Hq + h) * d.Dv + x], want, 2e-6) << "tq=" << tq;
          }
  }
}

TEST(Softmax, Float64RunsTheReference) {
  Context ctx(1);
  Dims d{1, 9, 13, 2, 1, 8, 8};
  Problem p(d, 12), r(d, 12);
  make_mechanism("softmax", {.causal = true})->forward(p.args64(), ctx);
  ref::softmax_ref(r.args64(), {.causal = true});
  EXPECT_EQ(compare(p.out, false, r.out).max_abs, 0.0);
}

}  // namespace
}  // namespace attnkit::testing

namespace attnkit::testing {
namespace {

TEST(Softmax, BackwardMatchesReference) {
  Context ctx(2);
  uint32_t seed = 300;
  for (bool causal : {false, true}) {
    // Beyond one block on either side (64 rows, 128 columns), GQA, Sq != Sk both ways.
    for (const Dims& d : {Dims{1, 70, 70, 2, 2, 32, 32}, Dims{2, 33, 90, 4, 2, 16, 24},
                          Dims{1, 90, 40, 3, 1, 20, 8}, Dims{1, 200, 300, 2, 1, 24, 16},
                          Dims{1, 290, 150, 2, 2, 80, 72}}) {
      SCOPED_TRACE(to_string(d) + (causal ? " causal" : ""));
      Problem p(d, seed++, Layout::kHeadMajorPadded), r = p;
      p.key_lengths = r.key_lengths = std::vector<int32_t>(d.B, static_cast<int32_t>(d.Sk - 3));
      const auto m = make_mechanism("softmax", {.causal = causal});
      m->forward(p.args32(), ctx);
      ref::softmax_ref(r.args64(), {.causal = causal});
      Grads g(p, seed++), gr = g, naive = g;
      m->backward(g.args32(p), ctx);
      ref::softmax_backward_ref(gr.args64(r), {.causal = causal});
      naive_softmax_backward32(p, causal, 1.0 / std::sqrt(static_cast<double>(d.Dk)), naive);
      // DESIGN.md section 5: within twice the naive float32 backward's error plus 8 eps.
      for (auto [got, nv, want, name] : {std::tuple{&g.dq, &naive.dq, &gr.dq, "dq"},
                                         {&g.dk, &naive.dk, &gr.dk, "dk"},
                                         {&g.dv, &naive.dv, &gr.dv, "dv"}}) {
        const Report rep = compare(*got, true, *want), nrep = compare(*nv, true, *want);
        EXPECT_LE(rep.max_abs, allowed(Budget{}, nrep.max_abs, rep.ref_max))
            << name << " " << rep.str() << " naive32: " << nrep.str();
      }
    }
  }
}

TEST(Softmax, BackwardWithTheForwardsLseSkipsTheRecompute) {
  // Given the forward's lse (and its out), the backward equals the one that recomputes them.
  Context ctx(2);
  for (bool causal : {false, true}) {
    Problem p({2, 100, 130, 4, 2, 32, 24}, 12);
    p.key_lengths = {130, 0};  // a batch with no visible key: lse = -inf rows
    Grads with(p, 13), without = with;
    Tensor<float> lse({2, 4, 100});
    const auto m = make_mechanism("softmax", {.causal = causal});
    AttentionArgs f = p.args32();
    f.lse = lse.view();
    m->forward(f, ctx);
    m->backward(without.args32(p), ctx);
    BackwardArgs g = with.args32(p);
    g.forward.lse = lse.view();
    m->backward(g, ctx);
    EXPECT_EQ(with.all32(), without.all32());
    lse.vec()[5] = std::numeric_limits<float>::quiet_NaN();
    EXPECT_THROW(m->backward(g, ctx), Error);
  }
}

TEST(Softmax, BackwardBitwiseAcrossThreadsAndValidated) {
  Problem base({2, 100, 120, 4, 2, 32, 32}, 9);
  std::vector<float> first;
  for (int threads : {1, 2, 7}) {
    Context ctx(threads);
    Problem p = base;
    Grads g(p, 10);
    make_mechanism("softmax", {.causal = true})->forward(p.args32(), ctx);
    make_mechanism("softmax", {.causal = true})->backward(g.args32(p), ctx);
    const std::vector<float> all = g.all32();
    if (first.empty()) first = all;
    EXPECT_EQ(all, first) << threads << " threads";
  }
  Context ctx(1);
  Problem p = base;
  Grads g(p, 11);
  BackwardArgs a = g.args32(p);
  a.dk.shape[1] = 7;
  try {
    make_mechanism("softmax")->backward(a, ctx);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "dk: shape [2, 7, 2, 32] must equal k shape [2, 120, 2, 32]");
  }
  try {
    make_mechanism("ra")->backward(g.args32(p), ctx);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "backward: ra has no backward pass yet");
  }
}

}  // namespace
}  // namespace attnkit::testing
