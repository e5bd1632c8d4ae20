// heinsen: the log-space kernel against the quadratic float64 reference.
#include <cmath>

#include "src/reference/reference.hpp"
#include "tests/testing/gradients.hpp"
#include "tests/testing/sweep.hpp"

namespace attnkit::testing {
namespace {

TEST(Heinsen, MatchesReferenceOverTheSweep) {
  sweep_against_reference("heinsen", "", [](auto& a, auto& o) { ref::heinsen_ref(a, o); });
}

TEST(Heinsen, NoOverflowAtMagnitudeOneThousand) {
  // Naive exp(q).exp(k) overflows float32 beyond |x| ~ 88; the log-space kernel does not.
  Context ctx(2);
  for (bool causal : {false, true}) {
    Problem p({1, 64, 64, 2, 2, 16, 16}, 3), r = p;
    for (Problem* x : {&p, &r}) {
      for (float& e : x->q.f32) e *= 1000.0f;
      for (float& e : x->k.f32) e *= 1000.0f;
      for (size_t i = 0; i < x->q.f64.size(); ++i) x->q.f64[i] = x->q.f32[i];
      for (size_t i = 0; i < x->k.f64.size(); ++i) x->k.f64[i] = x->k.f32[i];
    }
    make_mechanism("heinsen", {.causal = causal})->forward(p.args32(), ctx);
    ref::heinsen_ref(r.args64(), {.causal = causal});
    for (float x : p.out.f32) ASSERT_TRUE(std::isfinite(x));
    // Logits of size ~2e3 carry float32 rounding of ~2e3 eps in the exponent: the rule's c
    // scales with the logit magnitude.
    const Report rep = compare(p.out, true, r.out);
    EXPECT_LE(rep.max_abs, allowed(Budget{.c = 8 * 2048}, 0.0, rep.ref_max))
        << (causal ? "causal " : "") << rep.str();
  }
}

TEST(Heinsen, ChunksWithKeysOfVeryDifferentSizesStayExact) {
  // Keys 100-109 are 40x the rest: the chunk of rows 64-127 must not rebase its early rows
  // to maxima they have not seen (their terms would underflow), so it takes the per-key
  // form; the chunks after it rebase against a slot holding those maxima.
  Context ctx(2);
  for (bool causal : {false, true}) {
    Problem p({1, 200, 200, 2, 2, 16, 16}, 12), r = p;
    for (Problem* x : {&p, &r}) {
      for (int64_t t = 100; t < 110; ++t) {
        for (int64_t i = 0; i < x->k.stride[1]; ++i) {
          float& e = x->k.f32[t * x->k.stride[1] + i];
          e *= 40.0f;
          x->k.f64[t * x->k.stride[1] + i] = e;
        }
      }
    }
    make_mechanism("heinsen", {.causal = causal})->forward(p.args32(), ctx);
    ref::heinsen_ref(r.args64(), {.causal = causal});
    const Report rep = compare(p.out, true, r.out);
    EXPECT_LE(rep.max_abs, allowed(Budget{.c = 8 * 128}, 0.0, rep.ref_max))
        << (causal ? "causal " : "") << rep.str();
  }
}

TEST(Heinsen, StreamingMatchesCausal) { check_streaming_matches_causal("heinsen", "", 1e-6); }

TEST(Heinsen, BackwardKernelMatchesReference) {
  uint32_t seed = 500;
  for (bool causal : {false, true}) {
    for (const Dims& d : backward_dims()) {
      Problem p(d, seed++, Layout::kHeadMajorPadded);
      p.key_lengths = std::vector<int32_t>(d.B, static_cast<int32_t>(d.Sk - 3));
      expect_kernel_gradients(*make_mechanism("heinsen", {.causal = causal}), p, seed++);
    }
  }
}

TEST(Heinsen, ChunkedBackwardMatchesReferenceOverManyChunks) {
  // 200 rows are four chunks; |q|, |k| ~ 3 make the per-feature maxima grow from chunk to
  // chunk, so the reverse pass rebases its adjoint; key 150 is 8x the rest (its chunk and
  // the later ones see a new maximum in most features).
  uint32_t seed = 520;
  for (bool causal : {false, true}) {
    Problem p({1, 200, 200, 2, 1, 16, 16}, seed++);
    for (Operand* o : {&p.q, &p.k}) {
      for (size_t i = 0; i < o->f64.size(); ++i) {
        const bool spike = o == &p.k && i / o->stride[1] == 150;
        o->f32[i] *= spike ? 8.0f : 3.0f;
        o->f64[i] = o->f32[i];
      }
    }
    expect_kernel_gradients(*make_mechanism("heinsen", {.causal = causal}), p, seed++);
  }
}

TEST(Heinsen, BackwardStaysFiniteWhereExpOverflows) {
  // |q|, |k| ~ 100: exp(q) overflows float32, and causal rows see maxima that grow along the
  // sequence (the reverse sweep's rescaling).
  for (bool causal : {false, true}) {
    Problem p({1, 64, 64, 2, 2, 16, 16}, 8);
    for (Operand* o : {&p.q, &p.k}) {
      for (size_t i = 0; i < o->f64.size(); ++i) {
        o->f32[i] *= 100.0f;
        o->f64[i] = o->f32[i];
      }
    }
    expect_kernel_gradients(*make_mechanism("heinsen", {.causal = causal}), p, 9, 4096);
  }
}

}  // namespace
}  // namespace attnkit::testing
