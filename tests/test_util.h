// Helpers shared by vecwal's tests: temporary directories, deterministic
// payloads, and a small language for reading and damaging a log (after
// leveldb's LogTest: Write/Read/IncrementByte/ShrinkSize).
#pragma once

#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <mutex>
#include <random>
#include <thread>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <ostream>
#include <string>
#include <vector>

#include "io/file_system.h"
#include "wal/log_reader.h"
#include "wal/wal.h"

namespace vecwal {
inline std::ostream& operator<<(std::ostream& os, Status::Code c) { return os << static_cast<int>(c); }
}  // namespace vecwal

namespace vecwal::test {

// The calling thread's time slice as the kernel reports it (sched_getattr's
// sched_runtime), in nanoseconds; 0 where the call fails.
inline uint64_t ReportedSlice() {
  struct {
    uint32_t size, policy;
    uint64_t flags;
    int32_t nice;
    uint32_t priority;
    uint64_t runtime, deadline, period;
    uint32_t util_min, util_max;
  } a{};
  return syscall(SYS_sched_getattr, 0, &a, sizeof(a), 0) == 0 ? a.runtime : 0;
}

// Linux 6.12 and later keep a slice asked for by a SCHED_OTHER thread.
inline bool KernelHasCustomSlices() {
  utsname u{};
  int major = 0, minor = 0;
  return uname(&u) == 0 && std::sscanf(u.release, "%d.%d", &major, &minor) == 2 &&
         (major > 6 || (major == 6 && minor >= 12));
}

// The backend under test: VECWAL_TEST_BACKEND=portable selects the fallback.
inline IoBackend BackendUnderTest() {
  const char* b = std::getenv("VECWAL_TEST_BACKEND");
  if (b && std::string(b) == "portable") return IoBackend::kPortable;
  if (b && std::string(b) == "uring") return IoBackend::kIoUring;
  return IoBackend::kAuto;
}

// What helper threads found wrong, for the main thread to check: Boost.Test's
// macros are not thread-safe. Keeps the first few messages and counts all.
class ThreadErrors {
 public:
  void Add(std::string what) {
    std::lock_guard l(mu_);
    if (++count_ <= kKept) text_ += (text_.empty() ? "" : "; ") + what;
  }
  int count() const {
    std::lock_guard l(mu_);
    return count_;
  }
  std::string ToString() const {
    std::lock_guard l(mu_);
    return std::to_string(count_) + " errors" + (count_ == 0 ? "" : ": " + text_) + (count_ > kKept ? "; ..." : "");
  }

 private:
  static constexpr int kKept = 5;
  mutable std::mutex mu_;
  int count_ = 0;
  std::string text_;
};

// A directory removed at scope exit, under VECWAL_TEST_DIR (default /tmp):
// point it at tmpfs to test the buffered fallback.
class TempDir {
 public:
  TempDir() {
    const char* root = std::getenv("VECWAL_TEST_DIR");
    std::string tmpl = std::string(root ? root : "/tmp") + "/vecwal-test-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (::mkdtemp(buf.data()) == nullptr) std::abort();
    path_ = buf.data();
  }
  ~TempDir() {
    std::error_code ec;
    if (!std::getenv("VECWAL_KEEP")) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// n x dim standard normal floats, the same for a seed.
inline std::vector<float> Gaussian(size_t n, uint32_t dim, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g;
  std::vector<float> v(n * dim);
  for (auto& x : v) x = g(rng);
  return v;
}

inline std::vector<std::byte> Payload(uint64_t key, size_t size) {
  std::vector<std::byte> p(size);
  uint64_t x = key * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < size; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p[i] = static_cast<std::byte>(x);
  }
  return p;
}

struct ReadBack {
  uint64_t lsn;
  wal::RecordType type;
  std::vector<std::byte> payload;
  uint64_t segment_id;
  uint64_t offset;
};

// Reads the whole log without opening it for writing.
inline Result<std::vector<ReadBack>> ReadLog(const std::string& dir, wal::RecoveryMode mode,
                                             wal::LogScanReport* report = nullptr) {
  std::vector<ReadBack> out;
  auto fs = NewPosixFileSystem(BackendUnderTest());
  auto rep = wal::ScanLog(*fs, dir, 1, mode, [&](const wal::LogRecord& r) {
    out.push_back({r.lsn, r.type, {r.payload.begin(), r.payload.end()}, r.segment_id, r.offset});
    return Status::OK();
  });
  if (!rep.ok()) return rep.status();
  if (report) *report = *rep;
  return out;
}

inline std::string SegmentPath(const std::string& dir, uint64_t id) { return dir + "/" + wal::SegmentFileName(id); }

// Flips the bits of `mask` in the byte at `offset` of `path` (buffered I/O).
inline void XorByte(const std::string& path, uint64_t offset, uint8_t mask = 0x01) {
  int fd = ::open(path.c_str(), O_RDWR);
  unsigned char b = 0;
  if (fd < 0 || ::pread(fd, &b, 1, static_cast<off_t>(offset)) != 1) std::abort();
  b ^= mask;
  if (::pwrite(fd, &b, 1, static_cast<off_t>(offset)) != 1) std::abort();
  ::fsync(fd);
  ::close(fd);
}

// Overwrites [offset, offset+len) of `path` with `byte`, creating the file.
inline void Fill(const std::string& path, uint64_t offset, size_t len, unsigned char byte) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT, 0644);
  std::vector<unsigned char> b(len, byte);
  if (fd < 0 || ::pwrite(fd, b.data(), len, static_cast<off_t>(offset)) != static_cast<ssize_t>(len)) std::abort();
  ::fsync(fd);
  ::close(fd);
}

// The crash loops' harness: forks `child` (which writes its messages to the
// fd it is given and never returns), SIGKILLs it after `delay`, reaps it, and
// returns the read end of its pipe. Returns -1 when the child was not killed
// (it exited by itself: a failure the caller reports), with its exit code.
inline int ForkAndKill(const std::function<void(int)>& child, std::chrono::microseconds delay, int* exit_code) {
  int fds[2];
  if (::pipe(fds) != 0) std::abort();
  pid_t pid = ::fork();
  if (pid < 0) std::abort();
  if (pid == 0) {
    ::close(fds[0]);
    child(fds[1]);
    ::_exit(0);
  }
  ::close(fds[1]);
  std::this_thread::sleep_for(delay);
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFSIGNALED(status)) {
    *exit_code = WEXITSTATUS(status);
    ::close(fds[0]);
    return -1;
  }
  return fds[0];
}

// The kill points a crash loop runs: VECWAL_CRASH_POINTS, default 200.
inline int CrashPoints() {
  const char* env = std::getenv("VECWAL_CRASH_POINTS");
  return env ? std::atoi(env) : 200;
}

inline wal::WalOptions SmallLogOptions() {
  wal::WalOptions o;
  o.fs = NewPosixFileSystem(BackendUnderTest());
  o.segment_bytes = 256 << 10;
  o.max_write_bytes = 64 << 10;
  o.lock_wait_ms = 200;
  // No seal on a timer: a test that counts the log's writes (a crash at write
  // n) needs the same writes every run. The crash loops turn it on.
  o.seal_interval_ms = 0;
  return o;
}

}  // namespace vecwal::test
