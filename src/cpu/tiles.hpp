// bfloat16 matrix tiles: C (+)= A B with A in bfloat16 rows and B in the VNNI pair layout,
// on Intel AMX (TMUL, TDPBF16PS) where the CPU has it and the kernel grants tile data, or
// on an emulated tile unit with the same eight 16 x 64-byte registers and the same
// blocking everywhere else, so the blocking, packing and edges are tested on every CPU.
//
// Which path a bfloat16 kernel takes is chosen once per process (Bf16Path), reported by
// Context::cpu_report() and changed by Context::set_bf16_path() for tests and timing.
#pragma once

#include <cstdint>

namespace attnkit::cpu::tiles {

// How bfloat16 score and value products run, best first.
enum class Bf16Path : uint8_t {
  kAmx,          // AMX tiles (TDPBF16PS), P rounded to bfloat16 for P V
  kAmxEmulated,  // the same blocking on the emulated tile unit (slow; for tests)
  kDot,          // AVX512-BF16 VDPBF16PS for Q K^T, P V in float32
  kWiden,        // inputs widened to float32
};
const char* name(Bf16Path p);
// Whether bfloat16 kernels on path p run on the tiles (AMX or its emulation).
inline bool on_tiles(Bf16Path p) { return p == Bf16Path::kAmx || p == Bf16Path::kAmxEmulated; }

// Whether the CPU has AMX-TILE and AMX-BF16 with the OS's tile state enabled (XCR0), and
// Linux granted this process tile data (arch_prctl ARCH_REQ_XCOMP_PERM, asked once).
bool amx_usable();
// Why amx_usable() is false ("" when it is true): no AMX, OS state off, permission refused.
const char* amx_refusal();
// Whether the CPU has AVX512-BF16.
bool dot_usable();

// The path bfloat16 kernels take now: the forced one, else the best usable.
Bf16Path bf16_path();
// Forces a path (false when this CPU cannot run it, and nothing changes); kWiden and
// kAmxEmulated always can. reset_bf16_path() returns to the best usable.
bool force_bf16_path(Bf16Path p);
void reset_bf16_path();

// Tile shapes: a C tile is 16 x 16 float32, an A tile 16 rows x 32 bfloat16, a B tile 16
// pair rows x 16 columns. gemm() takes M, N in whole 16s and K in whole 32s (callers pad
// with zeros).
constexpr int64_t kTileRows = 16, kTileK = 32;

// Holds the AMX tile configuration on this thread for a run of gemm() calls (one task),
// so that each call need not load it; outside a scope gemm() loads and releases it itself.
// Nothing for the emulated unit.
class TileScope {
 public:
  explicit TileScope(Bf16Path path);
  ~TileScope();
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;

 private:
  bool amx_;
};

// C[M][N] = (accumulate ? C : 0) + A B, float32 accumulation.
//   a: bfloat16 [M][lda] row-major (K used); b: uint32 [K / 2][ldb], element (p, n) holds
//   B[2p][n] in its low and B[2p + 1][n] in its high half; c: float32 [M][ldc].
// path is kAmx (amx_usable()) or kAmxEmulated.
void gemm(Bf16Path path, int64_t M, int64_t N, int64_t K, const uint16_t* a, int64_t lda,
          const uint32_t* b, int64_t ldb, float* c, int64_t ldc, bool accumulate);

// The tile unit's peak: `iters` x 4 TDPBF16PS on registers (64 Ki flops per iteration),
// for benchmarks. Requires amx_usable().
void amx_peak_loop(int64_t iters);
inline constexpr double kAmxPeakFlopsPerIter = 4.0 * 16 * 16 * 32 * 2;

}  // namespace attnkit::cpu::tiles
