// Chunk-wise memory-augmented attention (SPEC 4.2 + 4.3), float32. Per (batch, q head),
// chunk by chunk:
//   reads:  the chunk's queries attend over [memory ; chunk keys] (memory rows are keys and
//           values; causal: chunk tokens j <= i);
//   write:  memory rows attend over [memory ; F(chunk keys)] with values [memory ; F(values)]
//           at temperature T, F the conv / max-pool filter of arXiv 2404.00798.
// Both are small dense attentions (src/cpu/ops/attend-inl.h).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/memory.cpp"
// clang-format off
#include <hwy/foreach_target.h>  // IWYU pragma: keep (re-includes this file per target)
#include <hwy/highway.h>
// clang-format on

#include <algorithm>
#include <cmath>
#include <limits>

#include "src/cpu/kernels.hpp"
#include "src/cpu/ops/attend-inl.h"
#include "src/cpu/ops/matmul-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu {
namespace HWY_NAMESPACE {

struct Buffers {
  float *mem, *next, *kt, *vals, *s, *obuf, *fk, *fv;
  static int64_t floats(int64_t m, int64_t c, int64_t dp, int64_t ldk) {
    return 2 * m * dp + dp * ldk + ldk * dp + std::max(m, c) * ldk + 3 * c * dp + 64;
  }
  Buffers(float* p, int64_t m, int64_t c, int64_t dp, int64_t ldk) {
    mem = p;
    next = mem + m * dp;
    kt = next + m * dp;
    vals = kt + dp * ldk;
    s = vals + ldk * dp;
    obuf = s + std::max(m, c) * ldk;
    fk = obuf + c * dp;
    fv = fk + c * dp;
  }
};

// Filtered rows [t0, t1) of t at (b, hk) into out [t1 - t0][dp]: 'same' padding inside
// [t0, t1), left = (width - 1) / 2; conv (weights or box) or max-pool.
void FilterRows(const ConstTensorView& t, int64_t b, int64_t hk, int64_t t0, int64_t t1, int64_t d,
                int64_t dp, const MemoryConfig& c, const ConstTensorView& weights, float* out) {
  const int64_t width = c.filter_width, left = (width - 1) / 2;
  const bool pool = c.filter == MemoryFilter::kMaxPool;
  for (int64_t i = t0; i < t1; ++i) {
    float* o = out + (i - t0) * dp;
    std::fill(o, o + dp, pool ? -std::numeric_limits<float>::infinity() : 0.0f);
    for (int64_t w = 0; w < width; ++w) {
      const int64_t src = i - left + w;
      if (src < t0 || src >= t1) continue;
      const float* x = t.row<const float>(b, src, hk);
      if (pool) {
        for (int64_t x0 = 0; x0 < d; ++x0) o[x0] = std::max(o[x0], x[x0]);
      } else {
        const float wt =
            weights.present() ? weights.at<const float>(hk, w) : 1.0f / static_cast<float>(width);
        for (int64_t x0 = 0; x0 < d; ++x0) o[x0] += wt * x[x0];
      }
    }
    std::fill(o + d, o + dp, 0.0f);
  }
}

// kt columns [col0, col0 + n) and vals rows from n rows of width d (row r at rows(r)).
template <typename KRows, typename VRows>
void PutKeys(const KRows& rows, int64_t n, int64_t col0, int64_t d, int64_t dp, int64_t ldk,
             float* kt, float* vals, const VRows& vrows) {
  for (int64_t r = 0; r < n; ++r) {
    const float* k = rows(r);
    for (int64_t x = 0; x < d; ++x) kt[x * ldk + col0 + r] = k[x];
    float* v = vals + (col0 + r) * dp;
    std::copy_n(vrows(r), d, v);
    std::fill(v + d, v + dp, 0.0f);
  }
}

void MemoryForward(const AttentionArgs& a, const MemoryConfig& c, float scale, bool causal,
                   Context& ctx) {
  const int64_t B = a.q.shape[0], S = a.q.shape[1], Hq = a.q.shape[2], D = a.q.shape[3];
  const int64_t Hk = a.k.shape[2], m = a.memory.shape[1];
  const int64_t dp = pad_to_state(D), cs = std::min<int64_t>(c.chunk, std::max<int64_t>(S, 1));
  const int64_t ldk = pad_to_state(m + cs);
  const float inv_temp =
      1.0f / static_cast<float>(c.pack_temperature > 0 ? c.pack_temperature
                                                       : std::sqrt(static_cast<double>(D)));
  ctx.reserve_scratch(static_cast<size_t>(Buffers::floats(m, cs, dp, ldk)));
  ctx.parallel_for(B * Hq, [&](int64_t task, int worker) {
    const int64_t b = task / Hq, h = task % Hq, hk = h / (Hq / Hk);
    const int64_t len = a.key_lengths.empty() ? S : a.key_lengths[b];
    Buffers buf(ctx.scratch(worker), m, cs, dp, ldk);
    for (int64_t r = 0; r < m; ++r) {
      std::copy_n(a.memory.row<const float>(b, r, h), D, buf.mem + r * dp);
      std::fill(buf.mem + r * dp + D, buf.mem + (r + 1) * dp, 0.0f);
    }
    auto mem_row = [&](int64_t r) { return static_cast<const float*>(buf.mem + r * dp); };
    for (int64_t t0 = 0; t0 < S; t0 += cs) {
      const int64_t t1 = std::min(S, t0 + cs), valid_end = std::clamp(len, t0, t1),
                    nv = valid_end - t0;
      // Reads.
      std::fill(buf.kt, buf.kt + dp * ldk, 0.0f);
      PutKeys(mem_row, m, 0, D, dp, ldk, buf.kt, buf.vals, mem_row);
      PutKeys([&](int64_t r) { return a.k.row<const float>(b, t0 + r, hk); }, nv, m, D, dp, ldk,
              buf.kt, buf.vals, [&](int64_t r) { return a.v.row<const float>(b, t0 + r, hk); });
      auto visible = [&](int64_t r) { return m + (causal ? std::min(nv, r + 1) : nv); };
      Attend(a.q.row<const float>(b, t0, h), a.q.stride[1], t1 - t0, D, buf.kt, ldk, m + nv,
             buf.vals, dp, dp, scale, visible, buf.s, buf.obuf, dp);
      for (int64_t r = 0; r < t1 - t0; ++r)
        std::copy_n(buf.obuf + r * dp, D, a.out.row<float>(b, t0 + r, h));
      if (nv == 0) continue;  // nothing to write into memory
      // Filtered write.
      FilterRows(a.k, b, hk, t0, valid_end, D, dp, c, a.filter, buf.fk);
      FilterRows(a.v, b, hk, t0, valid_end, D, dp, c, a.filter, buf.fv);
      auto fk_row = [&](int64_t r) { return static_cast<const float*>(buf.fk + r * dp); };
      auto fv_row = [&](int64_t r) { return static_cast<const float*>(buf.fv + r * dp); };
      PutKeys(fk_row, nv, m, D, dp, ldk, buf.kt, buf.vals, fv_row);
      Attend(
          buf.mem, dp, m, D, buf.kt, ldk, m + nv, buf.vals, dp, dp, inv_temp,
          [&](int64_t) { return m + nv; }, buf.s, buf.next, dp);
      std::swap(buf.mem, buf.next);
    }
    if (a.memory_out.present()) {
      for (int64_t r = 0; r < m; ++r)
        std::copy_n(buf.mem + r * dp, D, a.memory_out.row<float>(b, r, h));
    }
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace attnkit::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {

HWY_EXPORT(MemoryForward);

void memory_forward(const AttentionArgs& a, const MemoryConfig& c, float scale, bool causal,
                    Context& ctx) {
  HWY_DYNAMIC_DISPATCH(MemoryForward)(a, c, scale, causal, ctx);
}

}  // namespace attnkit::cpu
#endif  // HWY_ONCE
