#include "src/mechanisms/validate.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace attnkit::detail {
namespace {

std::string s(int64_t x) { return std::to_string(x); }
const char* kDimNames[] = {"batch", "seq", "heads", "head_dim"};

inline double as_float(double x) { return x; }
inline float as_float(float x) { return x; }
inline float as_float(bfloat16 x) { return to_float(x); }
inline float as_float(float16 x) { return to_float(x); }

// Calls fn(row pointer, row length) for every last-dimension row of t; stops when fn returns
// false, and returns false then. distinct: a stride-0 (broadcast) dimension repeats the same
// rows, so it is visited once (a broadcast view of 2^30 rows is scanned in one step).
// Rows laid out back to back are one row (a contiguous [B, S, H, D] tensor is visited in
// one call): the scans then run as long vector loops instead of a call per D elements.
template <typename T, typename Fn>
bool for_each_row(const ConstTensorView& t, Fn&& fn, bool distinct = true) {
  const T* base = t.ptr<const T>();
  int64_t n3 = t.rank >= 1 ? t.shape[t.rank - 1] : 1;
  int inner = t.rank - 1;  // dimensions [inner, rank) form one row
  while (inner > 0 && n3 > 0 && t.stride[inner - 1] == n3) n3 *= t.shape[--inner];
  int64_t outer[3] = {1, 1, 1}, st[3] = {0, 0, 0};
  for (int i = 0; i < inner; ++i) {
    const bool repeat = distinct && t.stride[i] == 0 && t.shape[i] > 0;
    outer[3 - (t.rank - 1) + i] = repeat ? 1 : t.shape[i];
    st[3 - (t.rank - 1) + i] = t.stride[i];
  }
  for (int64_t a = 0; a < outer[0]; ++a)
    for (int64_t b = 0; b < outer[1]; ++b)
      for (int64_t c = 0; c < outer[2]; ++c)
        if (!fn(base + a * st[0] + b * st[1] + c * st[2], n3)) return false;
  return true;
}

template <typename T>
bool all_finite(const ConstTensorView& t) {
  return for_each_row<T>(t, [](const T* p, int64_t n) {
    bool ok = true;
    for (int64_t i = 0; i < n; ++i) ok &= std::isfinite(as_float(p[i]));
    return ok;
  });
}
// float32: the exponent bits, as integers (no early exit, so the compiler vectorises the
// scan; it runs over every input and output of every call).
template <>
bool all_finite<float>(const ConstTensorView& t) {
  return for_each_row<float>(t, [](const float* p, int64_t n) {
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; ++i) {
      uint32_t u;
      std::memcpy(&u, p + i, sizeof(u));
      bad |= static_cast<uint32_t>((u & 0x7f800000u) == 0x7f800000u);
    }
    return bad == 0;
  });
}
// The narrow dtypes: the same exponent test on their 16 bits (8 exponent bits for bfloat16,
// 5 for float16).
template <typename T, uint16_t kExponent>
bool all_finite_narrow(const ConstTensorView& t) {
  return for_each_row<T>(t, [](const T* p, int64_t n) {
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; ++i)
      bad |= static_cast<uint32_t>((p[i].bits & kExponent) == kExponent);
    return bad == 0;
  });
}

bool scan_finite(const ConstTensorView& t) {
  return t.dtype == DType::kF64    ? all_finite<double>(t)
         : t.dtype == DType::kBF16 ? all_finite_narrow<bfloat16, 0x7f80>(t)
         : t.dtype == DType::kF16  ? all_finite_narrow<float16, 0x7c00>(t)
                                   : all_finite<float>(t);
}

thread_local Context* scan_context = nullptr;

// all_finite over ScanThreads' context when there is one and t is large: t is cut along its
// outermost dimension that holds distinct rows into a few pieces per thread.
bool finite(const ConstTensorView& t) {
  Context* ctx = ScanThreads::current();
  int dim = -1;
  int64_t elems = 1;
  for (int i = 0; i < t.rank; ++i) {
    elems *= t.stride[i] == 0 ? 1 : t.shape[i];
    if (dim < 0 && i + 1 < t.rank && t.shape[i] > 1 && t.stride[i] != 0) dim = i;
  }
  constexpr int64_t kParallelBytes = int64_t{1} << 20;  // below it a wake-up costs more
  if (ctx == nullptr || ctx->num_threads() < 2 || dim < 0 ||
      elems * static_cast<int64_t>(dtype_size(t.dtype)) < kParallelBytes)
    return scan_finite(t);
  const int64_t pieces = std::min<int64_t>(t.shape[dim], 4 * ctx->num_threads());
  std::vector<char> ok(static_cast<size_t>(pieces), 1);
  ctx->parallel_for(pieces, [&](int64_t p, int) {
    const int64_t begin = t.shape[dim] * p / pieces, end = t.shape[dim] * (p + 1) / pieces;
    ConstTensorView piece = t;
    piece.data = static_cast<const char*>(t.data) +
                 begin * t.stride[dim] * static_cast<int64_t>(dtype_size(t.dtype));
    piece.shape[dim] = end - begin;
    ok[static_cast<size_t>(p)] = scan_finite(piece);
  });
  return std::all_of(ok.begin(), ok.end(), [](char x) { return x != 0; });
}

template <typename T>
double max_abs(const ConstTensorView& t) {
  double m = 0;
  for_each_row<T>(t, [&](const T* p, int64_t n) {
    for (int64_t i = 0; i < n; ++i) m = std::max(m, std::abs(static_cast<double>(as_float(p[i]))));
    return true;
  });
  return m;
}

double max_abs_of(const ConstTensorView& t) {
  if (!t.present() || t.data == nullptr) return 0;
  return t.dtype == DType::kF64    ? max_abs<double>(t)
         : t.dtype == DType::kBF16 ? max_abs<bfloat16>(t)
         : t.dtype == DType::kF16  ? max_abs<float16>(t)
                                   : max_abs<float>(t);
}

std::string sci(double x) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3g", x);
  return buf;
}

// [lowest, highest] byte address touched by a view (empty views: lo > hi).
std::pair<uintptr_t, uintptr_t> byte_range(const ConstTensorView& t) {
  uintptr_t lo = reinterpret_cast<uintptr_t>(t.data);
  uintptr_t hi = lo;
  for (int i = 0; i < t.rank; ++i) {
    if (t.shape[i] == 0) return {1, 0};
    hi += static_cast<uintptr_t>((t.shape[i] - 1) * t.stride[i]) * dtype_size(t.dtype);
  }
  return {lo, hi + dtype_size(t.dtype) - 1};
}

// Exact overlap tests enumerate rows (the contiguous last dimension); past this many rows
// they give up and answer "may overlap".
constexpr int64_t kMaxExactRows = int64_t{1} << 22;

// Rows for_each_row visits (distinct: broadcast dimensions once).
int64_t num_rows(const ConstTensorView& t, bool distinct) {
  int64_t n = 1;
  for (int i = 0; i + 1 < t.rank; ++i) n *= distinct && t.stride[i] == 0 ? 1 : t.shape[i];
  return n;
}

// [start, end) byte intervals of t's rows, tagged with `tag`, appended to rows.
struct Interval {
  uintptr_t start, end;
  int tag;
};
void append_rows(const ConstTensorView& t, int tag, bool distinct, std::vector<Interval>& rows) {
  const size_t es = dtype_size(t.dtype);
  const uintptr_t bytes = static_cast<uintptr_t>(t.rank ? t.shape[t.rank - 1] : 1) * es;
  ConstTensorView in_bytes = t;  // the same rows, strides in bytes
  for (int i = 0; i < t.rank; ++i) in_bytes.stride[i] = t.stride[i] * static_cast<int64_t>(es);
  for_each_row<char>(
      in_bytes,
      [&](const char* p, int64_t) {
        const uintptr_t a = reinterpret_cast<uintptr_t>(p);
        rows.push_back({a, a + bytes, tag});
        return true;
      },
      distinct);
}

// Whether two rows with different tags (or, with tags all equal, any two rows) intersect.
bool intervals_intersect(std::vector<Interval>& rows, bool self) {
  std::sort(rows.begin(), rows.end(),
            [](const Interval& a, const Interval& b) { return a.start < b.start; });
  // Sweep: the furthest end seen so far per tag.
  uintptr_t end[2] = {0, 0};
  bool seen[2] = {false, false};
  for (const Interval& r : rows) {
    if (r.start == r.end) continue;
    const int other = self ? r.tag : 1 - r.tag;
    if (seen[other] && end[other] > r.start) return true;
    end[r.tag] = seen[r.tag] ? std::max(end[r.tag], r.end) : r.end;
    seen[r.tag] = true;
  }
  return false;
}

}  // namespace

bool views_overlap(const ConstTensorView& a, const ConstTensorView& b) {
  const auto [a0, a1] = byte_range(a);
  const auto [b0, b1] = byte_range(b);
  if (!(a0 <= a1 && b0 <= b1 && a0 <= b1 && b0 <= a1)) return false;
  // Repeated (broadcast) rows of one view lie where its first copy does: visited once.
  if (num_rows(a, true) + num_rows(b, true) > kMaxExactRows) return true;
  std::vector<Interval> rows;
  rows.reserve(num_rows(a, true) + num_rows(b, true));
  append_rows(a, 0, true, rows);
  append_rows(b, 1, true, rows);
  return intervals_intersect(rows, false);
}

bool view_overlaps_itself(const ConstTensorView& t) {
  if (!t.present() || t.rank == 0) return false;
  for (int i = 0; i < t.rank; ++i)
    if (t.shape[i] == 0) return false;
  // Sufficient rule first: dims sorted by stride, each stride past the extent of the smaller.
  std::array<int, kMaxRank> order{};
  int n = 0;
  for (int i = 0; i < t.rank; ++i)
    if (t.shape[i] > 1) order[n++] = i;
  for (int i = 1; i < n; ++i)  // insertion sort by stride (at most kMaxRank dims)
    for (int j = i; j > 0 && t.stride[order[j]] < t.stride[order[j - 1]]; --j)
      std::swap(order[j], order[j - 1]);
  int64_t extent = 1;
  bool ok = true;
  for (int i = 0; i < n && ok; ++i) {
    ok = t.stride[order[i]] >= extent;
    extent += (t.shape[order[i]] - 1) * t.stride[order[i]];
  }
  if (ok) return false;
  const int64_t last = t.shape[t.rank - 1];
  if (last > 1 && t.stride[t.rank - 1] != 1) return true;  // check_tensor reports this one
  if (num_rows(t, false) > kMaxExactRows) return true;
  std::vector<Interval> rows;
  rows.reserve(num_rows(t, false));
  append_rows(t, 0, false, rows);
  return intervals_intersect(rows, true);
}

namespace {
thread_local int inputs_only_depth = 0;
}  // namespace
InputsOnly::InputsOnly() { ++inputs_only_depth; }
InputsOnly::~InputsOnly() { --inputs_only_depth; }
bool InputsOnly::active() { return inputs_only_depth > 0; }

ScanThreads::ScanThreads(Context& ctx) : previous_(scan_context) { scan_context = &ctx; }
ScanThreads::~ScanThreads() { scan_context = previous_; }
Context* ScanThreads::current() { return scan_context; }

void check_tensor(const ConstTensorView& t, std::string_view name, int rank, DType dtype) {
  const std::string n(name);
  if (!t.present()) throw Error(n, "is required");
  if (t.rank != rank) throw Error(n, "must have rank " + s(rank) + ", got " + s(t.rank));
  if (t.dtype != dtype) {
    throw Error(n, std::string("must be ") + dtype_name(dtype) + ", got " + dtype_name(t.dtype));
  }
  int64_t numel = 1;
  for (int i = 0; i < rank; ++i) {
    const std::string dim = rank == 4 ? kDimNames[i] : "dim " + s(i);
    if (t.shape[i] < 0) throw Error(n, dim + " (" + s(t.shape[i]) + ") must be >= 0");
    if (t.shape[i] >= kMaxDim) throw Error(n, dim + " (" + s(t.shape[i]) + ") must be < 2^31");
    if (t.stride[i] < 0)
      throw Error(n, "stride of " + dim + " (" + s(t.stride[i]) + ") must be >= 0");
    if (t.stride[i] >= (int64_t{1} << 40)) throw Error(n, "stride of " + dim + " must be < 2^40");
    numel *= std::max<int64_t>(t.shape[i], 1);
    if (numel >= (int64_t{1} << 40)) throw Error(n, "must have fewer than 2^40 elements");
  }
  // An empty view reads nothing: any pointer (numpy 2 gives empty arrays stride 0; an empty
  // buffer may have none) and any strides do.
  bool empty = false;
  for (int i = 0; i < rank; ++i) empty |= t.shape[i] == 0;
  if (empty) return;
  if (t.data == nullptr) throw Error(n, "data pointer is null");
  if (t.stride[rank - 1] != 1 && t.shape[rank - 1] > 1) {
    throw Error(
        n, "last dimension must be contiguous (stride 1), got stride " + s(t.stride[rank - 1]));
  }
}

void check_finite(const ConstTensorView& t, std::string_view name) {
  if (InputsOnly::active()) return;  // forward scans the values
  const bool ok = finite(t);
  if (!ok) throw Error(std::string(name), "must be finite (found NaN or Inf)");
}

void check_result(const ConstTensorView& t, std::string_view name, const AttentionArgs& a) {
  if (t.dtype == DType::kBool || finite(t)) return;
  if (is_narrow(t.dtype)) {  // rounding a finite float32 result overflowed (float16)
    throw Error(std::string(name),
                std::string(dtype_name(t.dtype)) + " cannot hold the result (largest entry past " +
                    (t.dtype == DType::kF16 ? "65504" : "3.4e38") +
                    "); scale the inputs down, or pass a float32 " + std::string(name));
  }
  throw Error(std::string(name),
              std::string(dtype_name(t.dtype)) +
                  " arithmetic overflowed for these finite inputs (largest |q| " +
                  sci(max_abs_of(a.q)) + ", |k| " + sci(max_abs_of(a.k)) + ", |v| " +
                  sci(max_abs_of(a.v)) +
                  "); scale the inputs or the logit scale down, or use float64");
}

void check_no_self_overlap(const ConstTensorView& t, std::string_view name) {
  if (!view_overlaps_itself(t)) return;
  std::string st;
  for (int i = 0; i < t.rank; ++i) st += (i ? ", " : "") + s(t.stride[i]);
  throw Error(std::string(name), "is written, so its elements must not overlap each other (shape " +
                                     shape_string(t) + ", strides [" + st + "])");
}

void check_no_overlap(const ConstTensorView& out, std::string_view out_name,
                      const ConstTensorView& in, std::string_view in_name) {
  if (views_overlap(out, in)) {
    throw Error(std::string(out_name), "must not overlap " + std::string(in_name));
  }
}

Shape check_qkv(const AttentionArgs& a, DType dtype) {
  check_tensor(a.q, "q", 4, dtype);
  check_tensor(a.k, "k", 4, dtype);
  check_tensor(a.v, "v", 4, dtype);
  const bool out_given = a.out.present() || !InputsOnly::active();
  if (out_given) {
    if (is_narrow(dtype) && a.out.present() && a.out.dtype != dtype && a.out.dtype != DType::kF32) {
      throw Error("out", std::string("must be ") + dtype_name(dtype) + " or float32 (for " +
                             dtype_name(dtype) + " q, k, v), got " + dtype_name(a.out.dtype));
    }
    const bool wide = is_narrow(dtype) && a.out.present() && a.out.dtype == DType::kF32;
    check_tensor(as_const(a.out), "out", 4, wide ? DType::kF32 : dtype);
    check_no_self_overlap(as_const(a.out), "out");
  }
  Shape sh{a.q.shape[0], a.q.shape[1], a.k.shape[1], a.q.shape[2],
           a.k.shape[2], a.q.shape[3], a.v.shape[3]};
  if (sh.B < 1) throw Error("q", "batch must be >= 1");
  if (sh.Hq < 1) throw Error("q", "heads must be >= 1");
  if (sh.Hk < 1) throw Error("k", "heads must be >= 1");
  if (sh.Dk < 1) throw Error("q", "head_dim must be >= 1");
  if (sh.Dv < 1) throw Error("v", "head_dim must be >= 1");
  if (sh.Dk > kMaxHeadDim)
    throw Error("q", "head_dim (" + s(sh.Dk) + ") must be <= " + s(kMaxHeadDim));
  if (sh.Dv > kMaxHeadDim)
    throw Error("v", "head_dim (" + s(sh.Dv) + ") must be <= " + s(kMaxHeadDim));
  if (a.k.shape[0] != sh.B)
    throw Error("k", "batch (" + s(a.k.shape[0]) + ") must equal q batch (" + s(sh.B) + ")");
  if (a.v.shape[0] != sh.B)
    throw Error("v", "batch (" + s(a.v.shape[0]) + ") must equal q batch (" + s(sh.B) + ")");
  if (sh.Hq % sh.Hk != 0)
    throw Error("k", "heads (" + s(sh.Hk) + ") must divide q heads (" + s(sh.Hq) + ")");
  if (a.k.shape[3] != sh.Dk)
    throw Error("k", "head_dim (" + s(a.k.shape[3]) + ") must equal q head_dim (" + s(sh.Dk) + ")");
  if (a.v.shape[1] != sh.Sk)
    throw Error("v", "seq (" + s(a.v.shape[1]) + ") must equal k seq (" + s(sh.Sk) + ")");
  if (a.v.shape[2] != sh.Hk)
    throw Error("v", "heads (" + s(a.v.shape[2]) + ") must equal k heads (" + s(sh.Hk) + ")");
  const int64_t want[4] = {sh.B, sh.Sq, sh.Hq, sh.Dv};
  for (int i = 0; i < 4 && out_given; ++i) {
    if (a.out.shape[i] != want[i]) {
      throw Error("out", std::string(kDimNames[i]) + " (" + s(a.out.shape[i]) + ") must be " +
                             s(want[i]) + " (shape [B, Sq, Hq, Dv] = [" + s(sh.B) + ", " +
                             s(sh.Sq) + ", " + s(sh.Hq) + ", " + s(sh.Dv) + "])");
    }
  }
  if (a.lse.present()) {
    check_tensor(as_const(a.lse), "lse", 3, DType::kF32);
    check_no_self_overlap(as_const(a.lse), "lse");
    if (dtype == DType::kF64) throw Error("lse", "is float32 and not for float64 inputs");
    if (a.lse.shape[0] != sh.B || a.lse.shape[1] != sh.Hq || a.lse.shape[2] != sh.Sq) {
      throw Error("lse", "shape must be [B, Hq, Sq] = [" + s(sh.B) + ", " + s(sh.Hq) + ", " +
                             s(sh.Sq) + "]");
    }
    check_no_overlap(as_const(a.lse), "lse", as_const(a.out), "out");
  }
  if (!a.key_lengths.empty()) {
    if (static_cast<int64_t>(a.key_lengths.size()) != sh.B) {
      throw Error("key_lengths", "must have one entry per batch (" + s(sh.B) + "), got " +
                                     s(a.key_lengths.size()));
    }
    for (size_t b = 0; b < a.key_lengths.size(); ++b) {
      if (a.key_lengths[b] < 0 || a.key_lengths[b] > sh.Sk) {
        throw Error("key_lengths", "entry " + s(b) + " (" + s(a.key_lengths[b]) +
                                       ") must be in [0, " + s(sh.Sk) + "]");
      }
    }
  }
  for (auto [t, name] : {std::pair{a.q, "q"}, {a.k, "k"}, {a.v, "v"}}) {
    check_no_overlap(as_const(a.out), "out", t, name);
    check_finite(t, name);
  }
  return sh;
}

void check_unused(const AttentionArgs& a, std::string_view mechanism, bool memory, bool gate,
                  bool filter, bool lse) {
  const std::string m(mechanism);
  if (!memory && (a.memory.present() || a.memory_out.present()))
    throw Error("memory", "is not used by " + m);
  if (!gate && a.gate.present()) throw Error("gate", "is not used by " + m);
  if (!filter && a.filter.present()) throw Error("filter", "is not used by " + m);
  if (!lse && a.lse.present()) throw Error("lse", "is not produced by " + m);
}

// memory [B, L, Hq, Dk] (B: sequences of a packed batch) and optional memory_out [B, L, Hq, Dv];
// keys = values = memory rows somewhere, so Dk == Dv. Shared by luna and memory.
void check_memory_args(const AttentionArgs& a, const Shape& sh, DType dtype) {
  if (sh.Dk != sh.Dv) {
    throw Error("v", "head_dim (" + std::to_string(sh.Dv) + ") must equal q head_dim (" +
                         std::to_string(sh.Dk) + "): memory rows serve as keys and values");
  }
  check_tensor(a.memory, "memory", 4, dtype);
  // A packed batch (cu_seqlens) has one memory per sequence.
  const int64_t batch =
      a.mask.varlen() ? std::max<int64_t>(1, a.mask.cu_seqlens_q.size()) - 1 : sh.B;
  if (a.memory.shape[0] != batch || a.memory.shape[2] != sh.Hq || a.memory.shape[3] != sh.Dk ||
      a.memory.shape[1] < 1) {
    throw Error("memory", "shape " + shape_string(a.memory) + " must be [B, L >= 1, Hq, Dk]");
  }
  check_finite(a.memory, "memory");
  if (a.memory_out.present()) {
    check_tensor(as_const(a.memory_out), "memory_out", 4, dtype);
    check_no_self_overlap(as_const(a.memory_out), "memory_out");
    if (a.memory_out.shape != a.memory.shape) {
      throw Error("memory_out", "shape " + shape_string(a.memory_out) +
                                    " must equal memory shape " + shape_string(a.memory));
    }
    check_no_overlap(as_const(a.memory_out), "memory_out", a.memory, "memory");
    check_no_overlap(as_const(a.memory_out), "memory_out", as_const(a.out), "out");
  }
}

void check_stream_spec(const StreamSpec& sp, bool window_ok, bool filter_ok) {
  if (sp.filter.present() && !filter_ok)
    throw Error("filter", "only a memory stream takes filter weights");
  if (sp.window != -1 && !window_ok)
    throw Error("window", "only a KV-cache stream (softmax, topk) keeps a sliding window");
  if ((sp.softcap != 0.0 || sp.alibi_slopes.present()) && !window_ok)
    throw Error("stream",
                "softcap and alibi_slopes are only for a KV-cache stream (softmax, topk)");
  if (!(sp.softcap >= 0.0) || !std::isfinite(sp.softcap))
    throw Error("softcap", "must be finite and >= 0 (0: off)");
  if (sp.alibi_slopes.present()) {
    const ConstTensorView& t = sp.alibi_slopes;
    if (sp.window != -1)
      throw Error("alibi_slopes", "needs every token's position; a window's ring has none");
    const bool ok = t.dtype == DType::kF32 &&
                    ((t.rank == 1 && t.shape[0] == sp.heads) ||
                     (t.rank == 2 && t.shape[0] == sp.batch && t.shape[1] == sp.heads));
    if (!ok || t.data == nullptr) {
      throw Error("alibi_slopes", "must be float32 [heads] or [batch, heads] = [" + s(sp.batch) +
                                      ", " + s(sp.heads) + "]");
    }
  }
  if (sp.window < -1 || sp.window >= kMaxDim - 1)
    throw Error("window", "must be -1 (every token) or in [0, 2^31 - 1), got " + s(sp.window));
  if (sp.batch < 1 || sp.heads < 1 || sp.kv_heads < 1 || sp.head_dim < 1 || sp.value_dim < 1) {
    throw Error("stream", "batch, heads, kv_heads, head_dim and value_dim must be >= 1");
  }
  if (sp.batch >= kMaxDim || sp.heads >= kMaxDim) {
    throw Error("stream", "batch and heads must be < 2^31");
  }
  if (sp.heads % sp.kv_heads != 0) throw Error("stream", "kv_heads must divide heads");
  if (sp.head_dim > kMaxHeadDim || sp.value_dim > kMaxHeadDim) {
    throw Error("stream", "head dims must be <= " + std::to_string(kMaxHeadDim));
  }
  if (sp.max_tokens < 0 || sp.max_tokens >= kMaxDim) {
    throw Error("max_tokens", "must be in [0, 2^31) (0: grow as needed), got " + s(sp.max_tokens));
  }
  // Doubles: the products below cannot overflow, and every state is within these bounds.
  const double rows = static_cast<double>(sp.batch) * sp.heads;
  if (rows * (sp.head_dim + 1) * (sp.value_dim + 1) >= kMaxStreamElements) {
    throw Error("stream", "batch x heads x head_dim x value_dim (" + s(sp.batch) + " x " +
                              s(sp.heads) + " x " + s(sp.head_dim) + " x " + s(sp.value_dim) +
                              ") must be < 2^40 state elements");
  }
  if (static_cast<double>(sp.batch) * sp.kv_heads * sp.max_tokens * (sp.head_dim + sp.value_dim) >=
      kMaxStreamElements) {
    throw Error("max_tokens", "a KV cache of " + s(sp.max_tokens) + " tokens x batch " +
                                  s(sp.batch) + " x kv_heads " + s(sp.kv_heads) +
                                  " must be < 2^40 elements");
  }
}

namespace {
void check_stream_tensor(const ConstTensorView& t, const char* name, const StreamSpec& s,
                         int64_t heads, int64_t dim) {
  check_tensor(t, name, 4, DType::kF32);
  if (t.shape[0] != s.batch || t.shape[2] != heads || t.shape[3] != dim) {
    throw Error(name, "shape " + shape_string(t) + " must be [" + std::to_string(s.batch) +
                          ", T, " + std::to_string(heads) + ", " + std::to_string(dim) + "]");
  }
  check_finite(t, name);
}
}  // namespace

void check_stream_append(const StreamSpec& s, const ConstTensorView& k, const ConstTensorView& v) {
  check_stream_tensor(k, "k", s, s.kv_heads, s.head_dim);
  check_stream_tensor(v, "v", s, s.kv_heads, s.value_dim);
  if (v.shape[1] != k.shape[1]) throw Error("v", "seq must equal k seq");
}

void check_stream_memory(const StreamSpec& s) {
  check_tensor(s.memory, "memory", 4, DType::kF32);
  if (s.memory.shape[0] != s.batch || s.memory.shape[2] != s.heads ||
      s.memory.shape[3] != s.head_dim || s.memory.shape[1] < 1) {
    throw Error("memory", "shape " + shape_string(s.memory) + " must be [B, L >= 1, Hq, Dk]");
  }
  check_finite(s.memory, "memory");
}

std::shared_ptr<Tensor<float>> copy_stream_memory(const StreamSpec& s) {
  check_stream_memory(s);
  auto mem = std::make_shared<Tensor<float>>(
      std::vector<int64_t>(s.memory.shape.begin(), s.memory.shape.end()));
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t l = 0; l < s.memory.shape[1]; ++l)
      for (int64_t h = 0; h < s.heads; ++h)
        std::copy_n(s.memory.row<const float>(b, l, h), s.head_dim,
                    mem->view().row<float>(b, l, h));
  return mem;
}

void check_stream_gate(const StreamSpec& sp, const ConstTensorView& k,
                       const ConstTensorView& gate) {
  check_tensor(gate, "gate", 3, DType::kF32);
  if (gate.shape[0] != sp.batch || gate.shape[1] != k.shape[1] || gate.shape[2] != sp.kv_heads) {
    throw Error("gate", "shape " + shape_string(gate) + " must be [B, T, Hk] = [" + s(sp.batch) +
                            ", " + s(k.shape[1]) + ", " + s(sp.kv_heads) + "]");
  }
  check_finite(gate, "gate");
}

void check_stream_query(const StreamSpec& s, const ConstTensorView& q, const TensorView& out) {
  check_stream_tensor(q, "q", s, s.heads, s.head_dim);
  check_tensor(as_const(out), "out", 4, DType::kF32);
  check_no_self_overlap(as_const(out), "out");
  if (out.shape[0] != q.shape[0] || out.shape[1] != q.shape[1] || out.shape[2] != s.heads ||
      out.shape[3] != s.value_dim) {
    throw Error("out", "shape " + shape_string(out) + " must be [B, Tq, Hq, Dv]");
  }
  check_no_overlap(as_const(out), "out", q, "q");
}

void check_backward(const BackwardArgs& g, DType dtype) {
  const AttentionArgs& a = g.forward;
  const std::pair<ConstTensorView, ConstTensorView> pairs[] = {{g.dout, as_const(a.out)},
                                                               {as_const(g.dq), a.q},
                                                               {as_const(g.dk), a.k},
                                                               {as_const(g.dv), a.v}};
  const char* names[] = {"dout", "dq", "dk", "dv"};
  const char* like[] = {"out", "q", "k", "v"};
  for (int t = 0; t < 4; ++t) {
    check_tensor(pairs[t].first, names[t], 4, dtype);
    if (t > 0) check_no_self_overlap(pairs[t].first, names[t]);
    if (pairs[t].first.shape != pairs[t].second.shape) {
      throw Error(names[t], "shape " + shape_string(pairs[t].first) + " must equal " + like[t] +
                                " shape " + shape_string(pairs[t].second));
    }
  }
  check_finite(g.dout, "dout");
  if (g.dgate.present() && !a.gate.present()) {
    throw Error("dgate", "is the gradient of gate, which was not given");
  }
  if (g.dfilter.present() && !a.filter.present()) {
    throw Error("dfilter", "is the gradient of filter, which was not given");
  }
  if (g.dmemory.present() && !a.memory.present()) {
    throw Error("dmemory", "is the gradient of memory, which was not given");
  }
  for (int t = 1; t < 4; ++t) {
    for (int u = 0; u < 4; ++u) {
      if (u != t) check_no_overlap(pairs[t].first, names[t], pairs[u].first, names[u]);
      check_no_overlap(pairs[t].first, names[t], pairs[u].second, like[u]);
    }
  }
}

void check_input_gradient(const BackwardArgs& g, const TensorView& grad, std::string_view name,
                          const ConstTensorView& input, std::string_view input_name, DType dtype,
                          bool required) {
  if (!grad.present() && !required) return;
  check_tensor(as_const(grad), name, input.rank, dtype);
  check_no_self_overlap(as_const(grad), name);
  if (grad.shape != input.shape) {
    throw Error(std::string(name), "shape " + shape_string(grad) + " must equal " +
                                       std::string(input_name) + " shape " + shape_string(input));
  }
  const AttentionArgs& a = g.forward;
  for (auto [t, n] : {std::pair{a.q, "q"},
                      {a.k, "k"},
                      {a.v, "v"},
                      {a.memory, "memory"},
                      {a.gate, "gate"},
                      {a.filter, "filter"},
                      {g.dout, "dout"},
                      {as_const(g.dq), "dq"},
                      {as_const(g.dk), "dk"},
                      {as_const(g.dv), "dv"},
                      {as_const(g.dgate), "dgate"},
                      {as_const(g.dmemory), "dmemory"},
                      {as_const(g.dfilter), "dfilter"}}) {
    if (t.present() && n != name) check_no_overlap(as_const(grad), name, t, n);
  }
}

}  // namespace attnkit::detail
