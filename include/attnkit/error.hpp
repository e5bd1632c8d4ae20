// attnkit::Error: the one exception type of the library. Validation happens once,
// at the API boundary; kernels never throw and assume validated input.
#pragma once

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

}  // namespace attnkit
