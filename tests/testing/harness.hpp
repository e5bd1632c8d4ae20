// Shared test harness: random problems, strided layouts, error reports, tolerances.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "attnkit/attnkit.hpp"

// ATTNKIT_ASAN: built with AddressSanitizer (g++ defines __SANITIZE_ADDRESS__, clang has
// __has_feature), for the few tests whose environment ASan changes.
#if defined(__SANITIZE_ADDRESS__)
#define ATTNKIT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ATTNKIT_ASAN 1
#endif
#endif

namespace attnkit::testing {

struct Dims {
  int64_t B = 1, Sq = 8, Sk = 8, Hq = 1, Hk = 1, Dk = 16, Dv = 16;
};
std::string to_string(const Dims& d);

// A [B, S, H, D] tensor of doubles plus a float32 copy, stored either contiguous or
// physically as [B, H, S, D] with a padded row pitch (a non-contiguous view).
struct Operand {
  std::vector<double> f64;
  std::vector<float> f32;
  std::array<int64_t, 4> shape{}, stride{};
  ConstTensorView view64() const;
  ConstTensorView view32() const;
  TensorView mut64();
  TensorView mut32();
};

enum class Layout { kContiguous, kHeadMajorPadded };

// Rounds o's values to bfloat16 (in its float32 and float64 copies too) and returns the
// bfloat16 storage, laid out like o; view it with bf16_view.
std::vector<bfloat16> round_to_bf16(Operand& o);
ConstTensorView bf16_view(const std::vector<bfloat16>& data, const Operand& like);
// The same for either narrow dtype (bfloat16 or float16): o rounded to it (its float32 and
// float64 copies too), the narrow storage returned; narrow_view / narrow_mut view it like o.
std::vector<uint16_t> round_to_narrow(Operand& o, DType dtype);
ConstTensorView narrow_view(const std::vector<uint16_t>& data, const Operand& like, DType dtype);
TensorView narrow_mut(std::vector<uint16_t>& data, const Operand& like, DType dtype);

Operand make_operand(std::array<int64_t, 4> shape, Layout layout, std::mt19937& rng,
                     double stddev = 1.0);
Operand make_zero_operand(std::array<int64_t, 4> shape, Layout layout);

// q, k, v, out (and memory when asked) for one problem.
struct Problem {
  Dims d;
  Operand q, k, v, out, memory, memory_out;
  std::vector<int32_t> key_lengths;
  Problem(const Dims& d, uint32_t seed, Layout layout = Layout::kContiguous,
          int64_t memory_len = 0);
  AttentionArgs args64();  // out -> out.f64
  AttentionArgs args32();  // out -> out.f32
};

// Gradient buffers for one Problem (contiguous) and a random upstream gradient dout.
// With a memory in the Problem, dmemory too (luna).
struct Grads {
  Operand dq, dk, dv, dout, dmemory;
  Grads(const Problem& p, uint32_t seed);
  BackwardArgs args32(Problem& p);
  BackwardArgs args64(Problem& p);
  std::vector<float> all32()
      const;  // dq, dk, dv (, dmemory) float32 end to end, for bitwise checks
};

// What fn throws as an attnkit::Error ("argument: rule"), or "no error".
std::string error_of(const std::function<void()>& fn);

struct Report {
  double max_abs = 0, max_rel = 0, nmse = 0, ref_max = 0;
  int64_t worst = -1;
  std::string str() const;
};
// Compares a float32 (or float64) result with a float64 expectation, both [B, S, H, D].
Report compare(const Operand& got, bool got_is_f32, const Operand& want);

// The error budget of DESIGN.md section 5:
// max|fast - ref64| <= k * max|naive32 - ref64| + c * eps(float) * max|ref|.
struct Budget {
  double k = 2.0, c = 8.0;
};
double allowed(const Budget& b, double naive32_err, double ref_max);

// The float32 kernel's lse [B, Hq, Sq] against the reference's: -inf where the reference
// has a row with no visible key, else within 1e-5 relative.
void expect_lse_matches(const std::vector<float>& got, const std::vector<double>& want);

// Naive float32 softmax attention (no tiling, no online softmax): the yardstick for the budget.
void naive_softmax32(const Problem& p, bool causal, double scale, Operand& out);
// Naive float32 softmax backward (materialised P per row, llm.c style) into g's dq, dk, dv
// (float32 copies), from g.dout: the yardstick for the backward budget.
void naive_softmax_backward32(const Problem& p, bool causal, double scale, Grads& g);

}  // namespace attnkit::testing
