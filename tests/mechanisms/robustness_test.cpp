// Defects found from outside (issue 9), one regression test each: streams with hostile
// sizes, allocation failures, thread caps and failures, fork, overflow to NaN/Inf, output
// self-overlap, fused-buffer slots, empty views with any strides.
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <limits>

#include "tests/testing/harness.hpp"

#ifdef ATTNKIT_ASAN
// Under ASan an allocation the machine cannot give must return null (as malloc does), not
// abort: WorkspaceThatCannotBeAllocatedIsOutOfMemory tests exactly that path.
extern "C" const char* __asan_default_options() { return "allocator_may_return_null=1"; }
#endif

namespace attnkit::testing {
namespace {

TEST(Robustness, SoftmaxStreamRejectsHostileMaxTokens) {
  const auto m = make_mechanism("softmax");
  StreamSpec s{.batch = 1, .heads = 2, .kv_heads = 2, .head_dim = 8, .value_dim = 8};
  for (int64_t bad :
       {int64_t{1} << 62, int64_t{-1}, int64_t{1} << 31, std::numeric_limits<int64_t>::max()}) {
    s.max_tokens = bad;
    EXPECT_NE(error_of([&] { m->new_stream(s); }).find("max_tokens: must be in [0, 2^31)"),
              std::string::npos)
        << bad;
  }
  s.max_tokens = (int64_t{1} << 31) - 1;  // in range, but 2^31 x 2 x 16 floats is too many
  s.batch = 1024;
  EXPECT_NE(error_of([&] { m->new_stream(s); }).find("max_tokens: a KV cache of"),
            std::string::npos);
}

TEST(Robustness, HugeStreamSpecsNameTheStream) {
  for (const char* name : {"linear", "heinsen", "rfa", "softmax"}) {
    const auto m = make_mechanism(name);
    StreamSpec s{
        .batch = int64_t{1} << 30, .heads = 64, .kv_heads = 64, .head_dim = 64, .value_dim = 64};
    EXPECT_NE(error_of([&] { m->new_stream(s); }).find("stream: batch x heads x head_dim"),
              std::string::npos)
        << name;
    s.batch = int64_t{1} << 40;
    EXPECT_NE(error_of([&] { m->new_stream(s); }).find("stream: batch and heads must be < 2^31"),
              std::string::npos)
        << name;
  }
}

TEST(Robustness, ThreadCountIsCapped) {
  EXPECT_GE(Context::max_threads(), 64);
  EXPECT_GE(Context::available_cpus(), 1);
  EXPECT_EQ(Context().num_threads(), Context::default_threads());
  const std::string e = error_of([] { Context c(100000); });
  EXPECT_NE(e.find("threads: must be <= " + std::to_string(Context::max_threads())),
            std::string::npos)
      << e;
  EXPECT_EQ(Context(Context::max_threads()).num_threads(), Context::max_threads());
}

// A workspace the machine cannot give (a legal stride-0 view of 2^30 keys, D = 64: 256 GiB of
// packed keys for 16 query rows; fewer rows would take the decode kernel, which packs
// nothing) is an OutOfMemory naming the workspace, not a crash.
TEST(Robustness, WorkspaceThatCannotBeAllocatedIsOutOfMemory) {
  const int64_t sk = int64_t{1} << 30;
  std::vector<float> row(64, 0.5f), out(16 * 64);
  ConstTensorView k = make_view(row.data(), {1, 1, 1, 64});
  k.shape[1] = sk;
  k.stride = {0, 0, 0, 1};
  ConstTensorView q = k;
  q.shape[1] = 16;
  AttentionArgs a{.q = q, .k = k, .v = k, .out = make_view(out.data(), {1, 16, 1, 64})};
  Context ctx(1);
  const auto m = make_mechanism("topk", {}, "k=4,query_chunk=1000000");
  try {
    m->forward(a, ctx);
    FAIL() << "expected OutOfMemory";
  } catch (const OutOfMemory& e) {
    EXPECT_NE(std::string(e.what()).find("workspace"), std::string::npos) << e.what();
  }
}

// trim() gives large workspaces back (a long-lived Context would keep its largest), and the
// next call reserves again.
TEST(Robustness, TrimReleasesLargeWorkspaces) {
  Context ctx(2);
  ctx.reserve_scratch(size_t{1} << 20);
  ctx.shared_scratch(size_t{1} << 20);
  EXPECT_EQ(ctx.workspace_bytes(), 3 * (size_t{1} << 22));
  ctx.trim(size_t{64} << 20);  // under the limit: kept
  EXPECT_EQ(ctx.workspace_bytes(), 3 * (size_t{1} << 22));
  ctx.trim(size_t{1} << 20);
  EXPECT_EQ(ctx.workspace_bytes(), 0u);
  Problem p({1, 40, 40, 2, 2, 16, 16}, 2);
  Problem r = p;
  make_mechanism("topk", {}, "k=4")->forward(p.args32(), ctx);
  Context fresh(2);
  make_mechanism("topk", {}, "k=4")->forward(r.args32(), fresh);
  EXPECT_EQ(p.out.f32, r.out.f32);
}

// fork() after the pool has run: the child's first parallel call starts its own pool.
TEST(Robustness, PoolWorksInAForkedChild) {
  Context ctx(4);
  ctx.set_min_parallel_work(0);
  std::vector<int> hits(64);
  ctx.parallel_for(64, [&](int64_t t, int) { hits[t] = 1; });
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::vector<int> child(64);
    ctx.parallel_for(64, [&](int64_t t, int) { child[t] = 2; });
    int sum = 0;
    for (int x : child) sum += x;
    _exit(sum == 128 ? 0 : 1);
  }
  int status = 0;
  // The child must finish (not hang on the parent's threads); alarm() bounds the wait.
  alarm(30);
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  alarm(0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  ctx.parallel_for(64, [&](int64_t t, int) { hits[t] = 3; });  // the parent's pool still works
  for (int x : hits) EXPECT_EQ(x, 3);
}

// check_inputs checks every shape rule but leaves the value scans to forward, so a caller that
// checks before allocating reads its inputs once.
TEST(Robustness, CheckInputsLeavesValueScansToForward) {
  Context ctx(1);
  Problem p({1, 4, 4, 1, 1, 8, 8}, 12);
  p.q.f32[3] = std::numeric_limits<float>::quiet_NaN();
  AttentionArgs a = p.args32();
  const auto m = make_mechanism("softmax");
  AttentionArgs no_out = a;
  no_out.out = {};
  EXPECT_EQ(m->check_inputs(no_out), "");
  EXPECT_EQ(m->check(a), "q: must be finite (found NaN or Inf)");
  EXPECT_EQ(error_of([&] { m->forward(a, ctx); }), "q: must be finite (found NaN or Inf)");
  no_out.k.shape[2] = 3;  // a shape rule is still checked
  EXPECT_NE(m->check_inputs(no_out).find("k: "), std::string::npos);
}

TEST(Robustness, HugeScaleIsRejected) {
  EXPECT_NE(error_of([] { make_mechanism("topk", {.scale = 1e300}); }).find("scale: must be <="),
            std::string::npos);
}

// Finite but huge inputs: every mechanism, float32 and float64, either returns finite
// values or throws an Error naming the result; never NaN or Inf.
TEST(Robustness, HugeFiniteInputsGiveFiniteOutputOrAnError) {
  Context ctx(2);
  for (const std::string& name : mechanism_names()) {
    for (bool causal : {false, true}) {
      if (causal && name == "lara") continue;
      const auto m = make_mechanism(name, {.causal = causal});
      for (double magnitude : {1e19, 1e30}) {
        Problem p({1, 20, 20, 2, 2, 16, 16}, 3, Layout::kContiguous,
                  m->capabilities().needs_memory ? 4 : 0);
        for (Operand* o : {&p.q, &p.k}) {
          for (auto& x : o->f64) x *= magnitude;
          for (auto& x : o->f32) x *= static_cast<float>(magnitude);
        }
        for (bool f64 : {false, true}) {
          SCOPED_TRACE(m->describe() + (f64 ? " float64 " : " float32 ") +
                       std::to_string(magnitude));
          const std::string e = error_of([&] { m->forward(f64 ? p.args64() : p.args32(), ctx); });
          if (e != "no error") {
            EXPECT_TRUE(e.rfind("out: ", 0) == 0 || e.rfind("memory_out: ", 0) == 0 ||
                        e.rfind("q: ", 0) == 0 || e.rfind("k: ", 0) == 0)
                << e;
            continue;
          }
          if (f64) {
            for (double x : p.out.f64) ASSERT_TRUE(std::isfinite(x));
          } else {
            for (float x : p.out.f32) ASSERT_TRUE(std::isfinite(x));
          }
        }
      }
    }
  }
}

// float64 linear with map=exp: the kernel normaliser is evaluated shifted, as float32's
// log-space kernel is, so |q| ~ 400 is finite and equals heinsen's float64 answer.
TEST(Robustness, Float64LinearExpIsOverflowFree) {
  Context ctx(1);
  Problem p({1, 9, 9, 1, 1, 8, 8}, 4);
  for (Operand* o : {&p.q, &p.k}) {
    for (auto& x : o->f64) x *= 400;
    for (auto& x : o->f32) x *= 400;
  }
  Problem r = p;
  make_mechanism("linear", {.causal = true}, "map=exp,norm=kernel")->forward(p.args64(), ctx);
  make_mechanism("heinsen", {.causal = true})->forward(r.args64(), ctx);
  for (size_t i = 0; i < p.out.f64.size(); ++i) {
    ASSERT_TRUE(std::isfinite(p.out.f64[i]));
    EXPECT_NEAR(p.out.f64[i], r.out.f64[i], 1e-9 * (1 + std::abs(r.out.f64[i])));
  }
  // Without the kernel normaliser the true result is beyond float64: an Error in both dtypes.
  for (bool f64 : {false, true}) {
    const auto m = make_mechanism("linear", {}, "map=exp,norm=length");
    const std::string e = error_of([&] { m->forward(f64 ? p.args64() : p.args32(), ctx); });
    EXPECT_NE(e, "no error") << (f64 ? "float64" : "float32");
  }
}

TEST(Robustness, OutputsMustNotOverlapThemselves) {
  Context ctx(1);
  Problem p({1, 4, 4, 1, 1, 8, 8}, 6);
  Grads g(p, 7);
  BackwardArgs b = g.args32(p);
  make_mechanism("softmax")->forward(b.forward, ctx);
  std::vector<float> one_row(8);
  b.dq = make_view(one_row.data(), {1, 4, 1, 8});
  b.dq.stride = {0, 0, 0, 1};  // every row of dq is the same 8 floats
  EXPECT_NE(error_of([&] {
              make_mechanism("softmax")->backward(b, ctx);
            }).find("dq: is written, so its elements must not overlap"),
            std::string::npos);
  AttentionArgs a = p.args32();
  a.out.stride = {0, 0, 0, 1};
  EXPECT_NE(error_of([&] {
              make_mechanism("linear")->forward(a, ctx);
            }).find("out: is written, so its elements must not overlap"),
            std::string::npos);
}

// q, k, v and out as slots of one fused [B, S, 4, H, D] buffer: disjoint, so accepted, and
// the same answer as separate buffers; out on top of q's slot is still refused.
TEST(Robustness, FusedBufferSlotsAreNotOverlaps) {
  const int64_t B = 2, S = 5, H = 3, D = 8;
  std::vector<float> fused(B * S * 4 * H * D);
  std::mt19937 rng(3);
  std::normal_distribution<float> n;
  for (float& x : fused) x = n(rng);
  auto slot = [&](int i) {
    TensorView v = make_view(fused.data() + i * H * D, {B, S, H, D});
    v.stride = {S * 4 * H * D, 4 * H * D, D, 1};
    return v;
  };
  AttentionArgs a{
      .q = as_const(slot(0)), .k = as_const(slot(1)), .v = as_const(slot(2)), .out = slot(3)};
  Context ctx(1);
  const auto m = make_mechanism("softmax");
  ASSERT_EQ(m->check(a), "");
  m->forward(a, ctx);
  Tensor<float> q({B, S, H, D}), k({B, S, H, D}), v({B, S, H, D}), out({B, S, H, D});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t d = 0; d < D; ++d) {
          const int64_t i = ((b * S + s) * H + h) * D + d;
          q[i] = a.q.at<const float>(b, s, h, d);
          k[i] = a.k.at<const float>(b, s, h, d);
          v[i] = a.v.at<const float>(b, s, h, d);
        }
  m->forward({.q = q.cview(), .k = k.cview(), .v = v.cview(), .out = out.view()}, ctx);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t d = 0; d < D; ++d)
          EXPECT_EQ(a.out.at<float>(b, s, h, d), out[((b * S + s) * H + h) * D + d]);
  a.out = slot(0);
  a.q = as_const(slot(3));
  a.out.data = fused.data() + 1;  // straddles the q slot's rows
  EXPECT_NE(m->check(a).find("out: must not overlap"), std::string::npos) << m->check(a);
}

// Empty q or k with stride 0 (numpy 2) or no data pointer at all are valid empty inputs.
TEST(Robustness, EmptyViewsTakeAnyStridesAndNullData) {
  Context ctx(1);
  std::vector<float> k(4 * 8, 1.0f), out(4 * 8, 7.0f);
  for (const char* name : {"softmax", "linear", "topk"}) {
    ConstTensorView empty_q{};
    empty_q.rank = 4;
    empty_q.shape = {1, 0, 1, 8};
    empty_q.stride = {0, 0, 0, 0};
    AttentionArgs a{.q = empty_q,
                    .k = make_view(k.data(), {1, 4, 1, 8}),
                    .v = make_view(k.data(), {1, 4, 1, 8}),
                    .out = make_view(out.data(), {1, 0, 1, 8})};
    a.out.data = nullptr;
    a.out.stride = {0, 0, 0, 0};
    EXPECT_EQ(make_mechanism(name)->check(a), "") << name;
    ConstTensorView empty_k = empty_q;  // no keys: every row sees nothing, out = 0
    AttentionArgs b{.q = make_view(k.data(), {1, 4, 1, 8}),
                    .k = empty_k,
                    .v = empty_k,
                    .out = make_view(out.data(), {1, 4, 1, 8})};
    ASSERT_EQ(make_mechanism(name)->check(b), "") << name;
    make_mechanism(name)->forward(b, ctx);
    for (float x : out) EXPECT_EQ(x, 0.0f) << name;
  }
}

}  // namespace
}  // namespace attnkit::testing
