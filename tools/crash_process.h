// The processes of a crash measurement: a writer that runs the crash
// workload until it is killed, and a restart that is timed and checked, each
// forked so that its crash is real and its memory and timings its own.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "recovery/durable_index.h"
#include "tools/recovery_measure.h"

namespace vecwal::tools {

// Set in a writer report once the base checkpoint is durable.
inline constexpr uint64_t kBaseDone = 1ull << 63;

recovery::DurableIndexOptions StoreOptions(const MeasureConfig& c, const std::string& store);

struct WriterProcess {
  pid_t pid = -1;
  int reports = -1;  // u64 counts of acknowledged ops, in order
};

// Forks the writer. With start_ops 0 it builds the store (N upserts, then a
// checkpoint, reported with kBaseDone); otherwise the store already holds
// the first start_ops ops and it goes on from there. Either way it then
// writes batches until it is killed; with `search`, a second thread
// searches all the while.
WriterProcess StartWriter(const MeasureConfig& c, const std::string& store, uint64_t start_ops, bool search);

// Forks a process that opens the store, times each recovery phase up to the
// first search served, and checks it against `acked_ops`; returns what it
// found ("recovery" and "verify", or "open_error").
nlohmann::json TimedRestart(const MeasureConfig& c, const std::string& store, uint64_t acked_ops);

inline double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}
void DropFromPageCache(const std::string& dir);
uint64_t DirBytes(const std::string& dir);
std::string ExitDescription(int wait_status);

}  // namespace vecwal::tools
