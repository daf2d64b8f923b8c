#include "bench/compare.h"

#include <fstream>
#include <map>

#include <fmt/core.h>

namespace vecwal::bench {

std::optional<std::vector<Row>> LoadRows(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    fmt::print(stderr, "vecwal-bench: cannot read --baseline {}\n", path);
    return std::nullopt;
  }
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
    const auto& a = j.is_array() ? j : j.at("rows");
    std::vector<Row> rows;
    for (const auto& r : a)
      rows.push_back({r.at("workload").get<std::string>(), r.at("metric").get<std::string>(),
                      r.at("vecwal").get<double>(), r.value("baseline", ""), r.value("baseline_value", 0.0),
                      r.value("higher_is_better", true), r.value("target", "")});
    return rows;
  } catch (const std::exception& e) {
    fmt::print(stderr, "vecwal-bench: --baseline {}: not a vecwal-bench --json file: {}\n", path, e.what());
    return std::nullopt;
  }
}

int PrintComparison(const std::vector<Row>& before, const std::vector<Row>& now, double regression_pct,
                    const std::string& before_name) {
  std::map<std::pair<std::string, std::string>, const Row*> old;
  for (const auto& r : before) old[{r.workload, r.metric}] = &r;
  fmt::print("\ncompared with {} (a regression: worse by more than {:.0f}%)\n", before_name, regression_pct);
  fmt::print("{:<52} {:<14} {:>10} {:>10} {:>9}  {}\n", "workload", "metric", "before", "now", "change", "");
  fmt::print("{}\n", std::string(110, '-'));
  int regressions = 0, matched = 0;
  for (const auto& r : now) {
    auto it = old.find({r.workload, r.metric});
    if (it == old.end()) continue;
    ++matched;
    // Ratios when both runs have a baseline figure; the raw figure otherwise.
    const bool by_ratio = Ratio(r) > 0 && Ratio(*it->second) > 0;
    const double b = by_ratio ? Ratio(*it->second) : it->second->ours;
    const double n = by_ratio ? Ratio(r) : r.ours;
    if (b <= 0) continue;
    // Ratios are oriented so that higher is better; raw figures follow the row.
    const bool higher_better = by_ratio || r.higher_is_better;
    const double change = (n - b) / b * 100;
    const bool worse = higher_better ? change < -regression_pct : change > regression_pct;
    regressions += worse;
    fmt::print("{:<52} {:<14} {:>10.3g} {:>10.3g} {:>+8.1f}%  {}{}\n", r.workload.substr(0, 52),
               by_ratio ? r.metric.substr(0, 8) + " ratio" : r.metric, b, n, change, worse ? "REGRESSION" : "",
               by_ratio ? "" : " (raw)");
  }
  fmt::print("{} row(s) compared, {} regression(s)\n", matched, regressions);
  return regressions;
}

}  // namespace vecwal::bench
