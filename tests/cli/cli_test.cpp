// The attnkit CLI end to end: run on .npy files, clear errors with exit code 2.
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "src/io/npy.hpp"
#include "tests/testing/harness.hpp"

namespace attnkit::testing {
namespace {

struct Result {
  int code;
  std::string output;
};

// A folder of the running test's own: ctest runs tests in parallel.
std::string test_dir() {
  const std::string d = ::testing::TempDir() + "/attnkit_cli_" +
                        ::testing::UnitTest::GetInstance()->current_test_info()->name();
  std::system(("mkdir -p " + d).c_str());
  return d;
}

Result cli(const std::string& args) {
  const std::string log = test_dir() + "/cli.log";
  // "! ; <shell>" runs <shell> as it is; anything else is attnkit's arguments.
  const std::string cmd =
      args.rfind("! ; ", 0) == 0 ? args.substr(4) : std::string(ATTNKIT_CLI) + " " + args;
  const int status = std::system(("(" + cmd + ") > " + log + " 2>&1").c_str());
  std::ifstream f(log);
  std::stringstream s;
  s << f.rdbuf();
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, s.str()};
}

class Cli : public ::testing::Test {
 protected:
  std::string dir = test_dir();
  Problem p{{1, 37, 50, 2, 2, 16, 16}, 5};
  void SetUp() override {
    io::write_npy(dir + "/q.npy", p.q.f32.data(), {37, 2, 16});
    io::write_npy(dir + "/k.npy", p.k.f32.data(), {50, 2, 16});
    io::write_npy(dir + "/v.npy", p.v.f32.data(), {50, 2, 16});
  }
  std::string qkv() { return "--q " + dir + "/q.npy --k " + dir + "/k.npy --v " + dir + "/v.npy"; }
};

TEST_F(Cli, RunWritesTheLibraryResult) {
  const Result r = cli("run -m softmax --causal " + qkv() + " -o " + dir + "/out.npy");
  ASSERT_EQ(r.code, 0) << r.output;
  const Tensor<float> out = io::read_npy(dir + "/out.npy");
  EXPECT_EQ(out.shape(), (std::vector<int64_t>{37, 2, 16}));
  Context ctx(1);
  make_mechanism("softmax", {.causal = true})->forward(p.args32(), ctx);
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], p.out.f32[i], 1e-6f);
}

TEST_F(Cli, BadInputsExitWithAClearError) {
  {
    std::ofstream bad(dir + "/bad.npy", std::ios::binary);
    bad << "\x93NUMPY\x01\x00garbage";
  }
  Result r = cli("run --q " + dir + "/bad.npy --k " + dir + "/k.npy --v " + dir + "/v.npy -o " +
                 dir + "/o.npy");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("attnkit: error: " + dir + "/bad.npy: "), std::string::npos) << r.output;
  r = cli("run -m topk -c topk:k=0 " + qkv() + " -o " + dir + "/o.npy");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("config k: must be in [1, 1073741824], got 0"), std::string::npos)
      << r.output;
  r = cli("run -m lara --causal " + qkv() + " -o " + dir + "/o.npy");
  EXPECT_NE(r.output.find("causal: lara is non-causal by nature"), std::string::npos) << r.output;
  r = cli("run -m luna " + qkv() + " -o " + dir + "/o.npy");
  EXPECT_NE(r.output.find("memory: is required"), std::string::npos) << r.output;
  r = cli("compare -n 0");
  EXPECT_NE(r.code, 0);
}

// Python's csv and json modules read what -f csv / -f json write (quoted config column,
// metadata, numbers and booleans as such).
TEST_F(Cli, CsvAndJsonParseWithPythonsModules) {
  Result r = cli("compare -n 40 --heads 2 -d 16 --reps 1 -m softmax,linear,topk -f csv > " + dir +
                 "/c.csv");
  ASSERT_EQ(r.code, 0) << r.output;
  r = cli("bench -m softmax,linear -n 64,128 --heads 2 -d 16 --reps 2 -f json > " + dir +
          "/b.json");
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string py =
      "import csv, json, sys\n"
      "rows = list(csv.DictReader(open(sys.argv[1])))\n"
      "assert [r['mechanism'] for r in rows] == ['softmax', 'linear', 'topk'], rows\n"
      "assert rows[2]['config'].startswith('topk(k=32,query_chunk=32)'), rows[2]\n"
      "assert all(len(r) == 8 and r['status'] == 'ok' for r in rows), rows\n"
      "float(rows[1]['max_abs_err'])\n"
      "d = json.load(open(sys.argv[2]))\n"
      "assert d['attnkit_version'] and d['cpu'] and d['simd'].startswith('dispatch'), d\n"
      "assert isinstance(d['threads'], int) and d['shape']['heads'] == 2, d\n"
      "assert d['shape']['causal'] is False, d\n"
      "assert [(r['seq'], type(r['median_ms'])) for r in d['rows']][:2] == "
      "[(64, float), (128, float)], d\n"
      "assert d['rows'][2]['GFLOP/s'] is None and d['rows'][2]['mechanism'].startswith('linear')\n"
      "print('parsed')\n";
  {
    std::ofstream f(dir + "/check.py");
    f << py;
  }
  r = cli("! ; python3 " + dir + "/check.py " + dir + "/c.csv " + dir + "/b.json");
  EXPECT_NE(r.output.find("parsed"), std::string::npos) << r.output;
}

TEST_F(Cli, BenchAndDecodeRowsSayWhatTheyMeasure) {
  // A bfloat16 row names its path: linear widens; softmax takes the forced one.
  Result r = cli("bench -m linear -n 64 --heads 2 -d 16 --reps 1 --bf16 -f csv");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find(" bf16 fp32\",forward,64,"), std::string::npos) << r.output;
  r = cli("bench -m softmax -n 64 --heads 2 -d 16 --reps 1 --bf16 --bf16-path amx-emulated -f csv");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("softmax non-causal bf16 amx-emulated,forward,64,"), std::string::npos)
      << r.output;
  // float16 (and a mechanism without bfloat16 kernels) runs on float32 copies, backward too.
  r = cli("bench -m topk,softmax -n 64 --heads 2 -d 16 --reps 1 --dtype float16 --backward -f csv");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find(" fp16 fp32\",\"backward (dq, dk, dv)\",64,"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("softmax non-causal fp16 fp32,"), std::string::npos) << r.output;
  r = cli("bench -m softmax -n 64 --reps 1 --dtype int8");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--dtype: int8 not in {float32,bfloat16,float16}"), std::string::npos)
      << r.output;
  r = cli("bench -m softmax -n 64 --bf16 --bf16-path gpu");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("bf16_path: 'gpu' is not a bfloat16 path"), std::string::npos)
      << r.output;
  r = cli("bench -m heinsen,linear --decode -n 100 --heads 2 -d 16 --reps 2 -f csv");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find(",decode step (append 1 + query 1),100,"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\n\"linear("), std::string::npos) << r.output;
  r = cli("bench -m luna --backward --causal -n 64 --heads 2 -d 16 --reps 1 -f csv");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find(",\"backward (dq, dk, dv)\",64,"), std::string::npos) << r.output;
  r = cli("bench -m ra --backward -n 64 --heads 2 -d 16 --reps 1");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("backward: ra has no backward pass yet"), std::string::npos) << r.output;
  r = cli("list");
  EXPECT_NE(r.output.find("heinsen"), std::string::npos);
  EXPECT_NE(r.output.find("filter_type"), std::string::npos) << "config keys listed";
}

// --window and --softcap reach every command: rows and JSON say so, GFLOP/s counts the
// window's pairs, a mechanism that cannot honour them is an error (bench) or a skipped row
// (compare), and run's output equals the masked library call.
TEST_F(Cli, MaskOptionsRunBenchAndCompare) {
  Result r =
      cli("bench -m softmax -n 256 --heads 2 -d 16 --reps 1 --causal --window 32 "
          "--softcap 5 -f json");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("window=(32,-1) softcap=5"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"window\": ["), std::string::npos) << r.output;
  r = cli("bench -m linear -n 64 --heads 2 -d 16 --reps 1 --window 8");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("window_size: is not supported by linear"), std::string::npos)
      << r.output;
  r = cli("compare -n 64 --heads 2 -d 16 --reps 1 --causal --window 8 -m softmax,linear");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("skipped: window_size: is not supported by linear"), std::string::npos)
      << r.output;
  r = cli("bench -m softmax -n 64 --window 1,2,3");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--window: must be L or L,R"), std::string::npos) << r.output;
  r = cli("bench -m softmax -n 300 --decode --heads 2 -d 16 --reps 2 --window 15 -f csv");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find(",decode step (append 1 + query 1),300,"), std::string::npos) << r.output;
  // run: the output file equals the library's masked call.
  ASSERT_EQ(cli("run --causal --window 7 --softcap 2 " + qkv() + " -o " + dir + "/o.npy").code, 0);
  Problem want = p;
  AttentionArgs a = want.args32();
  a.mask.window_left = 7, a.mask.softcap = 2.0;
  Context ctx(1);
  make_mechanism("softmax", {.causal = true})->forward(a, ctx);
  const Tensor<float> got = io::read_npy(dir + "/o.npy");
  ASSERT_EQ(got.size(), want.out.f32.size());
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i)
    worst = std::max(worst, static_cast<double>(std::abs(got[i] - want.out.f32[i])));
  EXPECT_LE(worst, 1e-6);
}

// compare goes on past a mechanism that rejects the shape, and says why.
TEST_F(Cli, CompareReportsSkippedRows) {
  const Result r = cli("compare -n 40 --heads 2 -d 16 --reps 1 --causal -m softmax,lara,linear");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("skipped: causal: lara is non-causal by nature"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("\nlinear "), std::string::npos) << r.output;
}

// The parser's own errors, repeated -c, --key-lengths, --version and defaults in --help.
TEST_F(Cli, OptionsAreCheckedAndDocumented) {
  Result r = cli("compare --nonsense");
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.output.rfind("attnkit: error: ", 0), 0u) << r.output;
  r = cli("run -f csv " + qkv() + " -o " + dir + "/o.npy");
  EXPECT_EQ(r.code, 2) << "run has no --format: " << r.output;
  r = cli("list --causal");
  EXPECT_EQ(r.code, 2) << "list has no --causal: " << r.output;
  r = cli(
      "compare -n 40 --heads 2 -d 16 --reps 1 -m topk -c topk:k=4 -c topk:query_chunk=8 -f csv");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("topk(k=4,query_chunk=8)"), std::string::npos) << "both -c: " << r.output;
  r = cli("compare -n 40 -m topk -c topk:k=4 -c topk:bogus=1");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("unknown key 'bogus'"), std::string::npos) << r.output;
  r = cli("compare -n 40 -m topk -c topk:k=4 -c topk:k=5");
  EXPECT_NE(r.output.find("key 'k' given twice"), std::string::npos) << r.output;
  r = cli("compare -n 40 -m topk -c linear:map=elu1");
  EXPECT_NE(
      r.output.find("--config: 'linear:map=elu1' names 'linear', which this command does not"),
      std::string::npos)
      << r.output;
  r = cli("run -m softmax --key-lengths 4294967297,3 " + qkv() + " -o " + dir + "/o.npy");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("--key-lengths: '4294967297': must be integers in [0, 2147483647]"),
            std::string::npos)
      << r.output;
  io::write_npy(dir + "/q2.npy", p.q.f32.data(), {2, 37, 1, 16});
  io::write_npy(dir + "/k2.npy", p.k.f32.data(), {2, 50, 1, 16});
  r = cli("run -m softmax --key-lengths 41,0 --q " + dir + "/q2.npy --k " + dir + "/k2.npy --v " +
          dir + "/k2.npy -o " + dir + "/o.npy");
  EXPECT_EQ(r.code, 0) << "0 keys is allowed: " << r.output;
  r = cli("--version");
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.output, std::string("attnkit ") + kVersion + "\n");
  r = cli("bench --help");
  EXPECT_NE(r.output.find("1024,2048,4096"), std::string::npos) << "defaults shown: " << r.output;
  r = cli("bench -n 99999999999999999999");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("--seq: '99999999999999999999': must be integers"), std::string::npos)
      << r.output;
  r = cli("bench -b 1048576 --heads 4096 -d 1024 -n 16777216");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("shape: batch x seq x heads x dim"), std::string::npos) << r.output;
  r = cli("compare -n 40 -t 100000");
  EXPECT_EQ(r.code, 2);
  // The portable fallback: SCALAR with g++, EMU128 with clang (Highway's choice).
  const std::string fallback = Context::simd_targets().back();
  r = cli("bench -m softmax -n 64 --heads 2 -d 16 --reps 1 --simd " + fallback);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("dispatch: " + fallback), std::string::npos) << r.output;
  r = cli("bench -m softmax -n 64 --simd NEON");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("simd_target: 'NEON' is not compiled"), std::string::npos) << r.output;
  r = cli("compare -n 40 -t 1000");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("threads: must be <="), std::string::npos) << r.output;
}

// --layout bhsd reads [B, H, S, D] files through strides (same answer as the bshd files);
// mixing the layouts between q and k is refused instead of running as GQA.
TEST_F(Cli, LayoutOptionAndMixedLayouts) {
  const int64_t S = 37, H = 2, D = 16;
  std::vector<float> qh(S * H * D);
  for (int64_t s = 0; s < S; ++s)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t d = 0; d < D; ++d) qh[(h * S + s) * D + d] = p.q.f32[(s * H + h) * D + d];
  io::write_npy(dir + "/qh.npy", qh.data(), {1, H, S, D});
  io::write_npy(dir + "/kh.npy", p.k.f32.data(), {1, 50, H, D});  // bshd k
  Result r = cli("run -m softmax --q " + dir + "/qh.npy --k " + dir + "/kh.npy --v " + dir +
                 "/kh.npy -o " + dir + "/o.npy");
  EXPECT_EQ(r.code, 2) << r.output;
  std::vector<float> kh(50 * H * D), vh(50 * H * D);
  for (int64_t s = 0; s < 50; ++s)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t d = 0; d < D; ++d) {
        kh[(h * 50 + s) * D + d] = p.k.f32[(s * H + h) * D + d];
        vh[(h * 50 + s) * D + d] = p.v.f32[(s * H + h) * D + d];
      }
  io::write_npy(dir + "/qh.npy", qh.data(), {H, S, D});
  io::write_npy(dir + "/kh.npy", kh.data(), {H, 50, D});
  io::write_npy(dir + "/vh.npy", vh.data(), {H, 50, D});
  r = cli("run -m softmax --layout bhsd --q " + dir + "/qh.npy --k " + dir + "/kh.npy --v " + dir +
          "/vh.npy -o " + dir + "/oh.npy");
  ASSERT_EQ(r.code, 0) << r.output;
  ASSERT_EQ(cli("run -m softmax " + qkv() + " -o " + dir + "/o.npy").code, 0);
  const Tensor<float> oh = io::read_npy(dir + "/oh.npy"), o = io::read_npy(dir + "/o.npy");
  ASSERT_EQ(oh.shape(), (std::vector<int64_t>{H, S, D}));
  for (int64_t s = 0; s < S; ++s)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t d = 0; d < D; ++d) EXPECT_EQ(oh[(h * S + s) * D + d], o[(s * H + h) * D + d]);
}

// Zero-length q or k are valid inputs (as in the library and Python); an empty .npy file and
// a zero-size array read without touching a null pointer.
TEST_F(Cli, EmptySequencesRun) {
  io::write_npy(dir + "/q0.npy", p.q.f32.data(), {0, 2, 16});
  Result r = cli("run -m softmax --q " + dir + "/q0.npy --k " + dir + "/k.npy --v " + dir +
                 "/v.npy -o " + dir + "/o0.npy");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(io::read_npy(dir + "/o0.npy").shape(), (std::vector<int64_t>{0, 2, 16}));
  io::write_npy(dir + "/k0.npy", p.k.f32.data(), {0, 2, 16});
  r = cli("run -m linear --q " + dir + "/q.npy --k " + dir + "/k0.npy --v " + dir + "/k0.npy -o " +
          dir + "/o1.npy");
  ASSERT_EQ(r.code, 0) << r.output;
  const Tensor<float> o1 = io::read_npy(dir + "/o1.npy");
  for (float x : o1.vec()) EXPECT_EQ(x, 0.0f);
  { std::ofstream(dir + "/empty.npy"); }
  r = cli("run --q " + dir + "/empty.npy --k " + dir + "/k.npy --v " + dir + "/v.npy -o " + dir +
          "/o2.npy");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("empty.npy: "), std::string::npos) << r.output;
}

// A thread the system refuses to start (address space capped with ulimit -v) is a clear
// error with exit code 2, not an abort.
TEST_F(Cli, RefusedThreadsAreAnError) {
#ifdef ATTNKIT_ASAN
  GTEST_SKIP() << "ASan reserves terabytes of shadow memory: it cannot start under ulimit -v";
#endif
  const Result r = cli("! ; (ulimit -v 400000; " + std::string(ATTNKIT_CLI) +
                       " compare -n 64 --heads 2 -d 16 -m softmax -t 64)");
  EXPECT_NE(r.output.find("attnkit: error: threads: could not start worker thread"),
            std::string::npos)
      << r.output;
}

}  // namespace
}  // namespace attnkit::testing
