#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>

#include "io/aligned_buffer.h"
#include "io/posix_file.h"

namespace vecwal {

const char* ToString(DurableWriteMode m) {
  return m == DurableWriteMode::kDsyncWrite ? "RWF_DSYNC write" : "write + fdatasync";
}

namespace io_internal {

Result<size_t> PosixFile::ReadAt(uint64_t offset, std::span<std::byte> dst) {
  size_t done = 0;
  while (done < dst.size()) {
    ssize_t n = ::pread(fd_.get(), dst.data() + done, dst.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, path_ + ": read at offset " + std::to_string(offset + done));
    }
    if (n == 0) break;  // end of file
    done += static_cast<size_t>(n);
  }
  return done;
}

Status PosixFile::WriteAt(uint64_t offset, std::span<const std::byte> src) {
  size_t done = 0;
  while (done < src.size()) {
    ssize_t n = ::pwrite(fd_.get(), src.data() + done, src.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, path_ + ": write at offset " + std::to_string(offset + done));
    }
    if (n == 0) return Status::IOError(path_ + ": write returned 0 at offset " + std::to_string(offset + done));
    done += static_cast<size_t>(n);
  }
  return Status::OK();
}

Status PosixFile::Sync() {
  if (::fdatasync(fd_.get()) != 0) return Status::FromErrno(errno, path_ + ": fdatasync");
  return Status::OK();
}

Result<uint64_t> PosixFile::Size() {
  struct stat st;
  if (::fstat(fd_.get(), &st) != 0) return Status::FromErrno(errno, path_ + ": fstat");
  return static_cast<uint64_t>(st.st_size);
}

PosixFile& AsPosix(File& f) { return dynamic_cast<PosixFile&>(f); }

namespace {

// statx(STATX_DIOALIGN) gives the file's O_DIRECT alignment on Linux >= 6.1;
// older kernels and file systems that do not report it get 4096, which every
// block device accepts.
size_t DirectIoAlignment(int fd) {
  struct statx stx;
  std::memset(&stx, 0, sizeof(stx));
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 && (stx.stx_mask & STATX_DIOALIGN) &&
      stx.stx_dio_offset_align > 0) {
    return std::max<size_t>({stx.stx_dio_offset_align, stx.stx_dio_mem_align, 512});
  }
  return 4096;
}

Status ZeroFill(PosixFile& f, uint64_t bytes) {
  constexpr size_t kChunk = 1 << 20;
  AlignedBuffer zeros(kChunk, 4096);
  for (uint64_t off = 0; off < bytes; off += kChunk) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, bytes - off));
    Status s = f.WriteAt(off, zeros.span().first(AlignUp(n, f.alignment())));
    if (!s.ok()) return s.WithContext("reserving " + std::to_string(bytes) + " bytes");
  }
  return f.Sync();
}

class FlockDirectoryLock final : public DirectoryLock {
 public:
  explicit FlockDirectoryLock(UniqueFd fd) : fd_(std::move(fd)) {}
  ~FlockDirectoryLock() override { ::flock(fd_.get(), LOCK_UN); }

 private:
  UniqueFd fd_;
};

class PosixFileSystem final : public FileSystem {
 public:
  explicit PosixFileSystem(bool uring) : uring_(uring) {}

  Result<std::unique_ptr<File>> Open(const std::string& path, const FileOpenOptions& o) override {
    int flags = O_CLOEXEC | (o.writable ? O_RDWR : O_RDONLY);
    if (o.create) flags |= O_CREAT | (o.exclusive ? O_EXCL : 0);
    int fd = o.direct ? ::open(path.c_str(), flags | O_DIRECT, 0644) : -1;
    bool direct = fd >= 0;
    if (fd < 0 && o.direct && errno == EINVAL) {
      // tmpfs and some FUSE file systems refuse O_DIRECT: fall back to
      // buffered I/O, made durable by the same fdatasync / RWF_DSYNC.
      static std::once_flag warned;
      std::call_once(warned, [&] {
        std::fprintf(stderr, "vecwal: warning: %s refuses O_DIRECT; using buffered I/O + fdatasync\n",
                     path.c_str());
      });
    }
    if (fd < 0 && (!o.direct || errno == EINVAL)) fd = ::open(path.c_str(), flags, 0644);
    if (fd < 0) return Status::FromErrno(errno, "open " + path);
    UniqueFd owned(fd);
    size_t align = direct ? DirectIoAlignment(fd) : 1;
    auto file = std::make_unique<PosixFile>(path, std::move(owned), direct, align);
    if (o.create && o.zero_fill_bytes > 0) {
      Status s = ZeroFill(*file, o.zero_fill_bytes);
      if (!s.ok()) {
        ::unlink(path.c_str());  // a half-reserved file must not look usable
        return s;
      }
    }
    return std::unique_ptr<File>(std::move(file));
  }

  Result<std::unique_ptr<DurableWriteQueue>> NewWriteQueue(unsigned depth, DurableWriteMode mode) override {
    if (uring_) return NewUringWriteQueue(depth, mode);
    return NewPortableWriteQueue(depth, mode);
  }

  Result<std::vector<std::string>> ListDir(const std::string& dir) override {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return Status::FromErrno(errno, "list directory " + dir);
    std::vector<std::string> names;
    while (struct dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") names.push_back(std::move(n));
    }
    ::closedir(d);
    return names;
  }

  Status CreateDir(const std::string& dir) override {
    std::string prefix;
    for (size_t pos = 0; pos != std::string::npos;) {
      pos = dir.find('/', pos + 1);
      prefix = dir.substr(0, pos);
      if (prefix.empty()) continue;
      if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST)
        return Status::FromErrno(errno, "create directory " + prefix);
    }
    return Status::OK();
  }

  Status SyncDir(const std::string& dir) override {
    UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd.valid()) return Status::FromErrno(errno, "open directory " + dir);
    if (::fsync(fd.get()) != 0) return Status::FromErrno(errno, "fsync directory " + dir);
    return Status::OK();
  }

  Status Rename(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) return Status::FromErrno(errno, "rename " + from + " to " + to);
    return Status::OK();
  }

  Status Remove(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return Status::FromErrno(errno, "remove " + path);
    return Status::OK();
  }

  Status Truncate(const std::string& path, uint64_t size) override {
    if (::truncate(path.c_str(), static_cast<off_t>(size)) != 0)
      return Status::FromErrno(errno, "truncate " + path + " to " + std::to_string(size));
    return Status::OK();
  }

  Result<std::unique_ptr<DirectoryLock>> LockDir(const std::string& dir, int wait_ms) override {
    std::string path = dir + "/LOCK";
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    if (!fd.valid()) return Status::FromErrno(errno, "open lock file " + path);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
    while (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
      if (errno != EWOULDBLOCK && errno != EINTR) return Status::FromErrno(errno, "lock " + path);
      if (std::chrono::steady_clock::now() >= deadline)
        return Status::Unavailable(dir + " is in use by another vecwal process or handle (lock " + path +
                                   " is held)", EWOULDBLOCK);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return std::unique_ptr<DirectoryLock>(std::make_unique<FlockDirectoryLock>(std::move(fd)));
  }

  std::string backend_name() const override { return uring_ ? "io_uring" : "portable (pwritev2)"; }

 private:
  bool uring_;
};

}  // namespace
}  // namespace io_internal

std::shared_ptr<FileSystem> NewPosixFileSystem(IoBackend backend) {
  bool uring = backend == IoBackend::kIoUring;
  if (backend == IoBackend::kAuto) {
    Status probe = io_internal::ProbeUring();
    uring = probe.ok();
    if (!uring) {
      static std::once_flag warned;
      std::call_once(warned, [&] {
        std::fprintf(stderr, "vecwal: warning: io_uring unavailable (%s); using the portable pwritev2 backend\n",
                     probe.ToString().c_str());
      });
    }
  }
  return std::make_shared<io_internal::PosixFileSystem>(uring);
}

Result<std::vector<std::byte>> ReadRange(File& f, uint64_t offset, size_t len) {
  size_t a = std::max<size_t>(f.alignment(), 1);
  uint64_t start = AlignDown(offset, a);
  AlignedBuffer buf(AlignUp(offset + len, a) - start, std::max<size_t>(a, 64));
  VECWAL_ASSIGN_OR_RETURN(size_t got, f.ReadAt(start, buf.span()));
  if (got < offset - start + len)
    return Status::Corruption(f.path() + ": wanted " + std::to_string(len) + " bytes at offset " +
                              std::to_string(offset) + ", file ends first");
  const std::byte* p = buf.data() + (offset - start);
  return std::vector<std::byte>(p, p + len);
}

}  // namespace vecwal
