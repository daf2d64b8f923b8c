// A fresh directory under the directory being measured, removed when done.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <stdexcept>
#include <string>

namespace vecwal::bench {

class Scratch {
 public:
  explicit Scratch(const std::string& parent) {
    std::filesystem::create_directories(parent);
    std::string t = parent + "/run-XXXXXX";
    if (::mkdtemp(t.data()) == nullptr) throw std::runtime_error("mkdtemp in " + parent);
    path_ = t;
  }
  ~Scratch() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace vecwal::bench
