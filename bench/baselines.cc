#include "bench/baselines.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <vector>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#ifdef VECWAL_HAVE_ROCKSDB
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#endif

#include "io/aligned_buffer.h"
#include "io/file_system.h"

namespace vecwal::bench {
namespace {

std::vector<std::byte> Bytes(size_t n) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>(i * 131 + 7);
  return v;
}

[[noreturn]] void Die(const std::string& what) {
  fmt::print(stderr, "vecwal-bench: {}\n", what);
  std::exit(1);
}

}  // namespace

double NaiveLogRecordsPerSec(const std::string& dir, int threads, size_t record_bytes, double seconds) {
  std::string path = dir + "/naive.log";
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) Die("open " + path);
  std::mutex mu;
  uint64_t off = 0;
  auto rec = Bytes(record_bytes);
  double r = RunFor(threads, seconds, [&](int) -> uint64_t {
    std::lock_guard lk(mu);
    if (::pwrite(fd, rec.data(), rec.size(), static_cast<off_t>(off)) != static_cast<ssize_t>(rec.size())) return 0;
    if (::fdatasync(fd) != 0) return 0;
    off += rec.size();
    return 1;
  });
  ::close(fd);
  ::unlink(path.c_str());
  return r;
}

double NaiveLogBatchBytesPerSec(const std::string& dir, size_t record_bytes, size_t batch, double seconds) {
  std::string path = dir + "/naive-batch.log";
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) Die("open " + path);
  auto buf = Bytes(record_bytes * batch);
  uint64_t off = 0;
  double r = RunFor(1, seconds, [&](int) -> uint64_t {
    if (::pwrite(fd, buf.data(), buf.size(), static_cast<off_t>(off)) != static_cast<ssize_t>(buf.size())) return 0;
    if (::fdatasync(fd) != 0) return 0;
    off += buf.size();
    return buf.size();
  });
  ::close(fd);
  ::unlink(path.c_str());
  return r;
}

std::optional<double> RocksDbSyncPutsPerSec(const std::string& dir, int threads, size_t value_bytes, double seconds) {
#ifdef VECWAL_HAVE_ROCKSDB
  rocksdb::Options o;
  o.create_if_missing = true;
  rocksdb::DB* raw = nullptr;
  auto st = rocksdb::DB::Open(o, dir + "/rocksdb", &raw);
  if (!st.ok()) Die("rocksdb open: " + st.ToString());
  std::unique_ptr<rocksdb::DB> db(raw);
  rocksdb::WriteOptions wo;
  wo.sync = true;
  auto value = Bytes(value_bytes);
  std::atomic<uint64_t> next{0};
  double r = RunFor(threads, seconds, [&](int) -> uint64_t {
    uint64_t k = next++;
    rocksdb::Slice key(reinterpret_cast<const char*>(&k), sizeof(k));
    rocksdb::Slice v(reinterpret_cast<const char*>(value.data()), value.size());
    return db->Put(wo, key, v).ok() ? 1 : 0;
  });
  db.reset();
  rocksdb::DestroyDB(dir + "/rocksdb", o);
  return r;
#else
  (void)dir, (void)threads, (void)value_bytes, (void)seconds;
  return std::nullopt;
#endif
}

void FillWithBytes(AlignedBuffer& buf, unsigned seed) {
  for (size_t k = 0; k < buf.size(); ++k) buf.data()[k] = static_cast<std::byte>(k * 131 + seed * 7 + 1);
}

double RawDurableWriteBytesPerSec(const std::string& dir, size_t write_bytes, unsigned depth, double seconds) {
  auto fs = NewPosixFileSystem();
  const uint64_t file_bytes = 512ull << 20;
  FileOpenOptions o;
  o.create = o.writable = true;
  o.zero_fill_bytes = file_bytes;
  std::string path = dir + "/raw.dat";
  auto f = fs->Open(path, o);
  if (!f.ok()) Die(f.status().ToString());
  auto q = fs->NewWriteQueue(depth, DurableWriteMode::kDsyncWrite);
  if (!q.ok()) Die(q.status().ToString());
  // One buffer per write in flight, holding bytes rather than zeros, as a
  // writer of real data has (and as fio does). One buffer under all eight
  // writes ran 1.3x faster here, 2.8 against 2.1-2.3 GB/s: the host copied
  // the same cached megabyte each time.
  std::vector<AlignedBuffer> bufs;
  for (unsigned i = 0; i < depth; ++i) {
    bufs.emplace_back(write_bytes, 4096);
    FillWithBytes(bufs.back(), i);
  }
  std::vector<WriteCompletion> done;
  uint64_t off = 0, bytes = 0, submitted = 0;
  unsigned outstanding = 0;
  auto start = Clock::now();
  auto end = start + std::chrono::duration<double>(seconds);
  while (Clock::now() < end || outstanding > 0) {
    while (outstanding < depth && Clock::now() < end) {
      if (off + write_bytes > file_bytes) off = 0;
      // Round robin: with completions in order no buffer is under two writes
      // at once (out of order it can be, harmlessly: none is ever changed).
      if (!(*q)->Submit({f->get(), off, bufs[submitted++ % depth].span(), off}).ok()) Die("raw submit");
      off += write_bytes;
      ++outstanding;
    }
    done.clear();
    if (!(*q)->Wait(done, true).ok()) Die("raw wait");
    for (auto& c : done) {
      if (!c.status.ok()) Die(c.status.ToString());
      bytes += write_bytes;
      --outstanding;
    }
  }
  double r = static_cast<double>(bytes) / Seconds(Clock::now() - start);
  f->reset();
  (void)fs->Remove(path);
  return r;
}

Latency RawWriteFdatasyncLatency(const std::string& dir, double seconds) {
  auto fs = NewPosixFileSystem();
  FileOpenOptions o;
  o.create = o.writable = true;
  o.zero_fill_bytes = 64 << 20;
  std::string path = dir + "/raw-lat.dat";
  auto f = fs->Open(path, o);
  if (!f.ok()) Die(f.status().ToString());
  AlignedBuffer buf(4096, 4096);
  uint64_t off = 0;
  Latency l = MeasureLatency(seconds, [&] {
    off = (off + 4096) % (64 << 20);
    return (*f)->WriteAt(off, buf.span()).ok() && (*f)->Sync().ok();
  });
  f->reset();
  (void)fs->Remove(path);
  return l;
}

std::optional<double> FioBytesPerSec(const std::string& dir, size_t block_bytes, unsigned depth, double seconds) {
  if (std::system("command -v fio >/dev/null 2>&1") != 0) return std::nullopt;
  std::string out = dir + "/fio.json";
  std::string cmd = fmt::format(
      "fio --name=vecwal-raw --filename={}/fio.dat --size=512M --rw=write --bs={} --iodepth={} "
      "--ioengine=io_uring --direct=1 --sync=dsync --time_based --runtime={} --output-format=json "
      "--output={} >/dev/null 2>&1",
      dir, block_bytes, depth, std::max(1, static_cast<int>(seconds + 0.5)), out);
  if (std::system(cmd.c_str()) != 0) return std::nullopt;
  FILE* fp = std::fopen(out.c_str(), "r");
  if (!fp) return std::nullopt;
  nlohmann::json j = nlohmann::json::parse(fp, nullptr, false);
  std::fclose(fp);
  std::remove(out.c_str());
  std::remove((dir + "/fio.dat").c_str());
  if (j.is_discarded()) return std::nullopt;
  return j["jobs"][0]["write"]["bw_bytes"].get<double>();
}

}  // namespace vecwal::bench
