// AttentionOptions printing and the key=value config parser.
#include "attnkit/options.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "attnkit/error.hpp"

namespace attnkit {

std::string to_string(const AttentionOptions& o) {
  std::ostringstream s;
  s << (o.causal ? "causal" : "non-causal");
  if (o.scale != 0.0) s << " scale=" << o.scale;
  return s.str();
}

KeyValues KeyValues::parse(std::string_view text) {
  KeyValues kv;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && (text[i] == ',' || text[i] == ' ')) ++i;
    size_t j = i;
    while (j < text.size() && text[j] != ',' && text[j] != ' ') ++j;
    if (j > i) {
      const std::string_view item = text.substr(i, j - i);
      const size_t eq = item.find('=');
      if (eq == std::string_view::npos || eq == 0 || eq + 1 == item.size()) {
        throw Error("config", "'" + std::string(item) + "' must be key=value");
      }
      std::string key(item.substr(0, eq));
      if (kv.kv_.count(key)) throw Error("config", "key '" + key + "' given twice");
      kv.kv_[key] = std::string(item.substr(eq + 1));
    }
    i = j;
  }
  return kv;
}

const std::string* KeyValues::take(std::string_view key) {
  auto it = kv_.find(key);
  if (it == kv_.end()) return nullptr;
  consumed_.emplace_back(key);
  return &it->second;
}

int KeyValues::get_int(std::string_view key, int def, int min, int max, std::string_view help) {
  std::ostringstream range;  // not string concatenation: GCC 12 warns falsely (-Wrestrict)
  range << "[" << min << ", " << max << "]";
  keys_.push_back({std::string(key), "int", std::to_string(def), range.str(), std::string(help),
                   std::to_string(def)});
  const std::string* s = take(key);
  if (!s) return def;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s->c_str(), &end, 10);
  if (end != s->c_str() + s->size() || errno != 0) {
    throw Error("config " + std::string(key), "'" + *s + "' is not an integer");
  }
  if (v < min || v > max) {
    throw Error("config " + std::string(key), "must be in " + keys_.back().allowed + ", got " + *s);
  }
  keys_.back().value = std::to_string(v);
  return static_cast<int>(v);
}

double KeyValues::get_double(std::string_view key, double def, double min, double max,
                             std::string_view help) {
  std::ostringstream d, r;
  d << def;
  r << "[" << min << ", " << max << "]";
  keys_.push_back({std::string(key), "float", d.str(), r.str(), std::string(help), d.str()});
  const std::string* s = take(key);
  if (!s) return def;
  char* end = nullptr;
  const double v = std::strtod(s->c_str(), &end);
  if (end != s->c_str() + s->size() || !std::isfinite(v)) {
    throw Error("config " + std::string(key), "'" + *s + "' is not a finite number");
  }
  if (v < min || v > max) {
    throw Error("config " + std::string(key), "must be in " + keys_.back().allowed + ", got " + *s);
  }
  std::ostringstream text;
  text << v;
  keys_.back().value = text.str();
  return v;
}

bool KeyValues::get_bool(std::string_view key, bool def, std::string_view help) {
  keys_.push_back(
      {std::string(key), "bool", def ? "1" : "0", "0|1", std::string(help), def ? "1" : "0"});
  const std::string* s = take(key);
  if (!s) return def;
  const bool yes = *s == "1" || *s == "true" || *s == "on";
  if (yes || *s == "0" || *s == "false" || *s == "off") {
    keys_.back().value.assign(1, yes ? '1' : '0');  // assign(char), not "1": GCC 12 -Wrestrict
    return yes;
  }
  throw Error("config " + std::string(key), "'" + *s + "' must be true/false/1/0/on/off");
}

uint64_t KeyValues::get_u64(std::string_view key, uint64_t def, std::string_view help) {
  keys_.push_back({std::string(key), "u64", std::to_string(def), "[0, 2^64)", std::string(help),
                   std::to_string(def)});
  const std::string* s = take(key);
  if (!s) return def;
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(s->c_str(), &end, 10);
  if (s->empty() || (*s)[0] == '-' || end != s->c_str() + s->size() || errno != 0) {
    throw Error("config " + std::string(key), "'" + *s + "' is not a non-negative integer");
  }
  keys_.back().value = std::to_string(v);
  return v;
}

int KeyValues::get_choice(std::string_view key, int def, std::span<const std::string_view> choices,
                          std::string_view help) {
  std::string allowed, list;  // appended, not concatenated: GCC 12 warns falsely (-Wrestrict)
  for (std::string_view c : choices) {
    if (!allowed.empty()) allowed.append("|"), list.append(", ");
    allowed.append(c);
    list.append(c);
  }
  keys_.push_back({std::string(key), "choice", std::string(choices[def]), allowed,
                   std::string(help), std::string(choices[def])});
  const std::string* s = take(key);
  if (!s) return def;
  for (size_t i = 0; i < choices.size(); ++i) {
    if (choices[i] == *s) return keys_.back().value = *s, static_cast<int>(i);
  }
  throw Error("config " + std::string(key), "'" + *s + "' must be one of: " + list);
}

void KeyValues::expect_consumed(std::string_view mechanism) const {
  for (const auto& [key, value] : kv_) {
    if (std::find(consumed_.begin(), consumed_.end(), key) == consumed_.end()) {
      throw Error("config",
                  "unknown key '" + key + "' for mechanism '" + std::string(mechanism) + "'");
    }
  }
}

}  // namespace attnkit
