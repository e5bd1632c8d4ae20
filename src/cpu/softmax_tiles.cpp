// Exact softmax forward for bfloat16 inputs on matrix tiles (AMX, or the emulated unit),
// key-major: per strip of 32 queries the kernel computes S^T = K Q^T (keys down, queries
// across), so Q^T is the small B operand, the keys stream through the A tiles straight from
// their packed rows (each A tile serving two tiles of queries), and the online softmax runs
// down the columns with one query per vector lane: its running max, sum and rescaling are
// vectors, with no horizontal reductions and no per-row scalar work. P^T, rounded to
// bfloat16, is the B operand of O^T += V^T P^T.
//
// Plan (per call):
//  1. Pack, per (batch, kv head): K rows [Skp][Dkp] and V^T [Dvp][ldvt] in bfloat16, zero
//     padded (Dkp a multiple of 32, Dvp of 16, keys to whole spans of 32).
//  2. One task per (batch, q head, block of kQueryBlock queries): its strips' Q^T pairs, then
//     per span of kSpan keys and per strip that sees some of them: S^T on the tiles, logit
//     masks on the visible scores, bf16::softmax_columns, O^T += V^T P^T on the tiles.
//  3. out = O / l, lse = m ln 2 + log l; a query that saw no key gives zeros and -inf.
// Every output row is owned by one task: results do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "src/cpu/arena.hpp"
#include "src/cpu/kernels.hpp"
#include "src/cpu/tiles.hpp"

namespace attnkit::cpu {
namespace {

constexpr int64_t kLanes = 16;                    // queries per vector of the softmax
constexpr int64_t kStrip = 2 * tiles::kTileRows;  // queries per strip: the tiles' N
constexpr int64_t kStrips = 4;                    // strips per task
constexpr int64_t kQueryBlock = kStrip * kStrips;
constexpr int64_t kSpan = 512;  // keys per softmax step (measured best of 256-1024)

// An odd number of 64-byte lines per row of `n` elements of `bytes`, so that a tile's 16
// rows fall in different L1 sets.
int64_t OddLines(int64_t n, int64_t bytes) {
  const int64_t per_line = 64 / bytes;
  int64_t lines = (n + per_line - 1) / per_line;
  if (lines % 2 == 0) ++lines;
  return lines * per_line;
}

struct Plan : Problem {
  tiles::Bf16Path path;
  int64_t Dkp, Dvp, Skp, ldvt;
  float fscale;
  bool gather_q, gather_v;  // rows' strides small enough for 32-bit gather offsets
  uint16_t* kp;             // [B][Hk][Skp][Dkp]
  uint16_t* vt;             // [B][Hk][Dvp][ldvt]
  uint16_t* kp_head(int64_t b, int64_t hk) const { return kp + (b * Hk + hk) * Skp * Dkp; }
  uint16_t* vt_head(int64_t b, int64_t hk) const { return vt + (b * Hk + hk) * Dvp * ldvt; }
  size_t packed_halves() const { return static_cast<size_t>(B * Hk * (Skp * Dkp + Dvp * ldvt)); }
};

// Keys [j0, j0 + 32) of (b, hk) into kp rows and vt columns (vt written row by row: its
// columns are 2 ldvt bytes apart).
void PackKeys(const AttentionArgs& a, const Plan& p, int64_t b, int64_t hk, int64_t j0) {
  uint16_t* kp = p.kp_head(b, hk);
  uint16_t* vt = p.vt_head(b, hk);
  const int64_t n = std::clamp<int64_t>(p.Sk - j0, 0, 32);
  for (int64_t j = 0; j < 32; ++j) {
    uint16_t* krow = kp + (j0 + j) * p.Dkp;
    std::fill(krow, krow + p.Dkp, uint16_t{0});
    if (j < n) std::memcpy(krow, a.k.row_address(b, j0 + j, hk), p.Dk * sizeof(uint16_t));
  }
  for (int64_t c = p.Dv; c < p.Dvp; ++c) std::fill_n(vt + c * p.ldvt + j0, 32, uint16_t{0});
  for (int64_t j = 0; j < 32; j += 16) {  // 16 keys at a time, gathered while strides allow
    const uint16_t* v0 =
        j < n ? static_cast<const uint16_t*>(a.v.row_address(b, j0 + j, hk)) : nullptr;
    if (j + 16 <= n && p.gather_v) {
      bf16::transpose16(v0, a.v.stride[1], p.Dv, vt + j0 + j, p.ldvt);
      continue;
    }
    for (int64_t c = 0; c < p.Dv; ++c) {
      uint16_t* dst = vt + c * p.ldvt + j0 + j;
      for (int64_t i = 0; i < 16; ++i) dst[i] = j + i < n ? v0[i * a.v.stride[1] + c] : 0;
    }
  }
}

// Per-worker scratch (Carve layout, in floats).
struct TaskScratch {
  uint32_t* qt;          // [kStrips][Dkp / 2][16] Q^T pairs
  float* st;             // [kSpan][16] S^T
  uint32_t* pt;          // [kSpan / 2][16] P^T pairs
  float* ot;             // [kStrips][Dvp][16] O^T
  float *m, *l;          // [kStrips][16]
  int32_t *begin, *end;  // [kStrips][16] each query's visible keys
  float* col;            // [kSpan] one query's scores, for logit masks
  TaskScratch(Carve& c, const Plan& p)
      : qt(reinterpret_cast<uint32_t*>(c.take(kStrips * p.Dkp / 2 * kStrip))),
        st(c.take(kSpan * kStrip)),
        pt(reinterpret_cast<uint32_t*>(c.take(kSpan / 2 * kStrip))),
        ot(c.take(kStrips * p.Dvp * kStrip)),
        m(c.take(kQueryBlock)),
        l(c.take(kQueryBlock)),
        begin(reinterpret_cast<int32_t*>(c.take(kQueryBlock))),
        end(reinterpret_cast<int32_t*>(c.take(kQueryBlock))),
        col(c.take(kSpan)) {}
};

// Softcap, ALiBi, attn_mask on lane n's visible scores of the span (scaled first: the masks
// take logits), gathered from its column and scattered back.
void BiasColumn(const Plan& p, const TaskScratch& w, int64_t b, int64_t h, int64_t i, int64_t n,
                int64_t s, int64_t j0, int64_t keys) {
  const int64_t from = std::max<int64_t>(w.begin[s * kStrip + n], j0);
  const int64_t to = std::min<int64_t>(w.end[s * kStrip + n], j0 + keys);
  for (int64_t j = from; j < to; ++j) w.col[j - from] = w.st[(j - j0) * kStrip + n] * p.fscale;
  if (from < to) p.bias_row(b, h, i, from, w.col, to - from);
  for (int64_t j = from; j < to; ++j) w.st[(j - j0) * kStrip + n] = w.col[j - from];
}

void AttendQueryBlock(const AttentionArgs& a, const Plan& p, int64_t task, float* scratch) {
  const int64_t blocks = (p.Sq + kQueryBlock - 1) / kQueryBlock;
  const int64_t qb = task % blocks, bh = task / blocks;
  const int64_t b = bh / p.Hq, h = bh % p.Hq, hk = p.kv_head(h);
  const int64_t i0 = qb * kQueryBlock, rows = std::min(kQueryBlock, p.Sq - i0);
  const int64_t strips = (rows + kStrip - 1) / kStrip;
  Carve carve(scratch);
  const TaskScratch w(carve, p);
  const int64_t pairs = p.Dkp / 2;
  for (int64_t s = 0; s < strips; ++s) {  // Q^T pairs: (x, n) = dims 2x, 2x + 1 of query n
    uint32_t* qt = w.qt + s * pairs * kStrip;
    for (int64_t n = 0; n < kStrip; n += kLanes) {
      const int64_t r = s * kStrip + n;
      for (int64_t x = (p.Dk + 1) / 2; x < pairs; ++x) std::fill_n(qt + x * kStrip + n, kLanes, 0u);
      if (r + kLanes <= rows && p.gather_q) {
        bf16::gather_pairs(static_cast<const uint16_t*>(a.q.row_address(b, i0 + r, h)),
                           a.q.stride[1], p.Dk, qt + n, kStrip);
        continue;
      }
      for (int64_t i = 0; i < kLanes; ++i) {  // the last rows; padding queries are zero
        const uint16_t* q = r + i < rows
                                ? static_cast<const uint16_t*>(a.q.row_address(b, i0 + r + i, h))
                                : nullptr;
        for (int64_t x = 0; x < (p.Dk + 1) / 2; ++x) {
          const uint32_t lo = q ? q[2 * x] : 0, hi = q && 2 * x + 1 < p.Dk ? q[2 * x + 1] : 0;
          qt[x * kStrip + n + i] = lo | hi << 16;
        }
      }
    }
  }
  for (int64_t r = 0; r < strips * kStrip; ++r) {
    KeyRange range;  // padding queries see nothing
    if (r < rows) range = p.keys(b, i0 + r);
    w.begin[r] = static_cast<int32_t>(range.begin);
    w.end[r] = static_cast<int32_t>(std::max(range.end, range.begin));
    w.m[r] = -std::numeric_limits<float>::infinity();
    w.l[r] = 0.0f;
  }
  std::fill(w.ot, w.ot + strips * p.Dvp * kStrip, 0.0f);
  const bool biased = p.biased();
  const float log2_scale = static_cast<float>(M_LOG2E) * (biased ? 1.0f : p.fscale);
  // Ranges are monotone in the query: spans outside [first begin, last end) are skipped.
  const int64_t lo = p.keys(b, i0).begin, hi = p.keys(b, i0 + rows - 1).end;
  const uint16_t* kp = p.kp_head(b, hk);
  const uint16_t* vt = p.vt_head(b, hk);
  const tiles::TileScope scope(p.path);
  for (int64_t j0 = lo / 32 * 32; j0 < hi; j0 += kSpan) {
    const int64_t keys = std::min(kSpan, (hi - j0 + 31) / 32 * 32);
    for (int64_t s = 0; s < strips; ++s) {
      const int32_t* begin = w.begin + s * kStrip;
      const int32_t* end = w.end + s * kStrip;
      if (*std::max_element(end, end + kStrip) <= j0 ||
          *std::min_element(begin, begin + kStrip) >= j0 + keys)
        continue;  // nothing of this span is visible to the strip
      tiles::gemm(p.path, keys, kStrip, p.Dkp, kp + j0 * p.Dkp, p.Dkp, w.qt + s * pairs * kStrip,
                  kStrip, w.st, kStrip, false);
      for (int64_t n = 0; biased && n < kStrip; ++n) {
        if (s * kStrip + n < rows) BiasColumn(p, w, b, h, i0 + s * kStrip + n, n, s, j0, keys);
      }
      float* ot = w.ot + s * p.Dvp * kStrip;
      for (int64_t g = 0; g < kStrip; g += kLanes) {
        bf16::softmax_columns(w.st + g, kStrip, keys, j0, begin + g, end + g, log2_scale,
                              w.m + s * kStrip + g, w.l + s * kStrip + g, ot + g, p.Dvp, w.pt + g);
      }
      tiles::gemm(p.path, p.Dvp, kStrip, keys, vt + j0, p.ldvt, w.pt, kStrip, ot, kStrip, true);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* ot = w.ot + r / kStrip * p.Dvp * kStrip + r % kStrip;
    const float l = w.l[r], inv = l > 0.0f ? 1.0f / l : 0.0f;
    float* dst = a.out.row<float>(b, i0 + r, h);
    bf16::scaled_column(ot, kStrip, p.Dv, inv, dst);
    if (a.lse.present()) {
      a.lse.at<float>(b, h, i0 + r) = l > 0.0f ? w.m[r] * static_cast<float>(M_LN2) + std::log(l)
                                               : -std::numeric_limits<float>::infinity();
    }
  }
}

}  // namespace

void softmax_tiles_forward(const AttentionArgs& a, const Problem& problem, tiles::Bf16Path path,
                           Context& ctx) {
  Plan p;
  static_cast<Problem&>(p) = problem;
  p.path = path;
  p.Dkp = (p.Dk + 31) / 32 * 32;
  p.Dvp = (p.Dv + 15) / 16 * 16;
  p.Skp = std::max<int64_t>(32, (p.Sk + 31) / 32 * 32);
  p.ldvt = OddLines(p.Skp, sizeof(uint16_t));
  p.fscale = static_cast<float>(p.scale);
  p.gather_q = a.q.stride[1] < (int64_t{1} << 26);
  p.gather_v = a.v.stride[1] < (int64_t{1} << 26);
  p.kp = reinterpret_cast<uint16_t*>(ctx.shared_scratch((p.packed_halves() + 1) / 2));
  p.vt = p.kp + p.B * p.Hk * p.Skp * p.Dkp;
  const int64_t chunks = p.Skp / 32;
  ctx.parallel_for(p.B * p.Hk * chunks, [&](int64_t task, int) {
    const int64_t bh = task / chunks;
    PackKeys(a, p, bh / p.Hk, bh % p.Hk, task % chunks * 32);
  });
  ctx.reserve_scratch(Carve::floats<TaskScratch>(p));
  const int64_t blocks = (p.Sq + kQueryBlock - 1) / kQueryBlock;
  ctx.parallel_for(p.B * p.Hq * blocks, [&](int64_t task, int worker) {
    AttendQueryBlock(a, p, task, ctx.scratch(worker));
  });
}

}  // namespace attnkit::cpu
