// `vecwal-recovery measure`: a real crash, then a timed restart.
//
// A writer process builds a store of N vectors, checkpoints it, writes
// `wal_mib` more of log (with automatic checkpoints every `checkpoint_mib`
// when nonzero) and is killed with SIGKILL while writing. A fresh process
// then opens the store, timing each phase of recovery up to the first search
// served, and checks that every op the writer saw acknowledged is there.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "recovery/durable_index.h"

namespace vecwal::tools {

struct MeasureConfig {
  std::string dir;  // the store is built in dir/store
  uint64_t vectors = 100000;
  size_t dim = 768;
  std::string index = "Flat";
  std::string metric = "l2";
  uint64_t batch = 256;            // ops per atomic batch
  double wal_mib = 64;             // log written after the base checkpoint before the kill
  double checkpoint_mib = 0;       // automatic checkpoint interval; 0: only the base one
  std::optional<uint64_t> kill_at; // kill once this many ops are acknowledged
  bool random_kill = false;        // kill at a random op after the base checkpoint, after a random delay
  uint64_t seed = 1;
  std::string mode = "tolerate_tail";
  std::string device = "auto";     // cpu, gpu or auto
  bool plant_lost_record = false;  // damage the last acknowledged op's record after the kill (tests the check)
};

struct MeasureResult {
  bool ok = false;          // recovered, and nothing acknowledged lost
  std::string problem;
  nlohmann::json report;    // every figure, phase by phase
};

// Throws std::runtime_error when the measurement itself cannot run.
MeasureResult MeasureOnce(const MeasureConfig& c);

// `vecwal-recovery sweep`: MeasureOnce over every combination, repeated;
// writes sweep.csv, sweep.svg and sweep.png into out_dir.
struct SweepConfig {
  MeasureConfig base;  // vectors, dim, batch, metric, mode, seed, dir
  std::vector<double> wal_mib = {4, 16, 64};
  std::vector<std::string> indices = {"Flat", "HNSW32"};
  std::vector<double> checkpoint_mib = {0};
  std::vector<std::string> devices = {"cpu"};
  int repeat = 3;
  std::string out_dir = ".";
};
// Returns the summary; throws when a run cannot be made. `failures` counts
// runs that lost an acknowledged op.
nlohmann::json RunSweep(const SweepConfig& c, int* failures);

// `vecwal-recovery soak`: kill after kill of one store's writer (writes,
// searches and automatic checkpoints at once) at random moments, checking
// every acknowledged op after each restart, for `seconds`.
struct SoakConfig {
  MeasureConfig base;  // vectors, dim, index, batch, checkpoint_mib, seed, dir
  double seconds = 300;
  uint64_t max_delay_ms = 1500;  // a kill lands this long after a writer starts, at most
};
// `ops_acknowledged`: every op the writers saw acknowledged, each checked at every restart after it.
nlohmann::json RunSoak(const SoakConfig& c, int* failures);

// `vecwal-recovery estimate DIR`: predicted restart time of an existing store
// from its checkpoint and log-tail sizes and rates measured on this machine
// by a small calibration crash in `scratch`.
struct EstimateConfig {
  std::string dir;
  std::string scratch;
  uint64_t calibration_vectors = 20000;
  double calibration_wal_mib = 16;
  // The options the store runs with, which a directory does not record: its
  // log since the last checkpoint stops at their product (the log limit),
  // so a restart replays at most that. 0 in either: no limit. Defaults: the
  // library's (DurableIndexOptions).
  uint64_t checkpoint_every_mib = recovery::DurableIndexOptions{}.checkpoint_every_log_bytes >> 20;
  uint64_t stall_intervals = recovery::DurableIndexOptions{}.stall_writes_at_intervals;
};
nlohmann::json RunEstimate(const EstimateConfig& c);

// The device the store's index runs on: "cpu", or an error naming why not.
std::string ResolveDevice(const std::string& requested);

}  // namespace vecwal::tools
