#include "bench/measure.h"

#include <fmt/core.h>

#include <random>
#include <stdexcept>

namespace vecwal::bench {

namespace {
std::string Human(double v) {
  if (v >= 1e9) return fmt::format("{:.2f}G", v / 1e9);
  if (v >= 1e6) return fmt::format("{:.2f}M", v / 1e6);
  if (v >= 1e4) return fmt::format("{:.1f}k", v / 1e3);
  if (v < 10) return fmt::format("{:.3g}", v);  // shares (recall) and small ratios keep their digits
  return fmt::format("{:.1f}", v);
}
}  // namespace

std::vector<float> RandomVectors(size_t n, size_t dim, uint64_t seed) {
  constexpr size_t kPieces = 64;  // each drawn from its own seed, whichever thread draws it
  std::vector<float> v(n * dim);
  std::atomic<size_t> next{0};
  std::vector<std::thread> ts;
  for (unsigned t = 0; t < std::max(1u, std::thread::hardware_concurrency()); ++t)
    ts.emplace_back([&] {
      for (size_t p; (p = next.fetch_add(1)) < kPieces;) {
        std::mt19937_64 rng(seed * kPieces + p);
        std::uniform_real_distribution<float> u(-1, 1);
        for (size_t i = v.size() * p / kPieces; i < v.size() * (p + 1) / kPieces; ++i) v[i] = u(rng);
      }
    });
  for (auto& t : ts) t.join();
  return v;
}

void Check(const Status& s) {
  if (!s.ok()) throw std::runtime_error(s.ToString());
}

double Ratio(const Row& r) {
  if (r.baseline <= 0 || r.ours <= 0) return 0;
  return r.higher_is_better ? r.ours / r.baseline : r.baseline / r.ours;
}

void PrintTable(const std::vector<Row>& rows) {
  fmt::print("\n{:<62} {:<13} {:>9}  {:<36} {:>9} {:>7}  {}\n", "workload", "metric", "vecwal", "baseline", "value",
             "ratio", "target");
  fmt::print("{}\n", std::string(150, '-'));
  for (const auto& r : rows) {
    const double ratio = Ratio(r);
    fmt::print("{:<62} {:<13} {:>9}  {:<36} {:>9} {:>7}  {}\n", r.workload, r.metric, Human(r.ours),
               r.baseline_name, r.baseline > 0 ? Human(r.baseline) : "n/a",
               ratio > 0 ? fmt::format("{:.2f}x", ratio) : "", r.target);
  }
  fmt::print("(ratio > 1 means vecwal is better: throughput ours/baseline, latency baseline/ours)\n");
}

nlohmann::json ToJson(const std::vector<Row>& rows) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& r : rows) {
    const double ratio = Ratio(r);
    a.push_back({{"workload", r.workload},
                 {"metric", r.metric},
                 {"vecwal", r.ours},
                 {"baseline", r.baseline_name},
                 {"baseline_value", r.baseline},
                 {"ratio", ratio},
                 {"higher_is_better", r.higher_is_better},
                 {"target", r.target}});
  }
  return {{"format", "vecwal-bench/1"}, {"rows", a}};
}

}  // namespace vecwal::bench
