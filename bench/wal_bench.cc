#include "bench/wal_bench.h"

#include <stdlib.h>

#include <atomic>
#include <filesystem>
#include <semaphore>
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
  o.seal_interval_ms = c.seal_ms;
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

// One writer. With depth 1 it appends each batch and waits for it; with depth
// k it keeps k batches outstanding through AppendManyAsync, as an ingest
// thread that wants the device's bandwidth would, so the device never drains
// between batches.
double Workload2(const WalBenchConfig& c, DurableWriteMode mode, int depth) {
  Scratch s(c.dir);
  auto log = OpenLog(s.path(), c, mode);
  std::vector<std::vector<std::byte>> recs;
  std::vector<wal::RecordView> views;
  for (size_t i = 0; i < c.batch; ++i) recs.push_back(UpsertRecord(i, c.dim));
  for (auto& r : recs) views.push_back({wal::RecordType::kUpsert, r});
  Releaser rel(*log);
  uint64_t before = log->stats().writer.bytes_written;
  auto t0 = Clock::now();
  if (depth <= 1) {
    RunFor(1, c.seconds, [&](int) -> uint64_t { return log->AppendMany(views).ok() ? 1 : 0; });
  } else {
    std::counting_semaphore<64> slots(depth);
    std::atomic<bool> failed{false};
    const auto until = t0 + std::chrono::duration<double>(c.seconds);
    while (Clock::now() < until && !failed) {
      slots.acquire();
      log->AppendManyAsync(views, [&](const Status& st, uint64_t) {
        if (!st.ok()) failed = true;
        slots.release();
      });
    }
    for (int i = 0; i < depth; ++i) slots.acquire();  // the last batches are durable
    if (failed) throw std::runtime_error("workload 2: " + log->status().ToString());
  }
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
  const std::string w2 = fmt::format("2. 1 writer, batches of {}, {} in flight", c.batch, c.batches_in_flight);
  const std::string w2b = fmt::format("2. 1 writer, batches of {}, blocking", c.batch);
  const std::string w3 = "3. 1 writer, append latency";

  auto want = [&](char w) { return c.only.find(w) != std::string::npos; };
  if (want('1')) {
  // Rounds alternate ours and each baseline, as for workload 2 below.
  std::vector<double> ours1v, fsyncv, rocksv, naivev;
  for (int i = 0; i < c.repeat; ++i) {
    Progress(fmt::format("workload 1, round {}/{}: vecwal (RWF_DSYNC, write+fdatasync), {}naive log", i + 1, c.repeat,
                         c.rocksdb ? "RocksDB sync puts, " : ""));
    ours1v.push_back(Workload1(c, DurableWriteMode::kDsyncWrite));
    fsyncv.push_back(Workload1(c, DurableWriteMode::kWriteThenFdatasync));
    if (c.rocksdb) {
      Scratch s(c.dir);
      if (auto r = RocksDbSyncPutsPerSec(s.path(), c.threads, rec_bytes, c.seconds)) rocksv.push_back(*r);
    }
    Scratch s(c.dir);
    naivev.push_back(NaiveLogRecordsPerSec(s.path(), c.threads, rec_bytes, c.seconds));
  }
  const double ours1 = Median(ours1v), ours1_fsync = Median(fsyncv), naive1 = Median(naivev);
  std::optional<double> rocks;
  if (!rocksv.empty()) rocks = Median(rocksv);
  rows.push_back({w1, "records/s", ours1, "RocksDB WAL, sync=true", rocks.value_or(0), true, ">= 9x"});
  rows.push_back({w1, "records/s", ours1, "naive pwrite+fdatasync", naive1, true, ""});
  rows.push_back({w1, "records/s", ours1, "vecwal, write+fdatasync mode", ours1_fsync, true, "(mode choice)"});
  }
  if (want('2')) {

  // Rounds alternate ours and the raw device, so that the drift of a shared
  // virtual disk (its bandwidth moves by 1.5x within minutes here) falls on
  // both sides of each ratio alike.
  std::vector<double> ours2v, blockingv, raw2v, fiov;
  for (int i = 0; i < c.repeat; ++i) {
    Progress(fmt::format("workload 2, round {}/{}: vecwal batches, raw io_uring loop{}", i + 1, c.repeat,
                         c.fio ? ", fio" : ""));
    ours2v.push_back(Workload2(c, DurableWriteMode::kDsyncWrite, c.batches_in_flight));
    if (c.batches_in_flight > 1) blockingv.push_back(Workload2(c, DurableWriteMode::kDsyncWrite, 1));
    {
      Scratch s(c.dir);
      raw2v.push_back(RawDurableWriteBytesPerSec(s.path(), c.max_write_kib << 10, c.inflight, c.seconds));
    }
    if (c.fio) {
      Scratch s(c.dir);
      if (auto r = FioBytesPerSec(s.path(), c.max_write_kib << 10, c.inflight, c.seconds)) fiov.push_back(*r);
    }
  }
  const double ours2 = Median(ours2v), raw2 = Median(raw2v);
  std::string raw_name = fmt::format("raw io_uring {}K x QD{} O_DSYNC", c.max_write_kib, c.inflight);
  rows.push_back({w2, "bytes/s", ours2, raw_name, raw2, true, ">= 0.8x"});
  if (!blockingv.empty()) rows.push_back({w2b, "bytes/s", Median(blockingv), raw_name, raw2, true, ""});
  if (!fiov.empty())
    rows.push_back({w2, "bytes/s", ours2, fmt::format("fio {}K x QD{} O_DSYNC", c.max_write_kib, c.inflight),
                    Median(fiov), true, ">= 0.8x"});
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
