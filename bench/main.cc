// vecwal-bench: how fast vecwal is, beside what it competes with, measured in
// one run on one disk.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "bench/recovery_bench.h"
#include "bench/wal_bench.h"
#include "io/file_system.h"

using namespace vecwal::bench;

int main(int argc, char** argv) {
  CLI::App app{"vecwal-bench: durable vector-log benchmarks, each beside its baseline"};
  app.require_subcommand(1);
  std::string json_path;
  app.add_option("--json", json_path, "also write the results as JSON to this file");

  WalBenchConfig wc;
  auto* wal = app.add_subcommand("wal", "durable appends: 64 writers, batches, latency; vs RocksDB, naive, raw device");
  wal->add_option("--dir", wc.dir, "directory on the disk to measure (required)")->required();
  wal->add_option("--threads", wc.threads, "writer threads in workload 1")->capture_default_str();
  wal->add_option("--dim", wc.dim, "float32 components per vector")->capture_default_str();
  wal->add_option("--batch", wc.batch, "records per batch in workload 2")->capture_default_str();
  wal->add_option("--seconds", wc.seconds, "duration of each measurement")->capture_default_str();
  wal->add_option("--repeat", wc.repeat, "runs per measurement; medians are reported")->capture_default_str();
  wal->add_option("--inflight", wc.inflight, "durable writes in flight")->capture_default_str();
  wal->add_option("--max-write-kib", wc.max_write_kib, "largest write the log issues")->capture_default_str();
  wal->add_option("--min-concurrent-kib", wc.min_concurrent_kib,
                  "bytes gathered before another write starts while writes are in flight")
      ->capture_default_str();
  wal->add_option("--segment-mib", wc.segment_mib, "segment size")->capture_default_str();
  wal->add_option("--only", wc.only, "workloads to run, e.g. 13")->capture_default_str();
  wal->add_flag("!--no-rocksdb", wc.rocksdb, "skip the RocksDB baseline");
  wal->add_flag("!--no-fio", wc.fio, "skip the fio baseline");
  StoreBenchConfig sc;
  auto add_store_options = [&](CLI::App* sub) {
    sub->add_option("--dir", sc.dir, "directory on the disk to measure (required)")->required();
    sub->add_option("--vectors", sc.vectors, "vectors in the store")->capture_default_str();
    sub->add_option("--dim", sc.dim, "float32 components per vector")->capture_default_str();
    sub->add_option("--index", sc.description, "FAISS index_factory description")->capture_default_str();
    sub->add_option("--repeat", sc.repeat, "runs per measurement; medians are reported")->capture_default_str();
  };
  auto* rec = app.add_subcommand("recovery", "restart time: full log replay vs raw read; peak memory");
  add_store_options(rec);
  auto* ck = app.add_subcommand("checkpoint", "checkpoint write and load vs raw I/O and faiss::read_index");
  add_store_options(ck);
  CLI11_PARSE(app, argc, argv);

  if (rec->parsed() || ck->parsed()) {
    std::vector<Row> rows;
    try {
      rows = rec->parsed() ? RunRecoveryBench(sc) : RunCheckpointBench(sc);
    } catch (const std::exception& e) {
      fmt::print(stderr, "vecwal-bench: {}\n", e.what());
      return 1;
    }
    PrintTable(rows);
    if (!json_path.empty()) std::ofstream(json_path) << ToJson(rows).dump(2) << "\n";
    return 0;
  }

  auto fs = vecwal::NewPosixFileSystem();
  fmt::print("vecwal-bench wal: dir {}, backend {}, {} s x {} per measurement\n", wc.dir, fs->backend_name(),
             wc.seconds, wc.repeat);
  std::vector<Row> rows;
  try {
    rows = RunWalBench(wc);
  } catch (const std::exception& e) {
    fmt::print(stderr, "vecwal-bench: {}\n", e.what());
    return 1;
  }
  PrintTable(rows);
  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << ToJson(rows).dump(2) << "\n";
    if (!out) {
      fmt::print(stderr, "vecwal-bench: cannot write {}\n", json_path);
      return 1;
    }
  }
  return 0;
}
