// Comparing a run with one saved earlier by --json: each row matched by its
// workload and metric, its ratio (vecwal over the baseline measured in the
// same run, so machine drift cancels) set beside the earlier one, and a
// regression flagged when it is worse by more than a threshold.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "bench/measure.h"

namespace vecwal::bench {

// Rows from a file written by --json; nullopt (and a message) when unreadable.
std::optional<std::vector<Row>> LoadRows(const std::string& path);

// Prints the comparison; returns the number of regressions flagged.
int PrintComparison(const std::vector<Row>& before, const std::vector<Row>& now, double regression_pct,
                    const std::string& before_name);

}  // namespace vecwal::bench
