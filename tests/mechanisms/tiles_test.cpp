// The bfloat16 tile paths (src/cpu/tiles.hpp, Context::bf16_paths()): tiles::gemm on the
// emulated unit everywhere and on AMX where the CPU has it, against float64 products of the
// same bfloat16 values; exact softmax's forward on every bfloat16 path this CPU has.
#include "src/cpu/tiles.hpp"

#include <cmath>
#include <cstring>
#include <tuple>

#include "tests/testing/harness.hpp"
#include "tests/testing/sweep.hpp"

namespace attnkit::testing {
namespace {

using cpu::tiles::Bf16Path;

// A writable view of test-owned storage.
TensorView read_write(const ConstTensorView& c) {
  TensorView v;
  v.data = const_cast<void*>(c.data);
  v.dtype = c.dtype;
  v.rank = c.rank;
  v.shape = c.shape;
  v.stride = c.stride;
  return v;
}

float widen(uint16_t x) {
  const uint32_t u = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// C (+)= A B for shapes that end mid-block (16-row and 16-column strips), K of 1-3 tile
// depths, padded leading dimensions: against float64 within float32 accumulation of K
// products (|err| <= 2 K eps32 (sum |a b| + |c0|)).
void check_gemm(Bf16Path path) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  for (int64_t M : {16, 32, 48, 80})
    for (int64_t N : {16, 32, 48, 112})
      for (int64_t K : {32, 64, 96})
        for (bool accumulate : {false, true}) {
          const int64_t lda = K + 8, ldb = N + 16, ldc = N + 3;
          std::vector<uint16_t> a(M * lda), bk(K * N);  // bk: B [K][N] as bfloat16
          for (auto& x : a) x = to_bfloat16(normal(rng)).bits;
          for (auto& x : bk) x = to_bfloat16(normal(rng)).bits;
          std::vector<uint32_t> b(K / 2 * ldb, 0xFFFFFFFFu);  // padding must not be read
          for (int64_t p = 0; p < K / 2; ++p)
            for (int64_t n = 0; n < N; ++n)
              b[p * ldb + n] = bk[2 * p * N + n] | static_cast<uint32_t>(bk[(2 * p + 1) * N + n])
                                                       << 16;
          std::vector<float> c(M * ldc);
          for (auto& x : c) x = normal(rng);
          const std::vector<float> c0 = c;
          cpu::tiles::gemm(path, M, N, K, a.data(), lda, b.data(), ldb, c.data(), ldc, accumulate);
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
              double want = accumulate ? c0[m * ldc + n] : 0.0, mag = std::abs(want);
              for (int64_t k = 0; k < K; ++k) {
                const double t = double(widen(a[m * lda + k])) * widen(bk[k * N + n]);
                want += t;
                mag += std::abs(t);
              }
              ASSERT_NEAR(c[m * ldc + n], want, 2.0 * K * 6e-8 * mag + 1e-30)
                  << cpu::tiles::name(path) << " M=" << M << " N=" << N << " K=" << K
                  << (accumulate ? " accumulate" : "") << " at (" << m << ", " << n << ")";
            }
          for (int64_t m = 0; m < M; ++m)  // columns past N untouched
            for (int64_t n = N; n < ldc; ++n) ASSERT_EQ(c[m * ldc + n], c0[m * ldc + n]);
        }
}

TEST(Tiles, EmulatedGemmMatchesFloat64) { check_gemm(Bf16Path::kAmxEmulated); }

TEST(Tiles, AmxGemmMatchesFloat64) {
  if (!cpu::tiles::amx_usable()) GTEST_SKIP() << "no AMX here: " << cpu::tiles::amx_refusal();
  check_gemm(Bf16Path::kAmx);
}

// Every path this CPU has, the emulated one among them; the tile paths round P to
// bfloat16 for P V (as PyTorch's flash attention does), the others agree to float32
// rounding of the scores.
TEST(Softmax, EveryBf16PathMatchesTheFloat32Result) {
  const std::vector<std::string> paths = Context::bf16_paths();
  ASSERT_GE(paths.size(), 2u);  // amx-emulated and fp32 at least
  for (const std::string& path : paths) {
    SCOPED_TRACE(path);
    Context::set_bf16_path(path);
    EXPECT_EQ(Context::bf16_path(), path);
    EXPECT_NE(Context::cpu_report().find("bf16: " + path), std::string::npos);
    const bool tiles = path == "amx" || path == "amx-emulated";
    check_bf16_matches_float32("softmax", {""}, 2e-6f, tiles ? std::ldexp(1.25, -9) : 0.0);
  }
  Context::set_bf16_path("");
}

// bfloat16 gradients (q, k, v, out, dout in bfloat16; dq, dk, dv bfloat16) on every path
// against the float32 backward on the same rounded values: the tile paths round P and dS to
// bfloat16 for the products (as PyTorch's bfloat16 backward does) and every path rounds the
// gradients, so the bound is normwise: max |err| <= 2^-6 max |gradient| (4 bfloat16 ulps),
// which a wrong layout, block edge or mask misses by orders of magnitude.
TEST(Softmax, EveryBf16PathBackwardMatchesTheFloat32Gradients) {
  Context ctx(2);
  struct Case {
    Dims d;
    bool causal, masked;
  };
  const Case cases[] = {{{2, 70, 90, 4, 2, 37, 40}, true, false},
                        {{1, 150, 300, 2, 2, 64, 128}, true, true},
                        {{1, 40, 200, 2, 1, 64, 64}, false, false}};
  for (const std::string& path : Context::bf16_paths()) {
    SCOPED_TRACE(path);
    Context::set_bf16_path(path);
    for (const Case& c : cases) {
      SCOPED_TRACE(to_string(c.d));
      Problem p(c.d, 41, Layout::kHeadMajorPadded);
      const std::vector<bfloat16> q = round_to_bf16(p.q), k = round_to_bf16(p.k),
                                  v = round_to_bf16(p.v);
      Mask mask;
      if (c.masked) mask.window_left = 100, mask.softcap = 5.0;
      const auto m = make_mechanism("softmax", {.causal = c.causal});
      AttentionArgs f = p.args32();
      f.mask = mask;
      m->forward(f, ctx);
      const std::vector<bfloat16> out = round_to_bf16(p.out);
      Grads r(p, 42);
      const std::vector<bfloat16> dout = round_to_bf16(r.dout);
      BackwardArgs g32 = r.args32(p);
      g32.forward.mask = mask;
      m->backward(g32, ctx);
      // The same values in bfloat16, gradients into bfloat16 buffers laid out like r's.
      std::vector<bfloat16> dq(r.dq.f32.size()), dk(r.dk.f32.size()), dv(r.dv.f32.size());
      BackwardArgs g = g32;
      g.forward.q = bf16_view(q, p.q), g.forward.k = bf16_view(k, p.k);
      g.forward.v = bf16_view(v, p.v);
      g.forward.out = read_write(bf16_view(out, p.out));
      g.dout = bf16_view(dout, r.dout);
      g.dq = read_write(bf16_view(dq, r.dq)), g.dk = read_write(bf16_view(dk, r.dk));
      g.dv = read_write(bf16_view(dv, r.dv));
      m->backward(g, ctx);
      for (auto [got, want, name] :
           {std::tuple{&dq, &r.dq, "dq"}, {&dk, &r.dk, "dk"}, {&dv, &r.dv, "dv"}}) {
        float worst = 0, scale = 0;
        for (size_t i = 0; i < got->size(); ++i) {
          worst = std::max(worst, std::abs(to_float((*got)[i]) - want->f32[i]));
          scale = std::max(scale, std::abs(want->f32[i]));
        }
        EXPECT_LE(worst, std::ldexp(scale, -6)) << name << " max |grad| " << scale;
        EXPECT_GT(scale, 0.0f) << name;
      }
    }
  }
  Context::set_bf16_path("");
}

TEST(Softmax, AmxPathIsTakenWhereTheCpuHasIt) {
  if (!cpu::tiles::amx_usable()) GTEST_SKIP() << "no AMX here: " << cpu::tiles::amx_refusal();
  EXPECT_EQ(Context::bf16_paths().front(), "amx");
  EXPECT_EQ(Context::bf16_path(), "amx");
}

TEST(Context, UnknownBf16PathNamesTheArgumentAndThePathsHere) {
  try {
    Context::set_bf16_path("tpu");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.argument(), "bf16_path");
    EXPECT_NE(std::string(e.what()).find("amx-emulated"), std::string::npos) << e.what();
  }
  EXPECT_EQ(Context::bf16_path(), Context::bf16_paths().front());  // unchanged: the best
}

}  // namespace
}  // namespace attnkit::testing
