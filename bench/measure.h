// Small measurement helpers for vecwal-bench: timed multi-threaded loops,
// latency percentiles, medians of repeats, the result table, and the random
// vectors the store workloads use.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/status.h"
#include "tools/progress.h"

namespace vecwal::bench {

using Clock = std::chrono::steady_clock;

inline double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Runs `op(thread_index)` on `threads` threads for `seconds`; returns ops/s.
// op returns the number of records it completed (0 on failure stops it).
inline double RunFor(int threads, double seconds, const std::function<uint64_t(int)>& op) {
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> total{0};
  std::vector<std::thread> ts;
  auto start = Clock::now();
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      uint64_t mine = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        uint64_t n = op(t);
        if (n == 0) break;
        mine += n;
      }
      total += mine;
    });
  {
    tools::Progress p("measuring", static_cast<uint64_t>(seconds * 10 + 0.5), "x 100 ms");
    while (Seconds(Clock::now() - start) < seconds) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      p.Update(static_cast<uint64_t>(Seconds(Clock::now() - start) * 10));
    }
  }
  stop = true;
  for (auto& t : ts) t.join();
  return static_cast<double>(total.load()) / Seconds(Clock::now() - start);
}

struct Latency {
  double p50_us = 0, p99_us = 0, p999_us = 0, max_us = 0;
  uint64_t samples = 0;
};

// p50/p99/p999 and the longest of latency samples in microseconds.
inline Latency Percentiles(std::vector<double> us) {
  Latency l;
  l.samples = us.size();
  if (us.empty()) return l;
  std::sort(us.begin(), us.end());
  auto pct = [&](double p) { return us[std::min(us.size() - 1, static_cast<size_t>(p * us.size()))]; };
  l.p50_us = pct(0.50);
  l.p99_us = pct(0.99);
  l.p999_us = pct(0.999);
  l.max_us = us.back();
  return l;
}

// Calls op() back to back for `seconds`, timing each call.
// Times `op` for as long as `more` says, or until it fails.
inline Latency MeasureLatencyWhile(const std::function<bool()>& more, const std::function<bool()>& op) {
  std::vector<double> us;
  while (more()) {
    auto t0 = Clock::now();
    if (!op()) break;
    us.push_back(Seconds(Clock::now() - t0) * 1e6);
  }
  return Percentiles(std::move(us));
}

inline Latency MeasureLatency(double seconds, const std::function<bool()>& op) {
  auto end = Clock::now() + std::chrono::duration<double>(seconds);
  return MeasureLatencyWhile([&] { return Clock::now() < end; }, op);
}

inline double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// One row of the result table: our figure, the baseline's, and the ratio.
struct Row {
  std::string workload;
  std::string metric;  // e.g. "records/s"
  double ours = 0;
  std::string baseline_name;
  double baseline = 0;
  bool higher_is_better = true;
  std::string target;  // e.g. ">= 9x"
};

// ours/baseline for throughput, baseline/ours for latency (higher is better
// either way); 0 when either figure is missing.
double Ratio(const Row& r);

void PrintTable(const std::vector<Row>& rows);

// n x dim floats, uniform in [-1, 1), drawn on every core (a million 768-d
// vectors took one thread about 5 s): the same for a seed on any machine.
std::vector<float> RandomVectors(size_t n, size_t dim, uint64_t seed);
// Throws std::runtime_error with the status's text where it is an error.
void Check(const Status& s);
nlohmann::json ToJson(const std::vector<Row>& rows);

}  // namespace vecwal::bench
