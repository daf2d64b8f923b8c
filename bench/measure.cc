#include "bench/measure.h"

#include <fmt/core.h>

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
