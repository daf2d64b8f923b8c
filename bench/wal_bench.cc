#include "bench/wal_bench.h"

#include <stdlib.h>

#include <atomic>
#include <filesystem>
#include <thread>

#include <fmt/core.h>

#include "bench/baselines.h"
#include "bench/scratch.h"
#include "wal/record_ops.h"
#include "wal/wal.h"

namespace vecwal::bench {
namespace {

std::vector<std::byte> UpsertRecord(uint64_t id, size_t dim) {
  std::vector<float> v(dim);
  for (size_t i = 0; i < dim; ++i) v[i] = static_cast<float>((id * 31 + i) % 997) / 997.f;
  std::vector<std::byte> out;
  wal::EncodeUpsert(id, v, {}, out);
  return out;
}

std::unique_ptr<wal::Wal> OpenLog(const std::string& dir, const WalBenchConfig& c, DurableWriteMode mode) {
  wal::WalOptions o;
  o.segment_bytes = c.segment_mib << 20;
  o.max_writes_in_flight = c.inflight;
  o.max_write_bytes = c.max_write_kib << 10;
  o.min_concurrent_write_bytes = c.min_concurrent_kib << 10;
  o.durable_mode = mode;
  o.spare_segments = 4;
  auto w = wal::Wal::Open(dir, o);
  if (!w.ok()) throw std::runtime_error(w.status().ToString());
  return std::move(w).value();
}

// Releases the log behind the durable LSN, as checkpoints do in service, so
// that segments are recycled rather than zero-filled anew: the steady state.
class Releaser {
 public:
  explicit Releaser(wal::Wal& w) : t_([this, &w] {
    while (!stop_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      (void)w.ReleaseBefore(w.durable_lsn());
    }
  }) {}
  ~Releaser() {
    stop_ = true;
    t_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread t_;
};

double Workload1(const WalBenchConfig& c, DurableWriteMode mode) {
  Scratch s(c.dir);
  auto log = OpenLog(s.path(), c, mode);
  std::vector<std::vector<std::byte>> recs;
  for (int t = 0; t < c.threads; ++t) recs.push_back(UpsertRecord(t, c.dim));
  Releaser rel(*log);
  return RunFor(c.threads, c.seconds, [&](int t) -> uint64_t {
    return log->Append(wal::RecordType::kUpsert, recs[t]).ok() ? 1 : 0;
  });
}

double Workload2(const WalBenchConfig& c, DurableWriteMode mode) {
  Scratch s(c.dir);
  auto log = OpenLog(s.path(), c, mode);
  std::vector<std::vector<std::byte>> recs;
  std::vector<wal::RecordView> views;
  for (size_t i = 0; i < c.batch; ++i) recs.push_back(UpsertRecord(i, c.dim));
  for (auto& r : recs) views.push_back({wal::RecordType::kUpsert, r});
  Releaser rel(*log);
  uint64_t before = log->stats().writer.bytes_written;
  auto t0 = Clock::now();
  double batches = RunFor(1, c.seconds, [&](int) -> uint64_t { return log->AppendMany(views).ok() ? 1 : 0; });
  (void)batches;
  return static_cast<double>(log->stats().writer.bytes_written - before) / Seconds(Clock::now() - t0);
}

Latency Workload3(const WalBenchConfig& c) {
  Scratch s(c.dir);
  auto log = OpenLog(s.path(), c, DurableWriteMode::kDsyncWrite);
  auto rec = UpsertRecord(1, c.dim);
  return MeasureLatency(c.seconds, [&] { return log->Append(wal::RecordType::kUpsert, rec).ok(); });
}

template <typename F>
double MedianOf(int n, F f) {
  std::vector<double> v;
  for (int i = 0; i < n; ++i) v.push_back(f());
  return Median(v);
}

void Progress(const std::string& what) { fmt::print(stderr, "  measuring {} ...\n", what); }

}  // namespace

std::vector<Row> RunWalBench(const WalBenchConfig& c) {
  std::vector<Row> rows;
  const size_t rec_bytes = UpsertRecord(0, c.dim).size();
  const std::string w1 = fmt::format("1. {} writers, 1 record/append", c.threads);
  const std::string w2 = fmt::format("2. 1 writer, batches of {}", c.batch);
  const std::string w3 = "3. 1 writer, append latency";

  auto want = [&](char w) { return c.only.find(w) != std::string::npos; };
  if (want('1')) {
  Progress("workload 1: vecwal (RWF_DSYNC)");
  double ours1 = MedianOf(c.repeat, [&] { return Workload1(c, DurableWriteMode::kDsyncWrite); });
  Progress("workload 1: vecwal (write + fdatasync)");
  double ours1_fsync = MedianOf(c.repeat, [&] { return Workload1(c, DurableWriteMode::kWriteThenFdatasync); });
  std::optional<double> rocks;
  if (c.rocksdb) {
    Progress("workload 1: RocksDB sync puts");
    std::vector<double> v;
    for (int i = 0; i < c.repeat; ++i) {
      Scratch s(c.dir);
      if (auto r = RocksDbSyncPutsPerSec(s.path(), c.threads, rec_bytes, c.seconds)) v.push_back(*r);
    }
    if (!v.empty()) rocks = Median(v);
  }
  Progress("workload 1: naive log");
  double naive1 = MedianOf(c.repeat, [&] {
    Scratch s(c.dir);
    return NaiveLogRecordsPerSec(s.path(), c.threads, rec_bytes, c.seconds);
  });
  rows.push_back({w1, "records/s", ours1, "RocksDB WAL, sync=true", rocks.value_or(0), true, ">= 9x"});
  rows.push_back({w1, "records/s", ours1, "naive pwrite+fdatasync", naive1, true, ""});
  rows.push_back({w1, "records/s", ours1, "vecwal, write+fdatasync mode", ours1_fsync, true, "(mode choice)"});
  }
  if (want('2')) {

  Progress("workload 2: vecwal batches");
  double ours2 = MedianOf(c.repeat, [&] { return Workload2(c, DurableWriteMode::kDsyncWrite); });
  Progress("workload 2: raw io_uring loop");
  double raw2 = MedianOf(c.repeat, [&] {
    Scratch s(c.dir);
    return RawDurableWriteBytesPerSec(s.path(), c.max_write_kib << 10, c.inflight, c.seconds);
  });
  std::string raw_name = fmt::format("raw io_uring {}K x QD{} O_DSYNC", c.max_write_kib, c.inflight);
  rows.push_back({w2, "bytes/s", ours2, raw_name, raw2, true, ">= 0.8x"});
  if (c.fio) {
    Progress("workload 2: fio");
    std::vector<double> v;
    for (int i = 0; i < c.repeat; ++i) {
      Scratch s(c.dir);
      if (auto r = FioBytesPerSec(s.path(), c.max_write_kib << 10, c.inflight, c.seconds)) v.push_back(*r);
    }
    if (!v.empty())
      rows.push_back({w2, "bytes/s", ours2, fmt::format("fio {}K x QD{} O_DSYNC", c.max_write_kib, c.inflight),
                      Median(v), true, ">= 0.8x"});
  }
  Progress("workload 2: naive log");
  double naive2 = MedianOf(c.repeat, [&] {
    Scratch s(c.dir);
    return NaiveLogBatchBytesPerSec(s.path(), rec_bytes, c.batch, c.seconds);
  });
  rows.push_back({w2, "bytes/s", ours2, "naive pwrite+fdatasync per batch", naive2, true, ""});
  }
  if (!want('3')) return rows;

  Progress("workload 3: vecwal latency");
  std::vector<Latency> ours3, raw3;
  for (int i = 0; i < c.repeat; ++i) ours3.push_back(Workload3(c));
  Progress("workload 3: raw 4 KiB write + fdatasync");
  for (int i = 0; i < c.repeat; ++i) {
    Scratch s(c.dir);
    raw3.push_back(RawWriteFdatasyncLatency(s.path(), c.seconds));
  }
  auto med = [](const std::vector<Latency>& v, double Latency::*f) {
    std::vector<double> x;
    for (const auto& l : v) x.push_back(l.*f);
    return Median(x);
  };
  const std::string rawl = "raw 4K pwrite+fdatasync";
  rows.push_back({w3, "p50 us", med(ours3, &Latency::p50_us), rawl, med(raw3, &Latency::p50_us), false, ">= 0.77x (p50 within 1.3x)"});
  rows.push_back({w3, "p99 us", med(ours3, &Latency::p99_us), rawl, med(raw3, &Latency::p99_us), false, ""});
  rows.push_back({w3, "p999 us", med(ours3, &Latency::p999_us), rawl, med(raw3, &Latency::p999_us), false, ""});
  return rows;
}

}  // namespace vecwal::bench
