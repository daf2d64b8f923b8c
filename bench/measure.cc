#include "bench/measure.h"

#include <fmt/core.h>

namespace vecwal::bench {

namespace {
std::string Human(double v) {
  if (v >= 1e9) return fmt::format("{:.2f}G", v / 1e9);
  if (v >= 1e6) return fmt::format("{:.2f}M", v / 1e6);
  if (v >= 1e4) return fmt::format("{:.1f}k", v / 1e3);
  return fmt::format("{:.1f}", v);
}
}  // namespace

void PrintTable(const std::vector<Row>& rows) {
  fmt::print("\n{:<40} {:<12} {:>10}  {:<34} {:>10} {:>8}  {}\n", "workload", "metric", "vecwal", "baseline", "value",
             "ratio", "target");
  fmt::print("{}\n", std::string(128, '-'));
  for (const auto& r : rows) {
    double ratio = 0;
    if (r.baseline > 0 && r.ours > 0) ratio = r.higher_is_better ? r.ours / r.baseline : r.baseline / r.ours;
    fmt::print("{:<40} {:<12} {:>10}  {:<34} {:>10} {:>7.2f}x  {}\n", r.workload, r.metric, Human(r.ours),
               r.baseline_name, r.baseline > 0 ? Human(r.baseline) : "n/a", ratio, r.target);
  }
  fmt::print("(ratio > 1 means vecwal is better: throughput ours/baseline, latency baseline/ours)\n");
}

nlohmann::json ToJson(const std::vector<Row>& rows) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& r : rows) {
    double ratio = 0;
    if (r.baseline > 0 && r.ours > 0) ratio = r.higher_is_better ? r.ours / r.baseline : r.baseline / r.ours;
    a.push_back({{"workload", r.workload},
                 {"metric", r.metric},
                 {"vecwal", r.ours},
                 {"baseline", r.baseline_name},
                 {"baseline_value", r.baseline},
                 {"ratio", ratio},
                 {"higher_is_better", r.higher_is_better},
                 {"target", r.target}});
  }
  return a;
}

}  // namespace vecwal::bench
