#include "tools/crash_process.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <stdexcept>
#include <thread>

#include <fmt/core.h>

#include "tools/crash_workload.h"
#include "wal/log_reader.h"

namespace vecwal::tools {
namespace {

namespace stdfs = std::filesystem;
using nlohmann::json;

index::Metric ParseMetric(const std::string& m) {
  if (m == "l2") return index::Metric::kL2;
  if (m == "ip") return index::Metric::kInnerProduct;
  throw std::runtime_error("unknown metric '" + m + "' (l2, ip)");
}

}  // namespace

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

namespace {

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

[[noreturn]] void RunWriter(const MeasureConfig& c, const std::string& store, uint64_t start_ops, bool search,
                            int out) {
  auto opened = recovery::DurableIndex::Open(StoreOptions(c, store));
  if (!opened.ok()) Die("open " + store, opened.status());
  auto& d = **opened;
  CrashModel m(c.vectors, c.dim);
  std::thread searcher;
  if (search)
    searcher = std::thread([&d, dim = c.dim] {
      std::vector<float> q(dim);
      for (uint64_t i = 0;; ++i) {
        CrashModel(1, dim).VectorFor(i, q);
        (void)d.Search(q, 10);
      }
    });
  if (start_ops > 0) {  // the store holds these already
    while (m.ops() < start_ops) m.Next();
    for (;;) {
      recovery::WriteBatch b;
      NextBatch(m, c.batch, b);
      if (Status s = d.Apply(b); !s.ok()) Die("write", s);
      Send(out, m.ops());
    }
  }
  if (d.NeedsTraining()) {
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

[[noreturn]] void RunRecovery(const MeasureConfig& c, const std::string& store, uint64_t acked, int out) {
  json j;
  auto o = StoreOptions(c, store);
  o.checkpoint_every_log_bytes = 0;  // a checkpoint here would be timed as recovery
  const auto t0 = std::chrono::steady_clock::now();
  auto opened = recovery::DurableIndex::Open(o);
  if (!opened.ok()) {
    j["open_error"] = opened.status().ToString();
  } else {
    auto& d = **opened;
    const double open_s = SecondsSince(t0);
    std::vector<float> q(c.dim);
    CrashModel(1, c.dim).VectorFor(0, q);
    auto hits = d.Search(q, 10);
    const double first_search_s = SecondsSince(t0);
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
                     {"skipped_ranges", r.skipped.size()},
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

}  // namespace

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

std::string ExitDescription(int st) {
  if (WIFSIGNALED(st)) return fmt::format("killed by signal {}", WTERMSIG(st));
  return fmt::format("exit status {}", WEXITSTATUS(st));
}

namespace {

// Forks `child`, which writes to the fd it is given and never returns.
WriterProcess Fork(const std::function<void(int)>& child) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork");
  if (pid == 0) {
    ::close(fds[0]);
    child(fds[1]);
    ::_exit(0);
  }
  ::close(fds[1]);
  return {pid, fds[0]};
}

}  // namespace

WriterProcess StartWriter(const MeasureConfig& c, const std::string& store, uint64_t start_ops, bool search) {
  return Fork([&](int out) { RunWriter(c, store, start_ops, search, out); });
}

json TimedRestart(const MeasureConfig& c, const std::string& store, uint64_t acked_ops) {
  auto [pid, from] = Fork([&](int out) { RunRecovery(c, store, acked_ops, out); });
  std::string out = ReadAll(from);
  ::close(from);
  int st = 0;
  ::waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || out.empty())
    throw std::runtime_error("the recovery process failed: " + ExitDescription(st));
  return json::parse(out);
}

}  // namespace vecwal::tools
