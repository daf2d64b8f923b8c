#include "tools/recovery_measure.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <stdexcept>
#include <thread>

#include <faiss/index_factory.h>
#include <fmt/core.h>

#include "tools/crash_workload.h"
#include "tools/progress.h"
#include "wal/log_reader.h"
#include "wal/record_ops.h"

namespace vecwal::tools {
namespace {

namespace stdfs = std::filesystem;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

// Marks the writer's report that the base checkpoint is durable.
constexpr uint64_t kBaseDone = 1ull << 63;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

index::Metric ParseMetric(const std::string& m) {
  if (m == "l2") return index::Metric::kL2;
  if (m == "ip") return index::Metric::kInnerProduct;
  throw std::runtime_error("unknown metric '" + m + "' (l2, ip)");
}

recovery::DurableIndexOptions StoreOptions(const MeasureConfig& c, const std::string& store) {
  recovery::DurableIndexOptions o;
  o.dir = store;
  o.spec = {static_cast<uint32_t>(c.dim), ParseMetric(c.metric), c.index};
  o.checkpoint_every_log_bytes = static_cast<uint64_t>(c.checkpoint_mib * (1 << 20));
  auto mode = wal::ParseRecoveryMode(c.mode);
  if (!mode.ok()) throw std::runtime_error(mode.status().ToString());
  o.recovery_mode = *mode;
  return o;
}

bool NeedsTraining(const MeasureConfig& c) {
  std::unique_ptr<faiss::Index> probe(faiss::index_factory(static_cast<int>(c.dim), c.index.c_str(),
                                                           c.metric == "ip" ? faiss::METRIC_INNER_PRODUCT
                                                                            : faiss::METRIC_L2));
  return !probe->is_trained;
}

// Encodings that do not give back the exact vector (product or scalar
// quantizers); ids and payloads are still checked exactly.
bool ExactVectors(const std::string& description) {
  return description.find("PQ") == std::string::npos && description.find("SQ") == std::string::npos &&
         description.find("LSH") == std::string::npos && description.find("RaBitQ") == std::string::npos;
}

void Send(int fd, uint64_t v) {
  if (::write(fd, &v, sizeof v) != sizeof v) ::_exit(5);
}

[[noreturn]] void Die(const std::string& what, const Status& s) {
  fmt::print(stderr, "vecwal-recovery writer: {}: {}\n", what, s.ToString());
  ::_exit(4);
}

// The writer process: runs until it is killed.
[[noreturn]] void RunWriter(const MeasureConfig& c, const std::string& store, int out) {
  auto opened = recovery::DurableIndex::Open(StoreOptions(c, store));
  if (!opened.ok()) Die("open " + store, opened.status());
  auto& d = **opened;
  CrashModel m(c.vectors, c.dim);
  if (NeedsTraining(c)) {
    const uint64_t n = std::min<uint64_t>(c.vectors, 65536);
    std::vector<float> sample(n * c.dim);
    for (uint64_t s = 0; s < n; ++s) m.VectorFor(s, std::span(sample).subspan(s * c.dim, c.dim));
    if (Status s = d.Train(sample); !s.ok()) Die("train", s);
  }
  auto write_batch = [&](uint64_t n) {
    recovery::WriteBatch b;
    NextBatch(m, n, b);
    if (Status s = d.Apply(b); !s.ok()) Die("write", s);
  };
  while (m.ops() < c.vectors) {
    write_batch(std::min(c.batch, c.vectors - m.ops()));
    Send(out, m.ops());
  }
  if (auto ck = d.Checkpoint(); !ck.ok()) Die("checkpoint", ck.status());
  Send(out, kBaseDone | m.ops());
  for (;;) {
    write_batch(c.batch);
    Send(out, m.ops());
  }
}

void DropFromPageCache(const std::string& dir) {
  for (const auto& e : stdfs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    int fd = ::open(e.path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

uint64_t DirBytes(const std::string& dir) {
  uint64_t n = 0;
  for (const auto& e : stdfs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) n += e.file_size();
  return n;
}

// Flips one byte inside the log record that holds the last acknowledged
// batch: a lost acknowledged record, planted to prove the check fails.
json PlantLostRecord(const std::string& store, uint64_t acked_ops, uint64_t batch) {
  auto fsys = NewPosixFileSystem();
  auto ckpts = recovery::ListCheckpoints(*fsys, store);
  const uint64_t ckpt_lsn = ckpts.ok() && !ckpts->empty() ? ckpts->front() : 0;
  const uint64_t lo = acked_ops > batch ? acked_ops - batch : 0;
  std::optional<wal::LogRecord> found;
  auto scan = wal::ScanLog(*fsys, store + "/wal", 0, wal::RecoveryMode::kSalvage, [&](const wal::LogRecord& r) {
    if (r.type != wal::RecordType::kBatch) return Status::OK();
    auto op = wal::DecodeOp(r.type, r.payload, r.lsn);
    if (!op.ok()) return Status::OK();
    for (const auto& sub : std::get<wal::BatchOp>(*op).ops) {
      const auto* u = std::get_if<wal::UpsertOp>(&sub);
      uint64_t s = 0;
      if (!u || u->payload.size() != sizeof s) continue;
      std::memcpy(&s, u->payload.data(), sizeof s);
      if (s >= lo && s < acked_ops) found = wal::LogRecord{r.lsn, r.type, {}, r.segment_id, r.offset};
    }
    return Status::OK();
  });
  if (!scan.ok()) throw std::runtime_error("cannot plant a lost record: " + scan.status().ToString());
  if (!found) throw std::runtime_error(fmt::format("cannot plant a lost record: no record holds ops {}..{}", lo,
                                                   acked_ops - 1));
  if (found->lsn <= ckpt_lsn)
    throw std::runtime_error(fmt::format("cannot plant a lost record: LSN {} is inside the checkpoint at LSN {} "
                                         "(use --checkpoint-mib 0)",
                                         found->lsn, ckpt_lsn));
  const std::string path = store + "/wal/" + wal::SegmentFileName(found->segment_id);
  const uint64_t at = found->offset + wal::kRecordHeaderSize + 3;
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  unsigned char b = 0;
  if (fd < 0 || ::pread(fd, &b, 1, static_cast<off_t>(at)) != 1) throw std::runtime_error("cannot read " + path);
  b ^= 0x40;
  if (::pwrite(fd, &b, 1, static_cast<off_t>(at)) != 1 || ::fdatasync(fd) != 0)
    throw std::runtime_error("cannot write " + path);
  ::close(fd);
  return {{"file", path}, {"offset", found->offset}, {"lsn", found->lsn}};
}

// The restart, in a fresh process so that its memory and timings are its own.
[[noreturn]] void RunRecovery(const MeasureConfig& c, const std::string& store, uint64_t acked, int out) {
  json j;
  auto o = StoreOptions(c, store);
  o.checkpoint_every_log_bytes = 0;  // a checkpoint here would be timed as recovery
  const auto t0 = Clock::now();
  auto opened = recovery::DurableIndex::Open(o);
  if (!opened.ok()) {
    j["open_error"] = opened.status().ToString();
  } else {
    auto& d = **opened;
    const double open_s = Since(t0);
    std::vector<float> q(c.dim);
    CrashModel(1, c.dim).VectorFor(0, q);
    auto hits = d.Search(q, 10);
    const double first_search_s = Since(t0);
    const auto& r = d.Stats().recovery;
    rusage ru;
    ::getrusage(RUSAGE_SELF, &ru);
    j["recovery"] = {{"checkpoint_lsn", r.checkpoint_lsn},
                     {"checkpoint_load_s", r.checkpoint_load_s},
                     {"log_read_s", r.log_read_s},
                     {"decode_s", r.decode_s},
                     {"apply_s", r.apply_s},
                     {"open_s", open_s},
                     {"first_search_s", first_search_s},
                     {"search_ok", hits.ok()},
                     {"records_replayed", r.records_replayed},
                     {"log_bytes_replayed", r.bytes_replayed},
                     {"log_bytes_read", r.log_bytes_read},
                     {"tail_note", r.tail_note},
                     {"checkpoint_note", r.checkpoint_note},
                     {"dropped_ranges", r.dropped.size()},
                     {"peak_rss_bytes", static_cast<uint64_t>(ru.ru_maxrss) * 1024},
                     {"vectors", d.Size()}};
    // Two batches may be durable beyond what the writer reported: one whose
    // report the kill cut off, one in flight.
    auto v = VerifyPrefix(d, c.vectors, c.dim, c.batch, acked, 2, ExactVectors(c.index));
    j["verify"] = {{"ok", v.ok}, {"acked_ops", v.acked_ops}, {"recovered_ops", v.recovered_ops},
                   {"problem", v.problem}};
    (void)d.Close();
    opened->release();  // leave freeing to exit: not part of a restart
  }
  std::string s = j.dump();
  size_t done = 0;
  while (done < s.size()) {
    ssize_t n = ::write(out, s.data() + done, s.size() - done);
    if (n <= 0) ::_exit(5);
    done += static_cast<size_t>(n);
  }
  ::_exit(0);
}

std::string ReadAll(int fd) {
  std::string s;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) s.append(buf, static_cast<size_t>(n));
  return s;
}

std::string ExitDescription(int st) {
  if (WIFSIGNALED(st)) return fmt::format("killed by signal {}", WTERMSIG(st));
  return fmt::format("exit status {}", WEXITSTATUS(st));
}

}  // namespace

std::string ResolveDevice(const std::string& requested) {
  if (requested == "cpu" || requested == "auto") return "cpu";
  if (requested == "gpu")
    throw std::runtime_error("--device gpu: this build's durable index has no GPU backend yet; use cpu or auto");
  throw std::runtime_error("unknown device '" + requested + "' (cpu, gpu, auto)");
}

MeasureResult MeasureOnce(const MeasureConfig& c) {
  if (c.vectors == 0 || c.dim == 0 || c.batch == 0) throw std::runtime_error("--vectors, --dim, --batch must be > 0");
  const std::string device = ResolveDevice(c.device);
  (void)StoreOptions(c, "");  // rejects a bad metric or mode before any work
  const std::string store = c.dir + "/store";
  stdfs::remove_all(store);
  stdfs::create_directories(c.dir);

  // Where to kill, in acknowledged ops.
  const double per_op = static_cast<double>(4 * c.dim + 40);
  const uint64_t after_base = static_cast<uint64_t>(c.wal_mib * (1 << 20) / per_op);
  std::mt19937_64 rng(c.seed);
  uint64_t target = c.kill_at ? *c.kill_at
                   : c.random_kill ? c.vectors + std::uniform_int_distribution<uint64_t>(0, after_base)(rng)
                                   : c.vectors + after_base;

  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
  const auto t0 = Clock::now();
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork");
  if (pid == 0) {
    ::close(fds[0]);
    RunWriter(c, store, fds[1]);
  }
  ::close(fds[1]);
  uint64_t acked = 0;
  bool base_done = false, killed = false;
  {
    Progress progress("writer", target, "ops acknowledged");
    uint64_t v;
    while (::read(fds[0], &v, sizeof v) == sizeof v) {
      base_done |= (v & kBaseDone) != 0;
      acked = v & ~kBaseDone;
      progress.Update(acked);
      if (acked >= target && (base_done || c.kill_at)) {
        if (c.random_kill) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 2000));
        ::kill(pid, SIGKILL);
        killed = true;
        break;
      }
    }
  }
  // Reports written before the kill are still in the pipe.
  uint64_t v;
  while (::read(fds[0], &v, sizeof v) == sizeof v) acked = std::max(acked, v & ~kBaseDone);
  ::close(fds[0]);
  int st = 0;
  ::waitpid(pid, &st, 0);
  if (!killed) throw std::runtime_error("the writer process ended before the kill: " + ExitDescription(st));
  const double write_s = Since(t0);

  json report;
  report["config"] = {{"vectors", c.vectors}, {"dim", c.dim},       {"index", c.index},
                      {"metric", c.metric},   {"batch", c.batch},   {"wal_mib", c.wal_mib},
                      {"checkpoint_mib", c.checkpoint_mib},         {"mode", c.mode},
                      {"device", device},     {"seed", c.seed},     {"kill_target_ops", target}};
  report["writer"] = {{"acked_ops", acked}, {"seconds", write_s}, {"killed_by", "SIGKILL"}};
  report["store"] = {{"dir", store}, {"wal_bytes", DirBytes(store + "/wal")}, {"total_bytes", DirBytes(store)}};
  {
    auto fsys = NewPosixFileSystem();
    auto ck = recovery::ListCheckpoints(*fsys, store);
    if (ck.ok() && !ck->empty())
      report["store"]["checkpoint_bytes"] = stdfs::file_size(store + "/" + recovery::CheckpointFileName(ck->front()));
  }
  if (c.plant_lost_record) report["planted_damage"] = PlantLostRecord(store, acked, c.batch);
  DropFromPageCache(store);

  if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
  pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork");
  if (pid == 0) {
    ::close(fds[0]);
    RunRecovery(c, store, acked, fds[1]);
  }
  ::close(fds[1]);
  std::string out = ReadAll(fds[0]);
  ::close(fds[0]);
  ::waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || out.empty())
    throw std::runtime_error("the recovery process failed: " + ExitDescription(st));
  json rec = json::parse(out);
  MeasureResult res;
  if (rec.contains("open_error")) {
    res.problem = "recovery refused to open the store: " + rec["open_error"].get<std::string>();
    report["verify"] = {{"ok", false}, {"acked_ops", acked}, {"problem", res.problem}};
  } else {
    report["recovery"] = rec["recovery"];
    report["verify"] = rec["verify"];
    res.ok = rec["verify"]["ok"].get<bool>();
    res.problem = rec["verify"]["problem"].get<std::string>();
  }
  res.report = std::move(report);
  return res;
}

}  // namespace vecwal::tools
