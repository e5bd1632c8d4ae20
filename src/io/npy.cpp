// .npy format: magic "\x93NUMPY", version (1|2|3).x, header length (u16 for 1.x,
// u32 otherwise), an ASCII Python dict {'descr': .., 'fortran_order': .., 'shape': (..)}
// padded with spaces and '\n', then the raw array.
#include "src/io/npy.hpp"

#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>

#include "attnkit/error.hpp"

namespace attnkit::io {
namespace {

// A tiny cursor over the header dict text.
class HeaderParser {
 public:
  HeaderParser(std::string_view text, std::string name) : t_(text), name_(std::move(name)) {}

  [[noreturn]] void fail(const std::string& rule) const {
    throw Error(name_, "npy header " + rule + " (at byte " + std::to_string(i_) + " of header)");
  }
  void skip_space() {
    while (i_ < t_.size() && (t_[i_] == ' ' || t_[i_] == '\t' || t_[i_] == '\n' || t_[i_] == '\r'))
      ++i_;
  }
  bool accept(char c) {
    skip_space();
    if (i_ < t_.size() && t_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!accept(c)) fail(std::string("expected '") + c + "'");
  }
  std::string string_literal() {
    skip_space();
    if (i_ >= t_.size() || (t_[i_] != '\'' && t_[i_] != '"')) fail("expected a quoted string");
    const char q = t_[i_++];
    const size_t start = i_;
    while (i_ < t_.size() && t_[i_] != q) ++i_;
    if (i_ >= t_.size()) fail("has an unterminated string");
    return std::string(t_.substr(start, i_++ - start));
  }
  bool boolean() {
    skip_space();
    if (t_.substr(i_, 4) == "True") return i_ += 4, true;
    if (t_.substr(i_, 5) == "False") return i_ += 5, false;
    fail("expected True or False");
  }
  std::vector<int64_t> tuple() {
    expect('(');
    std::vector<int64_t> dims;
    while (!accept(')')) {
      skip_space();
      if (i_ >= t_.size() || t_[i_] < '0' || t_[i_] > '9')
        fail("shape entries must be non-negative integers");
      int64_t v = 0;
      while (i_ < t_.size() && t_[i_] >= '0' && t_[i_] <= '9') {
        if (v > (std::numeric_limits<int64_t>::max() - 9) / 10) fail("shape entry overflows");
        v = v * 10 + (t_[i_++] - '0');
      }
      if (accept('L')) {
      }  // Python 2 long suffix
      dims.push_back(v);
      if (dims.size() > static_cast<size_t>(kMaxNpyRank))
        fail("shape rank exceeds " + std::to_string(kMaxNpyRank));
      if (!accept(',')) {
        expect(')');
        break;
      }
    }
    return dims;
  }
  bool at_end() {
    skip_space();
    return i_ == t_.size();
  }

 private:
  std::string_view t_;
  std::string name_;
  size_t i_ = 0;
};

uint32_t read_le(const uint8_t* p, int bytes) {
  uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

NpyHeader parse_npy_header(std::span<const uint8_t> file, std::string_view name_view) {
  const std::string name(name_view);
  static const uint8_t kMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (file.size() < 10 || std::memcmp(file.data(), kMagic, 6) != 0) {
    throw Error(name, "not an .npy file (missing \\x93NUMPY magic or shorter than 10 bytes)");
  }
  const int major = file[6];
  if (major < 1 || major > 3)
    throw Error(name, "npy format version " + std::to_string(major) + " is not 1, 2 or 3");
  const size_t len_bytes = major == 1 ? 2 : 4;
  if (file.size() < 8 + len_bytes) throw Error(name, "truncated npy header length");
  const size_t header_len = read_le(file.data() + 8, static_cast<int>(len_bytes));
  const size_t start = 8 + len_bytes;
  if (header_len > kMaxNpyHeader)
    throw Error(name, "npy header length " + std::to_string(header_len) + " exceeds 1 MiB");
  if (file.size() < start + header_len)
    throw Error(name, "truncated npy header (file ends inside it)");
  const std::string_view text(reinterpret_cast<const char*>(file.data() + start), header_len);
  for (char c : text) {
    if (static_cast<unsigned char>(c) >= 0x80 ||
        (c < 0x20 && c != '\n' && c != '\r' && c != '\t')) {
      throw Error(name, "npy header must be printable ASCII");
    }
  }

  HeaderParser p(text, name);
  NpyHeader h;
  bool have_descr = false, have_order = false, have_shape = false;
  p.expect('{');
  while (!p.accept('}')) {
    const std::string key = p.string_literal();
    p.expect(':');
    if (key == "descr") {
      const std::string d = p.string_literal();
      if (d == "<f4" || d == "|f4" || d == "=f4") {
        h.dtype = DType::kF32;
      } else if (d == "<f8" || d == "=f8") {
        h.dtype = DType::kF64;
      } else {
        throw Error(name,
                    "npy dtype '" + d +
                        "' is not supported (need little-endian float32 '<f4' or float64 '<f8')");
      }
      have_descr = true;
    } else if (key == "fortran_order") {
      if (p.boolean())
        throw Error(name, "npy fortran_order=True is not supported (save a C-contiguous array)");
      have_order = true;
    } else if (key == "shape") {
      h.shape = p.tuple();
      have_shape = true;
    } else {
      p.fail("has unknown key '" + key + "'");
    }
    if (!p.accept(',')) {
      p.expect('}');
      break;
    }
  }
  if (!p.at_end()) p.fail("has text after the closing '}'");
  if (!have_descr || !have_order || !have_shape)
    throw Error(name, "npy header must have 'descr', 'fortran_order' and 'shape'");

  const size_t item = dtype_size(h.dtype);
  size_t count = 1;
  for (int64_t d : h.shape) {
    if (d != 0 && count > (std::numeric_limits<size_t>::max() / item) / static_cast<size_t>(d)) {
      throw Error(name, "npy shape is too large");
    }
    count *= static_cast<size_t>(d);
  }
  h.data_offset = start + header_len;
  const size_t have = file.size() - h.data_offset;
  if (have != count * item) {
    throw Error(name, "npy data is " + std::to_string(have) + " bytes but shape needs " +
                          std::to_string(count * item) +
                          (have < count * item ? " (truncated file)" : " (trailing bytes)"));
  }
  return h;
}

Tensor<float> parse_npy(std::span<const uint8_t> file, std::string_view name) {
  const NpyHeader h = parse_npy_header(file, name);
  Tensor<float> t(h.shape);
  const uint8_t* src = file.data() + h.data_offset;
  if (t.size() == 0) return t;  // no data: t.data() may be null, which memcpy must not see
  if (h.dtype == DType::kF32) {
    std::memcpy(t.data(), src, t.size() * sizeof(float));
  } else {
    for (size_t i = 0; i < t.size(); ++i) {
      double x;
      std::memcpy(&x, src + i * sizeof(double), sizeof(double));
      t[i] = static_cast<float>(x);
    }
  }
  return t;
}

Tensor<float> read_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path, "cannot open for reading");
  f.seekg(0, std::ios::end);
  const std::streamoff size = f.tellg();
  if (size < 0) throw Error(path, "cannot determine file size");
  if (size > (std::streamoff{1} << 36)) throw Error(path, "file is larger than 64 GiB");
  f.seekg(0);
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  if (size > 0 && !f.read(reinterpret_cast<char*>(bytes.data()), size)) {
    throw Error(path, "read failed");
  }
  return parse_npy(bytes, path);
}

void write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  size_t count = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    dict +=
        std::to_string(shape[i]) + (shape.size() == 1 ? "," : (i + 1 < shape.size() ? ", " : ""));
    count *= static_cast<size_t>(shape[i]);
  }
  dict += "), }";
  // Pad so that magic + 4 + header is a multiple of 64, ending in '\n'.
  const size_t total = (10 + dict.size() + 1 + 63) / 64 * 64;
  dict.append(total - 10 - dict.size() - 1, ' ');
  dict += '\n';
  std::ofstream f(path, std::ios::binary);
  if (!f) throw Error(path, "cannot open for writing");
  const uint8_t prefix[10] = {0x93,
                              'N',
                              'U',
                              'M',
                              'P',
                              'Y',
                              1,
                              0,
                              static_cast<uint8_t>(dict.size() & 0xff),
                              static_cast<uint8_t>(dict.size() >> 8)};
  f.write(reinterpret_cast<const char*>(prefix), 10);
  f.write(dict.data(), static_cast<std::streamsize>(dict.size()));
  if (count > 0) {
    f.write(reinterpret_cast<const char*>(data),
            static_cast<std::streamsize>(count * sizeof(float)));
  }
  if (!f) throw Error(path, "write failed");
}

}  // namespace attnkit::io
