#include "bench/recovery_bench.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <numeric>
#include <random>
#include <span>
#include <thread>

#include <faiss/index_factory.h>
#include <faiss/index_io.h>
#include <fmt/core.h>

#include "bench/baselines.h"
#include "bench/scratch.h"
#include "io/aligned_buffer.h"
#include "recovery/checkpoint_file.h"
#include "recovery/durable_index.h"
#include "recovery/reindex.h"

namespace vecwal::bench {
namespace {

namespace fs = std::filesystem;

recovery::DurableIndexOptions StoreOptions(const StoreBenchConfig& c, const std::string& dir) {
  recovery::DurableIndexOptions o;
  o.dir = dir;
  o.spec = {static_cast<uint32_t>(c.dim), index::Metric::kL2, c.description};
  o.checkpoint_every_log_bytes = 0;
  return o;
}

std::unique_ptr<recovery::DurableIndex> OpenStore(const recovery::DurableIndexOptions& o) {
  auto d = recovery::DurableIndex::Open(o);
  if (!d.ok()) throw std::runtime_error(d.status().ToString());
  return std::move(d).value();
}

// The vectors Build stores, id 0 first, one call each.
struct BuildVectors {
  void Next(std::span<float> v) {
    for (auto& x : v) x = u(rng);
  }
  std::mt19937_64 rng{1};
  std::uniform_real_distribution<float> u{-1, 1};
};

// Fills a store with `vectors` upserts in batches of 1024, through the log.
void Build(const StoreBenchConfig& c, const std::string& dir) {
  auto d = OpenStore(StoreOptions(c, dir));
  BuildVectors gen;
  std::vector<float> v(c.dim);
  for (size_t base = 0; base < c.vectors; base += 1024) {
    recovery::WriteBatch b;
    for (size_t i = base; i < std::min(c.vectors, base + 1024); ++i) {
      gen.Next(v);
      b.Upsert(i, v);
    }
    Status s = d->Apply(b);
    if (!s.ok()) throw std::runtime_error(s.ToString());
  }
}

uint64_t DirBytes(const std::string& dir) {
  uint64_t n = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) n += e.file_size();
  return n;
}

// Sequential O_DIRECT reads of one file, 8 MiB at a time.
double RawReadFileSeconds(const std::string& path) {
  AlignedBuffer buf(8 << 20, 4096);
  auto t0 = Clock::now();
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("open " + path);
  while (::read(fd, buf.data(), buf.size()) > 0) {
  }
  ::close(fd);
  return Seconds(Clock::now() - t0);
}

// The same, for every file in `dir`.
double RawReadSeconds(const std::string& dir) {
  double s = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) s += RawReadFileSeconds(e.path());
  return s;
}

// Sequential O_DIRECT writes of `bytes` into `path`, 4 MiB at a time, then
// fdatasync.
double RawWriteFileSeconds(const std::string& path, uint64_t bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("open " + path);
  AlignedBuffer buf(4 << 20, 4096);
  FillWithBytes(buf);
  auto t0 = Clock::now();
  for (uint64_t done = 0; done < bytes; done += buf.size())
    if (::write(fd, buf.data(), buf.size()) < 0) throw std::runtime_error("write " + path);
  ::fdatasync(fd);
  double s = Seconds(Clock::now() - t0);
  ::close(fd);
  return s;
}

// A copy of one file into `to`: sequential O_DIRECT reads and writes, 8 MiB
// at a time, then fdatasync; what `cp` does with the page cache left out.
double RawCopyFileSeconds(const std::string& from, const std::string& to) {
  AlignedBuffer buf(8 << 20, 4096);
  auto t0 = Clock::now();
  int in = ::open(from.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT | O_CLOEXEC, 0644);
  if (in < 0 || out < 0) throw std::runtime_error("open " + from + " or " + to);
  for (ssize_t n; (n = ::read(in, buf.data(), buf.size())) > 0;)
    if (::write(out, buf.data(), static_cast<size_t>(n)) != n) throw std::runtime_error("write " + to);
  ::fdatasync(out);
  double s = Seconds(Clock::now() - t0);
  ::close(in);
  ::close(out);
  return s;
}

double RawWriteSeconds(const std::string& dir, uint64_t bytes) {
  const std::string path = dir + "/raw-write.dat";
  double s = RawWriteFileSeconds(path, bytes);
  ::unlink(path.c_str());
  return s;
}

// Runs `f` in a child process; returns its seconds and peak resident bytes.
std::pair<double, uint64_t> InChild(const std::function<void()>& f) {
  int fds[2];
  if (::pipe(fds) != 0) throw std::runtime_error("pipe");
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    auto t0 = Clock::now();
    f();
    double s = Seconds(Clock::now() - t0);
    rusage ru;
    ::getrusage(RUSAGE_SELF, &ru);
    double out[2] = {s, static_cast<double>(ru.ru_maxrss) * 1024};
    if (::write(fds[1], out, sizeof(out)) != sizeof(out)) ::_exit(1);
    ::_exit(0);
  }
  ::close(fds[1]);
  double in[2] = {0, 0};
  ssize_t n = ::read(fds[0], in, sizeof(in));
  ::close(fds[0]);
  int st = 0;
  ::waitpid(pid, &st, 0);
  if (n != sizeof(in) || !WIFEXITED(st) || WEXITSTATUS(st) != 0) throw std::runtime_error("benchmark child failed");
  return {in[0], static_cast<uint64_t>(in[1])};
}

}  // namespace

std::vector<Row> RunRecoveryBench(const StoreBenchConfig& c) {
  Scratch s(c.dir);
  const std::string store = s.path() + "/db";
  fmt::print(stderr, "  building a store of {} x {}-d vectors ({}) through the log ...\n", c.vectors, c.dim,
             c.description);
  Build(c, store);
  const uint64_t log_bytes = DirBytes(store + "/wal");
  const uint64_t index_bytes = static_cast<uint64_t>(c.vectors) * c.dim * sizeof(float);
  std::vector<double> ours, raw, rss;
  // This VM's disk serves a file read a second time in a row from the host's
  // cache (a raw read right after replay ran ~2.5x faster than before it), so
  // the two readers take turns going first, round by round.
  auto raw_read = [&] {
    fmt::print(stderr, "  measuring raw O_DIRECT read of the same files ...\n");
    raw.push_back(log_bytes / RawReadSeconds(store + "/wal"));
  };
  for (int i = 0; i < c.repeat; ++i) {
    if (i % 2 == 1) raw_read();
    fmt::print(stderr, "  measuring full log replay ({:.0f} MB) ...\n", log_bytes / 1e6);
    auto [sec, peak] = InChild([&] {
      auto d = OpenStore(StoreOptions(c, store));
      if (d->Size() != c.vectors) ::_exit(3);
      const auto& r = d->Stats().recovery;
      fmt::print(stderr,
                 "    phases: checkpoint load {:.3f} s, log read+verify {:.3f} s, decode {:.3f} s, apply {:.3f} s "
                 "(index busy {:.3f} s, overlapping the read)\n",
                 r.checkpoint_load_s, r.log_read_s, r.decode_s, r.apply_s, r.apply_busy_s);
      (void)d->Close();
      d.release();  // skip freeing in the child: only the replay is timed
    });
    ours.push_back(log_bytes / sec);
    rss.push_back(static_cast<double>(peak));
    if (i % 2 == 0) raw_read();
    fmt::print(stderr, "    round {}: replay {:.2f} GB/s, raw read {:.2f} GB/s\n", i + 1, ours.back() / 1e9,
               raw.back() / 1e9);
  }
  const std::string w = fmt::format("full replay, {}k x {}-d {}", c.vectors / 1000, c.dim, c.description);
  return {{w, "bytes/s", Median(ours), "raw sequential O_DIRECT read", Median(raw), true, ">= 0.8x"},
          {w, "peak RSS", Median(rss), "final index bytes (n x d x 4)", static_cast<double>(index_bytes), false,
           "<= 1.2x (ratio >= 0.83)"}};
}

std::vector<Row> RunCheckpointBench(const StoreBenchConfig& c) {
  Scratch s(c.dir);
  const std::string store = s.path() + "/db";
  fmt::print(stderr, "  building a store of {} x {}-d vectors ({}) ...\n", c.vectors, c.dim, c.description);
  Build(c, store);
  std::vector<Row> rows;
  const std::string w = fmt::format("checkpoint, {}k x {}-d {}", c.vectors / 1000, c.dim, c.description);
  std::vector<double> write_ours, write_raw, load_ours, load_faiss, load_raw, idle_p99, ckpt_p99, backup_ours,
      backup_raw;
  uint64_t ckpt_bytes = 0;
  uint64_t next = c.vectors;
  std::vector<float> v(c.dim, 0.5f);
  for (int i = 0; i < c.repeat; ++i) {
    auto d = OpenStore(StoreOptions(c, store));
    fmt::print(stderr, "  measuring checkpoint write ...\n");
    // One new op, or the checkpoint would be the one just loaded, which
    // Checkpoint() does not write again.
    if (Status st = d->Upsert(next++, v); !st.ok()) throw std::runtime_error(st.ToString());
    auto t0 = Clock::now();
    auto lsn = d->Checkpoint();
    if (!lsn.ok()) throw std::runtime_error(lsn.status().ToString());
    double ws = Seconds(Clock::now() - t0);
    std::string path = store + "/" + recovery::CheckpointFileName(*lsn);
    ckpt_bytes = fs::file_size(path);
    write_ours.push_back(ckpt_bytes / ws);
    write_raw.push_back(ckpt_bytes / RawWriteSeconds(s.path(), ckpt_bytes));
    fmt::print(stderr, "    {} write: {:.2f} GB/s ({:.2f} s), raw write {:.2f} GB/s\n",
               i == 0 ? "first (after a full replay)" : "checkpoint", write_ours.back() / 1e9, ws,
               write_raw.back() / 1e9);

    // A backup of the store at rest: the checkpoint just written is copied
    // and read back; beside it, a plain copy of the same file.
    {
      const std::string to = s.path() + "/backup";
      t0 = Clock::now();
      auto b = d->Backup(to);
      if (!b.ok()) throw std::runtime_error(b.status().ToString());
      backup_ours.push_back(static_cast<double>(b->bytes) / Seconds(Clock::now() - t0));
      fs::remove_all(to);
      backup_raw.push_back(static_cast<double>(ckpt_bytes) / RawCopyFileSeconds(path, s.path() + "/raw-copy.dat"));
      fs::remove(s.path() + "/raw-copy.dat");
      fmt::print(stderr, "    backup: {:.2f} GB/s (copied and read back), raw copy {:.2f} GB/s\n",
                 backup_ours.back() / 1e9, backup_raw.back() / 1e9);
    }

    std::mt19937_64 rng(i);
    // Rewrites take vectors from a pool of random ones: a graph index of
    // thousands of equal vectors is not what a store holds.
    std::vector<float> pool(64 * c.dim);
    std::normal_distribution<float> g;
    for (float& x : pool) x = g(rng);
    auto pooled = [&] { return std::span<const float>(pool).subspan((rng() % 64) * c.dim, c.dim); };
    if (c.rewrite_share > 0) {
      const auto rewrites = static_cast<size_t>(c.rewrite_share * static_cast<double>(c.vectors));
      fmt::print(stderr, "  rewriting {} ids ...\n", rewrites);
      for (size_t done = 0; done < rewrites;) {
        recovery::WriteBatch b;
        for (; b.size() < 1024 && done < rewrites; ++done) b.Upsert(rng() % c.vectors, pooled());
        if (Status st = d->Apply(b); !st.ok()) throw std::runtime_error(st.ToString());
      }
      // The idle figure is the store's at rest: the applier thread merges the
      // rewrites' backlog first (into HNSW at its add rate, seconds), which an
      // idle window right after them measured beside.
      const size_t merge_at = StoreOptions(c, store).recent_writes_merge_at;
      const auto t = Clock::now();
      while (d->Stats().recent_writes >= merge_at && Seconds(Clock::now() - t) < 300)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      fmt::print(stderr, "    their merge into the index ended {:.1f} s after them\n", Seconds(Clock::now() - t));
    }
    auto append = [&] {
      return c.rewrite_share > 0 ? d->Upsert(rng() % c.vectors, pooled()).ok() : d->Upsert(next++, v).ok();
    };
    fmt::print(stderr, "  measuring append p99, idle and during a checkpoint ...\n");
    idle_p99.push_back(MeasureLatency(1.0, append).p99_us);
    std::atomic<bool> stop{false};
    std::atomic<int> checkpoints{0};
    std::thread ck([&] {
      while (!stop) {
        (void)d->Checkpoint();
        ++checkpoints;
      }
    });
    // At least 2 s, and until a checkpoint has ended: one that rebuilds an
    // HNSW index takes as long as building it did.
    const auto t1 = Clock::now();
    ckpt_p99.push_back(
        MeasureLatencyWhile([&] { return Seconds(Clock::now() - t1) < 2.0 || checkpoints == 0; }, append).p99_us);
    stop = true;
    ck.join();
    const auto st = d->Stats();
    fmt::print(stderr, "    append p99: idle {:.0f} us, during {} checkpoints ({:.1f} s) {:.0f} us; {} rebuilds, {} tombstones\n",
               idle_p99.back(), checkpoints.load(), Seconds(Clock::now() - t1), ckpt_p99.back(), st.compactions,
               st.tombstones);
    lsn = d->Checkpoint();  // the one to load: earlier generations are gone
    if (!lsn.ok()) throw std::runtime_error(lsn.status().ToString());
    path = store + "/" + recovery::CheckpointFileName(*lsn);
    (void)d->Close();
    d.reset();  // its index is freed before the loads

    // Three files of one size, written one after the other: the checkpoint,
    // the same index written by FAISS itself, and raw bytes. Each is read once,
    // in a fresh process as a restart is, and the order turns from run to run:
    // this disk serves a second read of the same bytes from the host's cache.
    fmt::print(stderr, "  measuring checkpoint load vs faiss::read_index and a raw read ...\n");
    const std::string fpath = s.path() + "/faiss.index";
    {
      // The same index as the checkpoint's: Build's vectors under Build's ids
      // in an id map, as the store holds them. (A file of one repeated value
      // read back up to 1.7x faster here than one of these vectors: the
      // virtual disk does not serve every byte pattern alike.)
      std::unique_ptr<faiss::Index> fi(
          faiss::index_factory(static_cast<int>(c.dim), ("IDMap2," + c.description).c_str(), faiss::METRIC_L2));
      BuildVectors gen;
      std::vector<float> x;
      std::vector<faiss::Index::idx_t> ids;
      for (size_t base = 0; base < c.vectors; base += 1024) {
        ids.clear();
        for (size_t id = base; id < std::min(c.vectors, base + 1024); ++id) ids.push_back(static_cast<faiss::Index::idx_t>(id));
        x.resize(ids.size() * c.dim);
        for (size_t r = 0; r < ids.size(); ++r) gen.Next(std::span(x).subspan(r * c.dim, c.dim));
        fi->add_with_ids(static_cast<faiss::Index::idx_t>(ids.size()), x.data(), ids.data());
      }
      faiss::write_index(fi.get(), fpath.c_str());
    }
    int fd = ::open(fpath.c_str(), O_RDONLY);
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);  // a cold cache, as a restart's
    ::close(fd);
    const std::string rpath = s.path() + "/raw-read.dat";
    (void)RawWriteFileSeconds(rpath, ckpt_bytes);
    // The loaded indices are left to the child's exit: freeing 3 GB is no part of a load.
    const std::function<void()> loads[3] = {
        [&] {
          auto fsys = NewPosixFileSystem();
          auto loaded = recovery::LoadCheckpoint(*fsys, path);
          if (!loaded.ok()) ::_exit(2);
          (void)new recovery::LoadedCheckpoint(std::move(loaded).value());
        },
        [&] { (void)faiss::read_index(fpath.c_str()); },
        [&] { (void)RawReadFileSeconds(rpath); }};
    std::vector<double>* into[3] = {&load_ours, &load_faiss, &load_raw};
    for (int k = 0; k < 3; ++k) {
      const int which = (i + k) % 3;
      into[which]->push_back(InChild(loads[which]).first);
    }
    fmt::print(stderr, "    load: ours {:.2f} s, read_index {:.2f} s, raw read {:.2f} s\n", load_ours.back(),
               load_faiss.back(), load_raw.back());
    fs::remove(fpath);
    fs::remove(rpath);
  }
  rows.push_back({w, "write B/s", Median(write_ours), "raw sequential O_DIRECT write", Median(write_raw), true, ">= 0.8x"});
  rows.push_back({w, "load s", Median(load_ours), "faiss::read_index, cold cache", Median(load_faiss), false, ">= 2x"});
  rows.push_back({w, "load s", Median(load_ours), "raw sequential O_DIRECT read, same size", Median(load_raw), false,
                  ">= 0.8x"});
  rows.push_back({w, "append p99 us", Median(ckpt_p99), "append p99 when idle", Median(idle_p99), false,
                  "within 3x (ratio >= 0.33)"});
  rows.push_back({w, "backup B/s", Median(backup_ours), "raw O_DIRECT copy of the checkpoint file", Median(backup_raw),
                  true, ""});
  return rows;
}

std::vector<Row> RunReindexBench(const StoreBenchConfig& c, const ReindexBenchConfig& rc) {
  Scratch s(c.dir);
  StoreBenchConfig flat = c;
  flat.description = "Flat";
  const std::string store = s.path() + "/db", to = s.path() + "/reindexed";
  fmt::print(stderr, "  building a store of {} x {}-d vectors (Flat) ...\n", c.vectors, c.dim);
  Build(flat, store);
  auto d = OpenStore(StoreOptions(flat, store));
  recovery::ReindexOptions how;
  how.train_sample = rc.train_sample;
  how.copy_first = rc.copy_first;
  how.threads = rc.threads;
  // The baseline: FAISS builds the same index from the same vectors in
  // memory, trained on as many of them: no log, no checkpoint, no fsync.
  std::vector<float> all(c.vectors * c.dim);
  BuildVectors gen;
  for (size_t i = 0; i < c.vectors; ++i) gen.Next(std::span(all).subspan(i * c.dim, c.dim));
  std::vector<faiss::Index::idx_t> ids(c.vectors);
  for (size_t i = 0; i < c.vectors; ++i) ids[i] = static_cast<faiss::Index::idx_t>(i);
  std::vector<double> ours, theirs, longest_ms, writes_per_s, scan_s;
  uint64_t next_id = c.vectors;  // the writers' ids: new to the store, round after round
  for (int i = 0; i < c.repeat; ++i) {
    fs::remove_all(to);
    fmt::print(stderr, "  reindexing into {}{} ...\n", c.description,
               rc.writers ? fmt::format(", {} writer(s) upserting beside it", rc.writers) : "");
    // A store in service: writers upsert beside the reindex, and their
    // longest wait is the stall the reindex cost them.
    std::atomic<bool> stop{false};
    std::vector<double> longest(rc.writers, 0);
    std::vector<uint64_t> written(rc.writers, 0);
    std::vector<std::string> write_error(rc.writers);
    std::vector<std::thread> writers;
    for (unsigned w = 0; w < rc.writers; ++w)
      writers.emplace_back([&, w, first = next_id + w * (uint64_t{1} << 32)] {
        BuildVectors wgen;
        wgen.rng.seed(first);
        std::vector<float> v(c.dim);
        for (uint64_t id = first; !stop.load(); ++id) {
          wgen.Next(v);
          const auto w0 = Clock::now();
          if (Status st = d->Upsert(id, v); !st.ok()) {
            write_error[w] = st.ToString();
            return;
          }
          longest[w] = std::max(longest[w], Seconds(Clock::now() - w0));
          ++written[w];
        }
      });
    auto t0 = Clock::now();
    auto rep = recovery::Reindex(*d, StoreOptions(c, to), how);
    const double took = Seconds(Clock::now() - t0);
    stop = true;
    for (auto& w : writers) w.join();
    if (!rep.ok()) throw std::runtime_error(rep.status().ToString());
    for (const auto& e : write_error)
      if (!e.empty()) throw std::runtime_error("a writer beside the reindex: " + e);
    next_id += uint64_t{rc.writers} << 32;
    ours.push_back(static_cast<double>(rep->entries) / took);
    scan_s.push_back(rep->scan_s);
    if (rc.writers > 0) {
      longest_ms.push_back(*std::max_element(longest.begin(), longest.end()) * 1e3);
      writes_per_s.push_back(static_cast<double>(std::accumulate(written.begin(), written.end(), uint64_t{0})) / took);
    }
    fmt::print(stderr, "  FAISS: train and add in memory ...\n");
    t0 = Clock::now();
    std::unique_ptr<faiss::Index> fi(
        faiss::index_factory(static_cast<int>(c.dim), ("IDMap2," + c.description).c_str(), faiss::METRIC_L2));
    if (!fi->is_trained)
      fi->train(static_cast<faiss::Index::idx_t>(std::min(rc.train_sample, c.vectors)), all.data());
    fi->add_with_ids(static_cast<faiss::Index::idx_t>(c.vectors), all.data(), ids.data());
    theirs.push_back(static_cast<double>(c.vectors) / Seconds(Clock::now() - t0));
    fmt::print(stderr,
               "    round {}: {:.0f} entries/s (scans {:.2f} s, checkpoint written and read back), FAISS in memory "
               "{:.0f}/s{}\n",
               i + 1, ours.back(), rep->scan_s, theirs.back(),
               rc.writers ? fmt::format("; writers: {:.0f} upserts/s, longest {:.1f} ms", writes_per_s.back(),
                                       longest_ms.back())
                         : "");
  }
  const std::string w = fmt::format("reindex Flat -> {}, {}k x {}-d{}{}", c.description, c.vectors / 1000, c.dim,
                                    rc.copy_first ? ", copy first" : "",
                                    rc.threads ? fmt::format(", {} thread(s)", rc.threads) : "");
  // How long the source's merges (and so, at their bound, its writers)
  // were held back: the scans.
  std::vector<Row> rows{{w, "entries/s", Median(ours), "FAISS train + add, in memory", Median(theirs), true, ""},
                        {w, "source scanned s", Median(scan_s), "", 0, false, ""}};
  if (rc.writers > 0) {
    const std::string beside = fmt::format("{}, {} writer(s) beside it", w, rc.writers);
    rows.push_back({beside, "longest upsert ms", Median(longest_ms), "", 0, false, ""});
    rows.push_back({beside, "upserts/s", Median(writes_per_s), "", 0, true, ""});
  }
  return rows;
}

}  // namespace vecwal::bench
