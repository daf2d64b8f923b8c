// vecwal-bench: how fast vecwal is, beside what it competes with, measured in
// one run on one disk.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "bench/compare.h"
#include "bench/recovery_bench.h"
#include "bench/store_bench.h"
#include "bench/wal_bench.h"
#include "io/file_system.h"
#ifdef VECWAL_HAVE_CUDA
#include "bench/gpu_bench.h"
#include "gpu/device.h"
#include "gpu/mirrored_index.h"
#endif

using namespace vecwal::bench;

namespace {

std::string DefaultDir() {
  const char* t = std::getenv("TMPDIR");
  return t && *t ? t : "/var/tmp";
}

// Where the store benchmarks' index runs. "gpu" puts a Flat index's vectors
// on CUDA device 0 (gpu::OnDevice), and is refused by name where this build
// or this machine has none, rather than quietly measured on the CPU. "auto"
// is the CPU: a GPU figure is only ever one that was asked for.
bool DeviceOk(const std::string& device, StoreWorkloadConfig& xc) {
  if (device == "cpu" || device == "auto") return true;
  if (device != "gpu") {
    fmt::print(stderr, "vecwal-bench: unknown --device '{}' (cpu, gpu, auto)\n", device);
    return false;
  }
#ifdef VECWAL_HAVE_CUDA
  if (vecwal::gpu::CudaDeviceCount() > 0) {
    xc.wrap_index = vecwal::gpu::OnDevice(0);
    return true;
  }
  fmt::print(stderr, "vecwal-bench: --device gpu: no CUDA device here; use cpu or auto\n");
#else
  fmt::print(stderr, "vecwal-bench: --device gpu: this build has no CUDA (no toolkit was found); use cpu or auto\n");
#endif
  return false;
}

// CLI11's PositiveNumber names DBL_MAX, in full, as the top of its range.
const CLI::Validator kPositive(
    [](std::string& s) -> std::string {
      char* end = nullptr;
      const double v = std::strtod(s.c_str(), &end);
      return end != s.c_str() && *end == '\0' && v > 0 ? "" : "must be more than 0, not '" + s + "'";
    },
    "> 0");

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"vecwal-bench: durable vector-log benchmarks, each beside its baseline measured in the same run"};
  app.require_subcommand(1);
  app.fallthrough();  // the options above may also follow the subcommand
  std::string json_path, baseline_path, device = "auto";
  double regression_pct = 10;
  bool fail_on_regression = false;
  app.add_option("--json", json_path,
                 "also write the results as JSON to this file ('-': to stdout, and everything else to stderr)");
  app.add_option("--baseline", baseline_path, "compare with a run saved by --json and flag regressions");
  app.add_option("--regression-pct", regression_pct, "a ratio worse by more than this is a regression")
      ->capture_default_str();
  app.add_flag("--fail-on-regression", fail_on_regression, "exit 3 when a regression is flagged");
  app.add_option("--device", device,
                 "where ingest, search and mixed run the store's index: cpu, gpu (a Flat index on CUDA device 0) "
                 "or auto (cpu)")
      ->capture_default_str();

  WalBenchConfig wc;
  auto add_wal_options = [&](CLI::App* sub) {
    sub->add_option("--threads", wc.threads, "writer threads in workload 1")->capture_default_str()->check(kPositive);
    sub->add_option("--inflight", wc.inflight, "durable writes in flight")->capture_default_str()->check(kPositive);
    sub->add_option("--max-write-kib", wc.max_write_kib, "largest write the log issues")
        ->capture_default_str()->check(kPositive);
    sub->add_option("--min-concurrent-kib", wc.min_concurrent_kib,
                    "bytes gathered before another write starts while writes are in flight")
        ->capture_default_str();
    sub->add_option("--seal-ms", wc.seal_ms, "how often the log seals its durable LSN; 0: only at close")
        ->capture_default_str();
    sub->add_option("--segment-mib", wc.segment_mib, "segment size")->capture_default_str()->check(kPositive);
    sub->add_option("--only", wc.only, "workloads to run, e.g. 13")->capture_default_str();
    sub->add_flag("!--no-fio", wc.fio, "skip the fio baseline");
  };
  auto* wal = app.add_subcommand("wal", "durable appends: 64 writers, batches, latency; vs RocksDB, naive, raw device");
  wal->add_option("--dir", wc.dir, "directory on the disk to measure (required)")->required();
  wal->add_option("--dim", wc.dim, "float32 components per vector")->capture_default_str()->check(kPositive);
  wal->add_option("--batch", wc.batch, "records per batch in workload 2")->capture_default_str()->check(kPositive);
  wal->add_option("--batches-in-flight", wc.batches_in_flight,
                  "workload 2: batches the one writer keeps outstanding (AppendManyAsync); 1 = blocking AppendMany")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  wal->add_option("--seconds", wc.seconds, "duration of each measurement")->capture_default_str()->check(kPositive);
  wal->add_option("--repeat", wc.repeat, "runs per measurement; medians are reported")->check(kPositive)->capture_default_str();
  wal->add_flag("!--no-rocksdb", wc.rocksdb, "skip the RocksDB baseline");
  add_wal_options(wal);

  StoreBenchConfig sc;
  auto add_store_options = [&](CLI::App* sub) {
    sub->add_option("--dir", sc.dir, "directory on the disk to measure (required)")->required();
    sub->add_option("--vectors", sc.vectors, "vectors in the store")->capture_default_str()->check(kPositive);
    sub->add_option("--dim", sc.dim, "float32 components per vector")->capture_default_str()->check(kPositive);
    sub->add_option("--index", sc.description, "FAISS index_factory description")->capture_default_str();
    sub->add_option("--repeat", sc.repeat, "runs per measurement; medians are reported")->check(kPositive)->capture_default_str();
  };
  auto* rec = app.add_subcommand("recovery", "restart time: full log replay vs raw read; peak memory");
  add_store_options(rec);
  auto* ck = app.add_subcommand("checkpoint", "checkpoint write and load vs raw I/O and faiss::read_index");
  add_store_options(ck);
  ck->add_option("--rewrite-share", sc.rewrite_share,
                 "share of the ids rewritten before, and rewrites appended during, the checkpoint p99 (HNSW: tombstones)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();

  auto* rx = app.add_subcommand("reindex", "a Flat store copied into another index (--index) vs FAISS building it in memory");
  add_store_options(rx);
  ReindexBenchConfig rxc;
  rx->add_option("--train-sample", rxc.train_sample, "vectors that train an index that needs it")
      ->capture_default_str()
      ->check(kPositive);
  rx->add_option("--threads", rxc.threads, "OpenMP threads for the new index's training and adds; 0: every core")
      ->capture_default_str();
  rx->add_flag("--copy-first", rxc.copy_first, "copy every entry out of the source first (ReindexOptions::copy_first)");
  rx->add_option("--writers-beside", rxc.writers,
                 "threads upserting into the source throughout: their longest wait, and their rate")
      ->capture_default_str();

  StoreWorkloadConfig xc;
  auto add_workload_options = [&](CLI::App* sub) {
    sub->add_option("--dir", xc.dir, "directory on the disk to measure (required)")->required();
    sub->add_option("--vectors", xc.vectors, "vectors in the store")->capture_default_str()->check(kPositive);
    sub->add_option("--dim", xc.dim, "float32 components per vector")->capture_default_str()->check(kPositive);
    sub->add_option("--index", xc.description, "FAISS index_factory description")->capture_default_str();
    sub->add_option("--writers", xc.writers, "threads doing single-op upserts")->capture_default_str();
    sub->add_option("--searchers", xc.searchers, "threads doing batched searches")->capture_default_str();
    sub->add_option("--batch", xc.batch, "vectors per atomic batch")->capture_default_str()->check(kPositive);
    sub->add_option("--queries", xc.queries, "queries per search call")->capture_default_str()->check(kPositive);
    sub->add_option("--k", xc.k, "neighbours per query")->capture_default_str()->check(kPositive);
    sub->add_option("--nprobe", xc.nprobe, "IVF lists probed per query, in the store and in FAISS; 0: FAISS's own (1)")
        ->capture_default_str();
    sub->add_option("--ef-search", xc.ef_search,
                    "HNSW candidates kept per query, in the store and in FAISS; 0: FAISS's own (16)")
        ->capture_default_str();
    sub->add_option("--filter-share", xc.filter_share,
                    "search: share of the ids a filter passes, in the store and in FAISS (an IDSelector); 0: none")
        ->check(CLI::Range(0.0, 1.0))
        ->capture_default_str();
    sub->add_flag("--filter-as-ids", xc.filter_as_ids,
                  "search: give the store the filter's ids as a list (SearchParams::ids), not a predicate");
    sub->add_option("--seconds", xc.seconds, "duration of each measurement")->capture_default_str()->check(kPositive);
    sub->add_option("--repeat", xc.repeat, "runs per measurement; medians are reported")->check(kPositive)->capture_default_str();
    sub->add_option("--checkpoint-mib", xc.checkpoint_mib, "automatic checkpoint interval")->capture_default_str();
    sub->add_option("--stall-intervals", xc.stall_writes_at_intervals,
                    "writers wait once the log since the last checkpoint reaches this many intervals; 0: never")
        ->capture_default_str();
    sub->add_option("--recent-writes-merge-at", xc.recent_writes_merge_at,
                    "writes applied beside the index before a merge into it; 0: straight into the index")
        ->capture_default_str();
    sub->add_option("--merge-hold-us", xc.merge_hold_us,
                    "how long each step of a merge into the index holds searches back; 0: a whole merge at once")
        ->capture_default_str();
    sub->add_option("--search-hold-us", xc.search_hold_us,
                    "how long a search holds the index at a time, taking its queries in chunks; 0: a whole call at once")
        ->capture_default_str();
    sub->add_option("--search-batch-hold-us", xc.search_batch_hold_us,
                    "how long a chunk of 20 queries or more (Flat) may grow to while nobody waits; 0: no growth")
        ->capture_default_str();
    sub->add_option("--grow-storage-ahead-from", xc.grow_storage_ahead_from,
                    "bytes of Flat storage from which it grows beside the writes, not in the merge that needs it")
        ->capture_default_str();
    sub->add_option("--writer-slice-us", xc.writer_slice_us,
                    "time slice writer threads ask the kernel for; 0: the default slice")
        ->capture_default_str();
    sub->add_flag("!--no-rocksdb", xc.rocksdb, "skip the RocksDB baseline");
  };
  auto* ingest = app.add_subcommand("ingest", "durable upserts, single and batched; vs RocksDB sync puts, raw device");
  add_workload_options(ingest);
  ingest->add_option("--grow-to", xc.grow_to,
                     "also: the writers grow an empty store to this many vectors; their longest upsert with the "
                     "storage grown ahead vs in the merge that needs it (0: not measured)")
      ->capture_default_str();
  auto* search = app.add_subcommand("search", "batched k-NN through the store vs FAISS CPU search of the same index");
  add_workload_options(search);
  auto* mixed = app.add_subcommand("mixed", "writers + searchers + checkpoints at once, vs each alone");
  add_workload_options(mixed);

  std::string all_dir = DefaultDir();
  double all_seconds = 1.5;
  size_t all_vectors = 20000;
  auto* all = app.add_subcommand(
      "all", "every workload, short (about a minute), and one summary table; with a CUDA card, its search too");
  all->add_option("--dir", all_dir, "directory on the disk to measure")->capture_default_str();
  all->add_option("--seconds", all_seconds, "duration of each measurement")->capture_default_str()->check(kPositive);
  all->add_option("--vectors", all_vectors, "vectors in each store")->capture_default_str()->check(kPositive);
  all->add_option("--dim", xc.dim, "float32 components per vector")->capture_default_str()->check(kPositive);
  all->add_option("--index", xc.description, "FAISS index_factory description")->capture_default_str();
  add_wal_options(all);
#ifdef VECWAL_HAVE_CUDA
  GpuBenchConfig gc;
  auto* gpu = app.add_subcommand(
      "gpu", "exact k-NN with the store's index on a GPU vs PyTorch on the same card and FAISS CPU; reopen to first answer");
  gpu->add_option("--dir", gc.dir, "directory on the disk to measure (required)")->required();
  gpu->add_option("--vectors", gc.vectors, "vectors in the store")->capture_default_str()->check(kPositive);
  gpu->add_option("--dim", gc.dim, "float32 components per vector")->capture_default_str()->check(kPositive);
  gpu->add_option("--k", gc.k, "neighbours per query")->capture_default_str()->check(kPositive);
  gpu->add_option("--queries", gc.queries, "queries per search call, one measurement each")
      ->capture_default_str()->check(kPositive);
  gpu->add_option("--seconds", gc.seconds, "duration of each measurement")->capture_default_str()->check(kPositive);
  gpu->add_option("--cuda-device", gc.device, "CUDA device")->capture_default_str();
  gpu->add_option("--torch-script", gc.torch_script, "PyTorch baseline script; empty: none")->capture_default_str();
  gpu->add_option("--python", gc.python, "the Python that has PyTorch")->capture_default_str();
  gpu->add_flag("!--no-faiss-cpu", gc.faiss_cpu, "skip FAISS's CPU search (a 1024-query call: about 20 s)");
#endif
  CLI11_PARSE(app, argc, argv);
  // '-': the JSON alone on stdout, for a pipe; the tables, progress and the
  // baselines' own output (fio's) go to stderr meanwhile.
  int json_fd = -1;
  if (json_path == "-") {
    std::fflush(stdout);
    json_fd = ::dup(STDOUT_FILENO);
    if (json_fd < 0 || ::dup2(STDERR_FILENO, STDOUT_FILENO) < 0) {
      std::perror("vecwal-bench: --json -");
      return 1;
    }
  }
  if (!DeviceOk(device, xc)) return 2;

  std::vector<Row> rows;
  try {
    if (wal->parsed()) {
      fmt::print("vecwal-bench wal: dir {}, backend {}, {} s x {} per measurement\n", wc.dir,
                 vecwal::NewPosixFileSystem()->backend_name(), wc.seconds, wc.repeat);
      rows = RunWalBench(wc);
    } else if (rec->parsed()) {
      rows = RunRecoveryBench(sc);
    } else if (ck->parsed()) {
      rows = RunCheckpointBench(sc);
    } else if (rx->parsed()) {
      rows = RunReindexBench(sc, rxc);
    } else if (ingest->parsed()) {
      rows = RunIngestBench(xc);
    } else if (search->parsed()) {
      rows = RunSearchBench(xc);
    } else if (mixed->parsed()) {
      rows = RunMixedBench(xc);
#ifdef VECWAL_HAVE_CUDA
    } else if (gpu->parsed()) {
      rows = RunGpuBench(gc);
#endif
    } else {
      fmt::print("vecwal-bench all: dir {}, backend {}, {} s per measurement, {} x {}-d {} stores\n", all_dir,
                 vecwal::NewPosixFileSystem()->backend_name(), all_seconds, all_vectors, xc.dim, xc.description);
      auto add = [&](const char* what, std::vector<Row> r) {
        fmt::print(stderr, "vecwal-bench all: {} done\n", what);
        rows.insert(rows.end(), r.begin(), r.end());
      };
      wc.dir = xc.dir = sc.dir = all_dir;
      wc.seconds = xc.seconds = all_seconds;
      wc.dim = xc.dim;
      xc.vectors = sc.vectors = all_vectors;
      sc.dim = xc.dim;
      sc.description = xc.description;
      add("wal", RunWalBench(wc));
      add("ingest", RunIngestBench(xc));
      add("search", RunSearchBench(xc));
      auto batched = xc;
      batched.queries = 64;  // past FAISS's BLAS threshold (20): searched in batches
      add("search, 64 queries a call", RunSearchBench(batched));
      auto listed = xc;
      listed.filter_share = 0.01;  // a document's or a tenant's ids, given as a list
      listed.filter_as_ids = true;
      add("search, 1% of the ids", RunSearchBench(listed));
      add("mixed", RunMixedBench(xc));
      add("recovery", RunRecoveryBench(sc));
      add("checkpoint", RunCheckpointBench(sc));
#ifdef VECWAL_HAVE_CUDA
      if (vecwal::gpu::CudaDeviceCount() > 0) {  // where there is a card: the same store's search on it
        GpuBenchConfig g;
        g.dir = all_dir;
        g.vectors = all_vectors;
        g.dim = xc.dim;
        g.queries = {16, 256};
        g.seconds = all_seconds;
        add("gpu", RunGpuBench(g));
      }
#endif
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "vecwal-bench: {}\n", e.what());
    return 1;
  }
  PrintTable(rows);
  int rc = 0;
  if (!baseline_path.empty()) {
    auto before = LoadRows(baseline_path);
    if (!before) return 2;
    int regressions = PrintComparison(*before, rows, regression_pct, baseline_path);
    if (regressions > 0 && fail_on_regression) rc = 3;
  }
  if (json_fd >= 0) {
    std::fflush(stdout);
    const std::string text = ToJson(rows).dump(2) + "\n";
    std::FILE* out = ::fdopen(json_fd, "w");
    if (!out || std::fwrite(text.data(), 1, text.size(), out) != text.size() || std::fclose(out) != 0) {
      std::perror("vecwal-bench: writing the JSON to stdout");
      return 1;
    }
  } else if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << ToJson(rows).dump(2) << "\n";
    if (!out) {
      fmt::print(stderr, "vecwal-bench: cannot write {}\n", json_path);
      return 1;
    }
  }
  return rc;
}
