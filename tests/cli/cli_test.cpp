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
  const int status =
      std::system((std::string(ATTNKIT_CLI) + " " + args + " > " + log + " 2>&1").c_str());
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

TEST_F(Cli, CompareAndBenchFormats) {
  Result r = cli("compare -n 40 --heads 2 -d 16 --reps 1 -m softmax,linear,topk -f csv");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.rfind(
                "mechanism,kernel,time_ms,vs_softmax,peak_MiB,max_abs_err,rel_err,config\n", 0),
            0u)
      << r.output;
  EXPECT_NE(r.output.find("\nsoftmax,fast,"), std::string::npos);
  r = cli("bench -m softmax -n 64,128 --heads 2 -d 16 --reps 2 -f json");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("\"seq\": 128"), std::string::npos) << r.output;
  r = cli("bench -m linear -n 64 --heads 2 -d 16 --reps 1 --bf16 -f csv");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find(" bf16,64,"), std::string::npos) << r.output;
  r = cli("bench -m heinsen --decode -n 100 --heads 2 -d 16 --reps 2 -f csv");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find(",100,"), std::string::npos) << r.output;
  r = cli("bench -m luna --backward --causal -n 64 --heads 2 -d 16 --reps 1 -f csv");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find(" backward,64,"), std::string::npos) << r.output;
  r = cli("bench -m ra --backward -n 64 --heads 2 -d 16 --reps 1");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("backward: ra has no backward pass yet"), std::string::npos) << r.output;
  r = cli("list");
  EXPECT_NE(r.output.find("heinsen"), std::string::npos);
}

}  // namespace
}  // namespace attnkit::testing
