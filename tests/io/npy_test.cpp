// The .npy reader: round trips, clear errors on malformed files, and a fuzz-style
// sweep of random bytes, truncations and mutations that must never crash.
#include "src/io/npy.hpp"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>

#include "attnkit/error.hpp"
#include "tests/testing/harness.hpp"

namespace attnkit::testing {
namespace {

std::vector<uint8_t> make_npy(const std::string& dict, size_t data_bytes, int major = 1) {
  std::vector<uint8_t> f = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<uint8_t>(major), 0};
  std::string h = dict;
  const size_t prefix = major == 1 ? 10 : 12;
  while ((prefix + h.size() + 1) % 64) h += ' ';
  h += '\n';
  for (int i = 0; i < (major == 1 ? 2 : 4); ++i)
    f.push_back(static_cast<uint8_t>(h.size() >> (8 * i)));
  f.insert(f.end(), h.begin(), h.end());
  for (size_t i = 0; i < data_bytes; ++i) f.push_back(static_cast<uint8_t>(i));
  return f;
}

std::string error_of(const std::vector<uint8_t>& f) {
  try {
    io::parse_npy(f, "x.npy");
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(Npy, WriteReadRoundTrip) {
  const std::string path = ::testing::TempDir() + "/rt.npy";
  std::vector<float> data(2 * 3 * 4);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>(i) * 0.5f - 3.0f;
  io::write_npy(path, data.data(), {2, 3, 4});
  const Tensor<float> t = io::read_npy(path);
  EXPECT_EQ(t.shape(), (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(t.vec(), data);
  std::vector<float> one = {7.0f};
  io::write_npy(path, one.data(), {1});
  EXPECT_EQ(io::read_npy(path).shape(), (std::vector<int64_t>{1}));
  std::remove(path.c_str());
}

TEST(Npy, ReadsFloat64AndVersion2) {
  std::vector<uint8_t> f =
      make_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", 0, 2);
  for (double x : {1.5, -2.25}) {
    uint8_t b[8];
    std::memcpy(b, &x, 8);
    f.insert(f.end(), b, b + 8);
  }
  const Tensor<float> t = io::parse_npy(f, "x.npy");
  EXPECT_EQ(t.vec(), (std::vector<float>{1.5f, -2.25f}));
}

TEST(Npy, MalformedFilesNameTheRule) {
  const std::string ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  EXPECT_EQ(error_of(make_npy(ok, 24)), "no error");
  EXPECT_EQ(error_of({1, 2, 3}),
            "x.npy: not an .npy file (missing \\x93NUMPY magic or shorter than 10 bytes)");
  EXPECT_EQ(error_of(make_npy(ok, 20)),
            "x.npy: npy data is 20 bytes but shape needs 24 (truncated file)");
  EXPECT_EQ(error_of(make_npy(ok, 28)),
            "x.npy: npy data is 28 bytes but shape needs 24 (trailing bytes)");
  EXPECT_EQ(error_of(make_npy("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }", 4)),
            "x.npy: npy dtype '>f4' is not supported (need little-endian float32 '<f4' or float64 "
            "'<f8')");
  EXPECT_EQ(error_of(make_npy("{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }", 8)),
            "x.npy: npy dtype '<i8' is not supported (need little-endian float32 '<f4' or float64 "
            "'<f8')");
  EXPECT_EQ(error_of(make_npy("{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }", 4)),
            "x.npy: npy fortran_order=True is not supported (save a C-contiguous array)");
  EXPECT_EQ(error_of(make_npy("{'descr': '<f4', 'shape': (1,), }", 4)),
            "x.npy: npy header must have 'descr', 'fortran_order' and 'shape'");
  EXPECT_EQ(error_of(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, "
                              "99999999999, 9999999), }",
                              4)),
            "x.npy: npy shape is too large");
  EXPECT_EQ(error_of(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", 4)),
            "x.npy: npy header shape entries must be non-negative integers (at byte 51 of header)");
  std::vector<uint8_t> v9 = make_npy(ok, 24);
  v9[6] = 9;
  EXPECT_EQ(error_of(v9), "x.npy: npy format version 9 is not 1, 2 or 3");
  std::vector<uint8_t> huge = make_npy(ok, 24, 2);
  huge[8] = huge[9] = huge[10] = 0xff;
  EXPECT_EQ(error_of(huge), "x.npy: npy header length 16777215 exceeds 1 MiB");
}

TEST(Npy, MissingFile) { EXPECT_THROW(io::read_npy("/nonexistent/attnkit.npy"), Error); }

// Fuzz-style: random bytes, every truncation, and random byte mutations of a valid file.
// Each must parse or throw attnkit::Error: no crash, no other exception, no huge allocation.
TEST(Npy, FuzzRandomBytesTruncationsAndMutations) {
  std::mt19937 rng(1234);
  auto survives = [](const std::vector<uint8_t>& f) {
    try {
      io::parse_npy(f, "fuzz.npy");
    } catch (const Error&) {
    }
  };
  for (int i = 0; i < 2000; ++i) {
    std::vector<uint8_t> f(rng() % 200);
    for (auto& b : f) b = static_cast<uint8_t>(rng());
    if (i % 2 && f.size() >= 8)
      std::memcpy(f.data(), "\x93NUMPY\x01\x00", 8);  // get past the magic
    survives(f);
  }
  const std::vector<uint8_t> valid =
      make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }", 24);
  for (size_t n = 0; n < valid.size(); ++n) {
    std::vector<uint8_t> t(valid.begin(), valid.begin() + n);
    EXPECT_THROW(io::parse_npy(t, "t.npy"), Error) << "truncated to " << n;
  }
  for (int i = 0; i < 20000; ++i) {
    std::vector<uint8_t> m = valid;
    for (int k = 0, n = 1 + rng() % 4; k < n; ++k)
      m[rng() % m.size()] = static_cast<uint8_t>(rng());
    survives(m);
  }
}

}  // namespace
}  // namespace attnkit::testing
