// What the libFuzzer targets share: a scratch directory of their own on
// tmpfs, and writing an input there as a file.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

namespace vecwal::fuzz {

inline const std::string& ScratchDir() {
  static const std::string dir = [] {
    std::string root = std::filesystem::exists("/dev/shm") ? "/dev/shm" : "/tmp";
    std::string d = root + "/vecwal-fuzz-" + std::to_string(::getpid());
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

inline void WriteFile(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

}  // namespace vecwal::fuzz
