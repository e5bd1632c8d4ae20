// attnkit::Error: the one exception type of the library. Validation happens once,
// at the API boundary; kernels never throw and assume validated input.
#pragma once

#include <new>
#include <stdexcept>
#include <string>

namespace attnkit {

// what() reads "<argument>: <rule>", e.g. "k: heads (3) must divide q heads (8)".
class Error : public std::runtime_error {
 public:
  Error(std::string argument, std::string rule)
      : std::runtime_error(argument + ": " + rule),
        argument_(std::move(argument)),
        rule_(std::move(rule)) {}

  // The argument (tensor, option or file) that broke a rule.
  const std::string& argument() const { return argument_; }
  // The rule it broke, in words.
  const std::string& rule() const { return rule_; }

 private:
  std::string argument_;
  std::string rule_;
};

// Memory the library could not get (a workspace or a state for this shape). A std::bad_alloc,
// so Python sees MemoryError, with a what() naming what was asked for and its size.
class OutOfMemory : public std::bad_alloc {
 public:
  explicit OutOfMemory(std::string what) : what_(std::move(what)) {}
  const char* what() const noexcept override { return what_.c_str(); }

 private:
  std::string what_;
};

}  // namespace attnkit
