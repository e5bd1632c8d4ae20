// Masks as properties, for every mechanism: a packed batch (cu_seqlens) equals each
// sequence run alone, a left-padded batch equals the unpadded runs (forward and backward),
// and a mask a mechanism cannot honour is an Error naming the mechanism and the mask.
#include <algorithm>

#include "tests/testing/harness.hpp"
#include "tests/testing/masks.hpp"

namespace attnkit::testing {
namespace {

struct Case {
  std::string name, config;
};
const Case kCases[] = {{"softmax", ""},
                       {"linear", "map=elu1,norm=kernel,chunk=4"},
                       {"linear", "map=elu1,norm=kernel,gated=1,chunk=4"},
                       {"heinsen", ""},
                       {"rfa", "features=8"},
                       {"ra", "samples=2"},
                       {"lara", "landmarks=3"},
                       {"topk", "k=4,query_chunk=3"},
                       {"luna", ""},
                       {"memory", "chunk=4,width=2,filter_type=conv"}};

constexpr int64_t kMemory = 3;

// The case's mechanism, or null when it has no causal form and causal is asked.
std::unique_ptr<Mechanism> mechanism_for(const Case& c, bool causal) {
  if (causal && !make_mechanism(c.name, {}, c.config)->capabilities().causal) return nullptr;
  return make_mechanism(c.name, {.causal = causal}, c.config);
}

// Rows [r0, r0 + n) of dimension 1 of batch row b of an operand, as a [1, n, H, D] copy.
Operand rows_of(const Operand& o, int64_t b, int64_t r0, int64_t n) {
  Operand c;
  c.shape = {1, n, o.shape[2], o.shape[3]};
  c.stride = {n * o.shape[2] * o.shape[3], o.shape[2] * o.shape[3], o.shape[3], 1};
  for (int64_t i = r0; i < r0 + n; ++i)
    for (int64_t h = 0; h < o.shape[2]; ++h)
      for (int64_t d = 0; d < o.shape[3]; ++d) {
        const int64_t off = b * o.stride[0] + i * o.stride[1] + h * o.stride[2] + d * o.stride[3];
        c.f64.push_back(o.f64[off]);
        c.f32.push_back(o.f32[off]);
      }
  return c;
}

// Concatenates [1, n_s, H, D] operands along dimension 1.
Operand packed(const std::vector<Operand>& parts) {
  Operand c = parts[0];
  c.f64.clear(), c.f32.clear();
  int64_t n = 0;
  for (const Operand& p : parts) {  // contiguous parts; an empty one may hold spare storage
    const int64_t size = p.shape[1] * p.shape[2] * p.shape[3];
    c.f64.insert(c.f64.end(), p.f64.begin(), p.f64.begin() + size);
    c.f32.insert(c.f32.end(), p.f32.begin(), p.f32.begin() + size);
    n += p.shape[1];
  }
  c.shape[1] = n;
  c.stride = {n * c.shape[2] * c.shape[3], c.shape[2] * c.shape[3], c.shape[3], 1};
  return c;
}

// Gates [B, Sk, Hk] and a conv filter [Hk, width] when the mechanism reads them, both dtypes.
struct Extras {
  std::vector<double> gate64, filter64;
  std::vector<float> gate32, filter32;
  Extras(const Mechanism& m, int64_t B, int64_t Sk, int64_t Hk, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<double> g;
    if (m.capabilities().uses_gate)
      for (int64_t i = 0; i < B * Sk * Hk; ++i) gate64.push_back(g(rng));
    if (m.capabilities().uses_filter)
      for (int64_t i = 0; i < Hk * 2; ++i) filter64.push_back(0.5 + 0.1 * g(rng));
    gate32.assign(gate64.begin(), gate64.end());
    filter32.assign(filter64.begin(), filter64.end());
  }
  void apply(AttentionArgs& a, int64_t B, int64_t Sk, int64_t Hk) const {
    const bool f64 = a.q.dtype == DType::kF64;
    if (!gate64.empty()) {
      a.gate = f64 ? make_view(gate64.data(), {B, Sk, Hk}) : make_view(gate32.data(), {B, Sk, Hk});
    }
    if (!filter64.empty()) {
      a.filter = f64 ? make_view(filter64.data(), {Hk, 2}) : make_view(filter32.data(), {Hk, 2});
    }
  }
};

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(double{a[i]} - b[i]));
  return m;
}

TEST(MasksProperty, PackedBatchEqualsEachSequenceAlone) {
  Context ctx(2);
  const std::vector<int64_t> lengths = {5, 0, 13, 9};
  for (const Case& c : kCases)
    for (bool causal : {false, true}) {
      const auto m = mechanism_for(c, causal);
      if (!m) continue;
      SCOPED_TRACE(m->describe());
      const bool memory = m->capabilities().needs_memory;
      std::vector<Problem> alone;
      std::vector<Operand> qs, ks, vs, mems;
      std::vector<int32_t> cu = {0};
      for (size_t s = 0; s < lengths.size(); ++s) {
        alone.emplace_back(Dims{1, lengths[s], lengths[s], 2, 1, 8, 8},
                           static_cast<uint32_t>(100 + s), Layout::kContiguous,
                           memory ? kMemory : 0);
        Problem& p = alone.back();
        qs.push_back(p.q), ks.push_back(p.k), vs.push_back(p.v);
        if (memory) mems.push_back(p.memory);
        cu.push_back(cu.back() + static_cast<int32_t>(lengths[s]));
      }
      const int64_t total = cu.back();
      const Extras ex(*m, 1, total, 1, 7);
      Problem all(Dims{1, total, total, 2, 1, 8, 8}, 1, Layout::kContiguous, memory ? kMemory : 0);
      all.q = packed(qs), all.k = packed(ks), all.v = packed(vs);
      if (memory) {
        all.memory = mems[0];  // [n, L, Hq, D]: one memory per sequence
        all.memory.f64.clear(), all.memory.f32.clear();
        for (const Operand& o : mems) {
          all.memory.f64.insert(all.memory.f64.end(), o.f64.begin(), o.f64.end());
          all.memory.f32.insert(all.memory.f32.end(), o.f32.begin(), o.f32.end());
        }
        all.memory.shape[0] = static_cast<int64_t>(lengths.size());
        all.memory_out = make_zero_operand(all.memory.shape, Layout::kContiguous);
      }
      AttentionArgs a = all.args32();
      a.mask.cu_seqlens_q = cu, a.mask.cu_seqlens_k = cu;
      ex.apply(a, 1, total, 1);
      m->forward(a, ctx);
      for (size_t s = 0; s < lengths.size(); ++s) {
        if (lengths[s] == 0) continue;
        AttentionArgs one = alone[s].args32();
        // The sequence's gate rows and the shared filter.
        Extras mine = ex;
        if (!ex.gate64.empty()) {
          mine.gate64.assign(ex.gate64.begin() + cu[s], ex.gate64.begin() + cu[s + 1]);
          mine.gate32.assign(ex.gate32.begin() + cu[s], ex.gate32.begin() + cu[s + 1]);
        }
        mine.apply(one, 1, lengths[s], 1);
        m->forward(one, ctx);
        const Operand got = rows_of(all.out, 0, cu[s], lengths[s]);
        EXPECT_LE(max_diff(got.f32, alone[s].out.f32), 1e-6) << "sequence " << s;
      }
    }
}

TEST(MasksProperty, LeftPaddedBatchEqualsUnpaddedRunsForwardAndBackward) {
  Context ctx(2);
  const int64_t S = 12;
  const std::vector<int32_t> begin = {3, 0, 12};  // the last row is all padding
  for (const Case& c : kCases)
    for (bool causal : {false, true}) {
      const auto m = mechanism_for(c, causal);
      if (!m) continue;
      SCOPED_TRACE(m->describe());
      const bool memory = m->capabilities().needs_memory;
      const Dims d{3, S, S, 2, 1, 8, 8};
      Problem padded(d, 11, Layout::kHeadMajorPadded, memory ? kMemory : 0);
      const Extras ex(*m, 3, S, 1, 8);
      AttentionArgs a = padded.args32();
      a.mask.key_begin = begin;
      ex.apply(a, 3, S, 1);
      m->forward(a, ctx);
      Grads g(padded, 12);
      // Padding queries carry no upstream gradient (non-causal, they attend the valid keys).
      for (int64_t b = 0; b < 3; ++b)
        for (int64_t i = 0; i < begin[b]; ++i)
          for (int64_t x = 0; x < 2 * 8; ++x) {
            const int64_t off = (b * S + i) * 16 + x;
            g.dout.f32[off] = 0.0f, g.dout.f64[off] = 0.0;
          }
      const bool gated = m->capabilities().uses_gate;
      std::vector<float> dgate(3 * S, 1.0f);
      if (m->capabilities().backward) {
        BackwardArgs ga = g.args32(padded);
        ga.forward.mask.key_begin = begin;
        ex.apply(ga.forward, 3, S, 1);
        if (gated) ga.dgate = make_view(dgate.data(), {3, S, 1});
        m->backward(ga, ctx);
      }
      for (int64_t b = 0; b < 3; ++b) {
        const int64_t kb = begin[b], n = S - kb;
        if (n == 0) {
          const Operand got = rows_of(padded.out, b, 0, S);
          EXPECT_EQ(max_diff(got.f32, std::vector<float>(got.f32.size())), 0.0);
          continue;
        }
        Problem one(Dims{1, n, n, 2, 1, 8, 8}, 1, Layout::kContiguous, memory ? kMemory : 0);
        one.q = rows_of(padded.q, b, kb, n), one.k = rows_of(padded.k, b, kb, n);
        one.v = rows_of(padded.v, b, kb, n);
        if (memory) one.memory = rows_of(padded.memory, b, 0, kMemory);
        Extras mine = ex;
        if (!ex.gate64.empty()) {
          mine.gate64.assign(ex.gate64.begin() + b * S + kb, ex.gate64.begin() + (b + 1) * S);
          mine.gate32.assign(mine.gate64.begin(), mine.gate64.end());
        }
        AttentionArgs oa = one.args32();
        mine.apply(oa, 1, n, 1);
        m->forward(oa, ctx);
        // ra draws per (batch, head, query row): its padded rows keep their indices (the
        // same distribution, other draws; MaskKernel checks its masks against the reference).
        if (c.name == "ra") continue;
        EXPECT_LE(max_diff(rows_of(padded.out, b, kb, n).f32, one.out.f32), 2e-6) << "row " << b;
        if (!m->capabilities().backward) continue;
        Grads og(one, 1);
        og.dout = rows_of(g.dout, b, kb, n);
        BackwardArgs ob = og.args32(one);
        mine.apply(ob.forward, 1, n, 1);
        std::vector<float> odgate(n);
        if (gated) ob.dgate = make_view(odgate.data(), {1, n, 1});
        m->backward(ob, ctx);
        if (gated) {
          const std::vector<float> pad(dgate.begin() + b * S, dgate.begin() + b * S + kb),
              valid(dgate.begin() + b * S + kb, dgate.begin() + (b + 1) * S);
          EXPECT_EQ(max_diff(pad, std::vector<float>(kb)), 0.0);
          EXPECT_LE(max_diff(valid, odgate), 2e-5) << "dgate row " << b;
        }
        // Key gradients of the padding are zero; of the valid keys, the unpadded ones.
        EXPECT_EQ(max_diff(rows_of(g.dk, b, 0, kb).f32, std::vector<float>(kb * 8)), 0.0);
        EXPECT_LE(max_diff(rows_of(g.dk, b, kb, n).f32, og.dk.f32), 2e-5) << "dk row " << b;
        EXPECT_LE(max_diff(rows_of(g.dv, b, kb, n).f32, og.dv.f32), 2e-5) << "dv row " << b;
        EXPECT_LE(max_diff(rows_of(g.dq, b, kb, n).f32, og.dq.f32), 2e-5) << "dq row " << b;
      }
    }
}

TEST(MasksProperty, MasksAMechanismCannotHonourAreErrorsNamingBoth) {
  const Dims d{2, 6, 6, 2, 1, 8, 8};
  for (const Case& c : kCases) {
    const auto m = make_mechanism(c.name, {}, c.config);
    const uint32_t admitted = m->capabilities().masks;
    for (const MaskSpec& spec : mask_sweep(d, false)) {
      Problem p(d, 2, Layout::kContiguous, m->capabilities().needs_memory ? kMemory : 0);
      const Extras ex(*m, 2, 6, 1, 3);
      AttentionArgs a = p.args32();
      ex.apply(a, 2, 6, 1);
      spec.apply(a);
      const std::string err = error_of([&] {
        Context ctx(1);
        m->forward(a, ctx);
      });
      uint32_t needs = 0;
      if (spec.window_left >= 0 || spec.window_right >= 0) needs |= kMaskWindow;
      if (!spec.alibi.empty()) needs |= kMaskAlibi;
      if (spec.softcap > 0) needs |= kMaskSoftcap;
      if (spec.attn_mask != MaskSpec::AttnMask::kNone) needs |= kMaskAttnMask;
      if (!spec.query_positions.empty()) needs |= kMaskQueryPositions;
      if ((needs & admitted) == needs) {
        EXPECT_EQ(err, "no error") << m->describe() << " " << spec.name;
      } else {
        EXPECT_NE(err.find("is not supported by " + std::string(c.name)), std::string::npos)
            << spec.name << ": " << err;
      }
    }
  }
}

TEST(MasksProperty, InvalidMasksAreErrorsNamingTheArgument) {
  const Dims d{2, 5, 7, 2, 1, 8, 8};
  const auto m = make_mechanism("softmax", {.causal = true});
  auto err = [&](const std::function<void(AttentionArgs&)>& set) {
    Problem p(d, 1);
    AttentionArgs a = p.args32();
    set(a);
    return error_of([&] {
      Context ctx(1);
      m->forward(a, ctx);
    });
  };
  const std::vector<int32_t> bad_begin = {0, 8}, one = {0}, cu_bad = {0, 3, 2}, cu5 = {0, 2, 5},
                             cu7 = {0, 7}, lengths = {7, 2}, begin3 = {0, 3};
  EXPECT_EQ(err([&](AttentionArgs& a) { a.mask.key_begin = bad_begin; }),
            "key_begin: entry 1 (8) must be in [0, 7]");
  EXPECT_EQ(err([&](AttentionArgs& a) { a.mask.key_begin = one; }),
            "key_begin: must have one entry per batch (2), got 1");
  EXPECT_EQ(err([&](AttentionArgs& a) {
              a.mask.key_begin = begin3;
              a.key_lengths = lengths;
            }),
            "key_begin: entry 1 (3) must be <= key_lengths[1] (2)");
  EXPECT_EQ(err([&](AttentionArgs& a) { a.mask.window_left = -2; }),
            "window_size: (-2, -1): each side must be -1 (unbounded) or in [0, 2^31)");
  EXPECT_EQ(err([&](AttentionArgs& a) { a.mask.softcap = -1; }),
            "softcap: must be finite and >= 0 (0: off)");
  EXPECT_EQ(err([&](AttentionArgs& a) { a.mask.cu_seqlens_q = cu5; }),
            "cu_seqlens: cu_seqlens_q and cu_seqlens_k must be given together");
  EXPECT_EQ(err([&](AttentionArgs& a) { a.mask.cu_seqlens_q = a.mask.cu_seqlens_k = cu5; }),
            "q: a packed batch (cu_seqlens) has batch 1, got 2");
  Problem packed_p(Dims{1, 5, 7, 2, 1, 8, 8}, 1);
  auto perr = [&](const std::function<void(AttentionArgs&)>& set) {
    AttentionArgs a = packed_p.args32();
    set(a);
    return error_of([&] {
      Context ctx(1);
      m->forward(a, ctx);
    });
  };
  EXPECT_EQ(
      perr([&](AttentionArgs& a) { a.mask.cu_seqlens_q = cu_bad, a.mask.cu_seqlens_k = cu7; }),
      "cu_seqlens_q: must be non-decreasing (entry 2 = 2 < 3)");
  EXPECT_EQ(perr([&](AttentionArgs& a) { a.mask.cu_seqlens_q = cu5, a.mask.cu_seqlens_k = cu5; }),
            "cu_seqlens_k: must end at the packed length 7, got 5");
  EXPECT_EQ(perr([&](AttentionArgs& a) { a.mask.cu_seqlens_q = cu5, a.mask.cu_seqlens_k = cu7; }),
            "cu_seqlens_k: must have as many entries as cu_seqlens_q (3), got 2");
  std::vector<float> slopes(3, 0.5f);
  EXPECT_EQ(err([&](AttentionArgs& a) { a.mask.alibi_slopes = make_view(slopes.data(), {3}); }),
            "alibi_slopes: shape must be [Hq] = [2] or [B, Hq] = [2, 2]");
  std::vector<double> slopes64(2, 0.5);
  EXPECT_EQ(err([&](AttentionArgs& a) { a.mask.alibi_slopes = make_view(slopes64.data(), {2}); }),
            "alibi_slopes: must be float32, got float64");
  std::vector<float> nan_slopes = {0.5f, std::nanf("")};
  EXPECT_EQ(err([&](AttentionArgs& a) { a.mask.alibi_slopes = make_view(nan_slopes.data(), {2}); }),
            "alibi_slopes: must be finite (found NaN or Inf)");
  std::vector<float> mask(2 * 5 * 7, 0.0f);
  EXPECT_EQ(err([&](AttentionArgs& a) {
              a.mask.attn_mask = make_view(mask.data(), {2, 1, 7, 5});
            }),
            "attn_mask: Sq (7) must be 5 or 1 (broadcast)");
  mask[3] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(err([&](AttentionArgs& a) {
              a.mask.attn_mask = make_view(mask.data(), {2, 1, 5, 7});
            }),
            "attn_mask: must not hold NaN or +inf (-inf masks a key)");
  std::vector<double> mask64(2 * 5 * 7, 0.0);
  EXPECT_EQ(err([&](AttentionArgs& a) {
              a.mask.attn_mask = make_view(mask64.data(), {2, 1, 5, 7});
            }),
            "attn_mask: must be bool or float32, got float64");
}

}  // namespace
}  // namespace attnkit::testing
