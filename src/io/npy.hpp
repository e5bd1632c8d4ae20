// NumPy .npy reader and writer, hardened: a malformed, truncated or hostile file
// gives attnkit::Error naming the file and the rule, never a crash.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "attnkit/tensor.hpp"

namespace attnkit::io {

inline constexpr size_t kMaxNpyHeader = 1 << 20;
inline constexpr int kMaxNpyRank = 8;

struct NpyHeader {
  DType dtype = DType::kF32;  // float32 ('<f4') or float64 ('<f8'), little-endian
  std::vector<int64_t> shape;
  size_t data_offset = 0;  // bytes before the array data
};

// Parses and checks the header against the whole file (data size must match exactly).
// `name` names the file in errors.
NpyHeader parse_npy_header(std::span<const uint8_t> file, std::string_view name);

// The array as float32 (float64 files are narrowed).
Tensor<float> parse_npy(std::span<const uint8_t> file, std::string_view name);
Tensor<float> read_npy(const std::string& path);

// Writes a little-endian float32 array, format version 1.0.
void write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape);

}  // namespace attnkit::io
