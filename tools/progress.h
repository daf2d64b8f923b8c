// A one-line progress display on stderr for anything that runs longer than a
// couple of seconds. On a terminal it redraws in place at most every 250 ms;
// elsewhere (CI logs, pipes) it stays quiet, so logs hold only results.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace vecwal::tools {

class Progress {
 public:
  // `total` 0: no known end (shows the count and elapsed time only).
  Progress(std::string label, uint64_t total, std::string unit = "")
      : label_(std::move(label)), unit_(std::move(unit)), total_(total), tty_(::isatty(2) == 1) {}
  ~Progress() { Done(); }

  void Update(uint64_t done) {
    if (!tty_ || finished_) return;
    auto now = Clock::now();
    if (now - last_ < std::chrono::milliseconds(250)) return;
    last_ = now;
    double s = std::chrono::duration<double>(now - start_).count();
    if (total_ > 0)
      std::fprintf(stderr, "\r  %s: %llu/%llu %s (%3.0f%%) %5.1f s ", label_.c_str(),
                   static_cast<unsigned long long>(done), static_cast<unsigned long long>(total_), unit_.c_str(),
                   100.0 * static_cast<double>(done) / static_cast<double>(total_), s);
    else
      std::fprintf(stderr, "\r  %s: %llu %s %5.1f s ", label_.c_str(), static_cast<unsigned long long>(done),
                   unit_.c_str(), s);
    drawn_ = true;
  }

  void Done() {
    if (finished_) return;
    finished_ = true;
    if (tty_ && drawn_) std::fprintf(stderr, "\r\033[K");
  }

 private:
  using Clock = std::chrono::steady_clock;
  std::string label_, unit_;
  uint64_t total_;
  bool tty_;
  bool drawn_ = false, finished_ = false;
  Clock::time_point start_ = Clock::now(), last_{};
};

}  // namespace vecwal::tools
