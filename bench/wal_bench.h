// `vecwal-bench wal`: durable ingest through the log, beside its baselines.
#pragma once

#include <string>
#include <vector>

#include "bench/measure.h"

namespace vecwal::bench {

struct WalBenchConfig {
  std::string dir;
  int threads = 64;         // workload 1 writers
  size_t dim = 768;         // float32 components per vector: a 3 KiB record
  size_t batch = 1024;      // workload 2 records per AppendMany
  int batches_in_flight = 3;  // workload 2: async batches the one writer keeps outstanding
  double seconds = 3;       // per measurement
  int repeat = 1;           // medians over this many runs
  unsigned inflight = 8;    // durable writes in flight
  size_t max_write_kib = 1024;
  size_t min_concurrent_kib = 64;
  uint64_t segment_mib = 64;
  uint64_t seal_ms = 1000;  // WalOptions::seal_interval_ms
  bool rocksdb = true;
  bool fio = true;
  std::string only = "123";  // which workloads to run
};

std::vector<Row> RunWalBench(const WalBenchConfig& c);

}  // namespace vecwal::bench
