// Tile path selection (CPUID, XCR0, Linux's tile-data permission), the emulated tile unit
// and tiles::gemm's dispatch. See tiles.hpp.
#include "src/cpu/tiles.hpp"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

#include "src/cpu/tiles-inl.hpp"

namespace attnkit::cpu::tiles {

// tiles_amx.cpp
void amx_gemm(int64_t M, int64_t N, int64_t K, const uint16_t* a, int64_t lda, const uint32_t* b,
              int64_t ldb, float* c, int64_t ldc, bool accumulate);
void amx_begin();
void amx_end();

namespace {

// Eight registers of 16 rows x 64 bytes with TDPBF16PS's arithmetic: each float32 element
// of C adds the two products of a bfloat16 pair (exact in float32), pair by pair.
struct EmulatedUnit {
  alignas(64) uint8_t reg[8][16 * 64];

  template <int T>
  void load(const void* p, int64_t stride) {
    for (int r = 0; r < 16; ++r)
      std::memcpy(reg[T] + r * 64, static_cast<const uint8_t*>(p) + r * stride, 64);
  }
  template <int T>
  void zero() {
    std::memset(reg[T], 0, sizeof(reg[T]));
  }
  template <int C, int A, int B>
  void dp() {
    float c[16][16];
    uint16_t a[16][32];
    uint32_t b[16][16];
    std::memcpy(c, reg[C], sizeof(c));
    std::memcpy(a, reg[A], sizeof(a));
    std::memcpy(b, reg[B], sizeof(b));
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 16; ++n)
        for (int p = 0; p < 16; ++p)
          c[m][n] += Widen(a[m][2 * p]) * Widen(static_cast<uint16_t>(b[p][n])) +
                     Widen(a[m][2 * p + 1]) * Widen(static_cast<uint16_t>(b[p][n] >> 16));
    std::memcpy(reg[C], c, sizeof(c));
  }
  template <int T>
  void store(void* p, int64_t stride) {
    for (int r = 0; r < 16; ++r)
      std::memcpy(static_cast<uint8_t*>(p) + r * stride, reg[T] + r * 64, 64);
  }
  static float Widen(uint16_t x) {
    const uint32_t u = static_cast<uint32_t>(x) << 16;
    float f;
    std::memcpy(&f, &u, sizeof(f));
    return f;
  }
};

constexpr int kArchGetXcompPerm = 0x1022, kArchReqXcompPerm = 0x1023;
constexpr int kXfeatureTileData = 18;

// "" when AMX can run here, else why not.
const char* ProbeAmx() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return "no CPUID leaf 7";
  const bool tile = (edx >> 24) & 1, bf16 = (edx >> 22) & 1;
  if (!tile || !bf16) return "the CPU has no AMX-BF16";
  if (!dot_usable()) return "the CPU has no AVX512-BF16 (the tile kernels' softmax needs it)";
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !((ecx >> 27) & 1)) return "no OSXSAVE";
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if (((lo >> 17) & 3) != 3) return "the OS has not enabled the tile state (XCR0)";
  // Linux (5.16+) hands out the 8 KiB tile data state only on request, once per process.
  unsigned long features = 0;
  if (syscall(SYS_arch_prctl, kArchGetXcompPerm, &features) == 0 &&
      (features >> kXfeatureTileData) & 1)
    return "";
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureTileData) != 0)
    return "Linux refused tile data (arch_prctl ARCH_REQ_XCOMP_PERM)";
  return "";
}

const char* AmxRefusal() {
  static const char* why = ProbeAmx();
  return why;
}

// The forced path, or -1 for the best usable.
std::atomic<int> forced{-1};

}  // namespace

const char* name(Bf16Path p) {
  switch (p) {
    case Bf16Path::kAmx:
      return "amx";
    case Bf16Path::kAmxEmulated:
      return "amx-emulated";
    case Bf16Path::kDot:
      return "avx512bf16";
    case Bf16Path::kWiden:
      return "fp32";
  }
  return "?";
}

bool amx_usable() { return AmxRefusal()[0] == '\0'; }
const char* amx_refusal() { return AmxRefusal(); }

bool dot_usable() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bf16");
  return ok;
}

Bf16Path bf16_path() {
  const int f = forced.load(std::memory_order_relaxed);
  if (f >= 0) return static_cast<Bf16Path>(f);
  return amx_usable() ? Bf16Path::kAmx : dot_usable() ? Bf16Path::kDot : Bf16Path::kWiden;
}

bool force_bf16_path(Bf16Path p) {
  if (p == Bf16Path::kAmx && !amx_usable()) return false;
  // The tile kernels' softmax and the dot path's scores are AVX512-BF16 code.
  if (p != Bf16Path::kWiden && !dot_usable()) return false;
  forced.store(static_cast<int>(p), std::memory_order_relaxed);
  return true;
}

void reset_bf16_path() { forced.store(-1, std::memory_order_relaxed); }

TileScope::TileScope(Bf16Path path) : amx_(path == Bf16Path::kAmx) {
  if (amx_) amx_begin();
}
TileScope::~TileScope() {
  if (amx_) amx_end();
}

void gemm(Bf16Path path, int64_t M, int64_t N, int64_t K, const uint16_t* a, int64_t lda,
          const uint32_t* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  if (path == Bf16Path::kAmx) {
    amx_gemm(M, N, K, a, lda, b, ldb, c, ldc, accumulate);
    return;
  }
  EmulatedUnit u;
  Gemm(u, M, N, K, a, lda, b, ldb, c, ldc, accumulate);
}

}  // namespace attnkit::cpu::tiles
