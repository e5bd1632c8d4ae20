// Named scratch buffers laid out by the code that uses them. A kernel writes its layout
// once, as a struct whose constructor takes its buffers from a Carve; run on a null Carve it
// only counts (the size to reserve), run on the reserved block it places the buffers. So the
// size and the offsets cannot disagree, and no kernel sums sizes by hand.
//
//   struct Scratch {
//     float *q, *s;
//     Scratch(Carve& c, int64_t rows, int64_t dk) : q(c.take(rows * dk)), s(c.take(rows)) {}
//   };
//   ctx.reserve_scratch(Carve::floats<Scratch>(rows, dk));
//   ... Carve c(ctx.scratch(worker)); Scratch w(c, rows, dk);
#pragma once

#include <algorithm>
#include <cstdint>

namespace attnkit::cpu {

class Carve {
 public:
  // Every buffer starts on a 64-byte boundary (16 floats), as the SIMD loads want.
  static constexpr int64_t kAlign = 16;

  explicit Carve(float* base = nullptr) : base_(base) {}
  // The next n floats (null when only counting).
  float* take(int64_t n) {
    float* p = base_ ? base_ + used_ : nullptr;
    used_ += (std::max<int64_t>(n, 0) + kAlign - 1) / kAlign * kAlign;
    return p;
  }
  // n 32-bit integers (indices), from the same block.
  int32_t* take_int32(int64_t n) { return reinterpret_cast<int32_t*>(take(n)); }
  int64_t used() const { return used_; }

  // The floats a Layout built from args needs.
  template <typename Layout, typename... Args>
  static size_t floats(const Args&... args) {
    Carve c;
    Layout layout(c, args...);
    (void)layout;
    return static_cast<size_t>(c.used());
  }

 private:
  float* base_;
  int64_t used_ = 0;
};

}  // namespace attnkit::cpu
