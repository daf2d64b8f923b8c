// The seam between vecwal and the disk.
//
// Everything the log and the checkpoints write or read goes through a
// FileSystem: the real one (io_uring, or a portable fallback), or a test's
// wrapper that injects failed writes, failed syncs, ENOSPC, short writes and
// crashes (io/fault_file_system.h). Nothing above io/ touches a file
// descriptor.
//
// Thread safety: a FileSystem and a File may be used from many threads. A
// DurableWriteQueue has one owner thread that calls Submit and Wait; any
// thread may call Wake.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/status.h"

namespace vecwal {

// How a DurableWriteQueue makes each write durable.
enum class DurableWriteMode {
  kDsyncWrite,          // one write with RWF_DSYNC (FUA where the device has it)
  kWriteThenFdatasync,  // a write, then fdatasync (linked in io_uring)
};
const char* ToString(DurableWriteMode m);

struct FileOpenOptions {
  bool create = false;     // create the file if it does not exist
  bool exclusive = false;  // with create: fail if it exists
  bool writable = false;
  bool direct = true;  // O_DIRECT, quietly buffered where the file system refuses it
  // With create: the size to reserve by writing zeros (not fallocate, whose
  // unwritten extents cost a metadata update on first write), then fdatasync.
  uint64_t zero_fill_bytes = 0;
};

class File {
 public:
  virtual ~File() = default;
  virtual const std::string& path() const = 0;
  // True when reads and writes bypass the page cache (O_DIRECT).
  virtual bool is_direct() const = 0;
  // Offsets, lengths and buffer addresses must be multiples of this for
  // direct files (statx STATX_DIOALIGN, else 4096); 1 for buffered ones.
  virtual size_t alignment() const = 0;
  // Reads up to dst.size() bytes; fewer only at end of file.
  virtual Result<size_t> ReadAt(uint64_t offset, std::span<std::byte> dst) = 0;
  // Writes all of src (resuming short writes) or fails. Not durable until Sync.
  virtual Status WriteAt(uint64_t offset, std::span<const std::byte> src) = 0;
  virtual Status Sync() = 0;  // fdatasync
  virtual Result<uint64_t> Size() = 0;
};

struct WriteRequest {
  File* file = nullptr;
  uint64_t offset = 0;
  std::span<const std::byte> data;  // stays valid until its completion is reaped
  uint64_t tag = 0;                 // returned in the completion
};

struct WriteCompletion {
  uint64_t tag = 0;
  Status status;  // OK: every byte of the request is on stable storage
};

class DurableWriteQueue {
 public:
  virtual ~DurableWriteQueue() = default;
  virtual unsigned depth() const = 0;  // most requests outstanding at once
  virtual std::string name() const = 0;
  // Queues a request; it is started no later than the next Wait.
  // Precondition: fewer than depth() requests outstanding.
  virtual Status Submit(const WriteRequest& req) = 0;
  // Starts queued requests, then (when `block`) sleeps until at least one
  // completes or Wake is called. Appends what completed to `out`.
  virtual Status Wait(std::vector<WriteCompletion>& out, bool block) = 0;
  // Ends a blocked Wait early. Callable from any thread.
  virtual void Wake() = 0;
};

// Held while a process owns a directory; released by the destructor.
class DirectoryLock {
 public:
  virtual ~DirectoryLock() = default;
};

class FileSystem {
 public:
  virtual ~FileSystem() = default;
  virtual Result<std::unique_ptr<File>> Open(const std::string& path, const FileOpenOptions& opts) = 0;
  virtual Result<std::unique_ptr<DurableWriteQueue>> NewWriteQueue(unsigned depth, DurableWriteMode mode) = 0;
  // File names (not paths) in `dir`, without "." and "..".
  virtual Result<std::vector<std::string>> ListDir(const std::string& dir) = 0;
  virtual Status CreateDir(const std::string& dir) = 0;  // OK if it exists
  virtual Status SyncDir(const std::string& dir) = 0;
  virtual Status Rename(const std::string& from, const std::string& to) = 0;
  virtual Status Remove(const std::string& path) = 0;
  virtual Status Truncate(const std::string& path, uint64_t size) = 0;
  // Takes an exclusive lock on `dir`/LOCK, retrying for `wait_ms` (io_uring
  // may hold a dead process's files for a moment); Unavailable if another
  // process or handle keeps it.
  virtual Result<std::unique_ptr<DirectoryLock>> LockDir(const std::string& dir, int wait_ms) = 0;
  // Describes the write backend, e.g. "io_uring" or "portable (pwritev2)".
  virtual std::string backend_name() const = 0;
};

enum class IoBackend { kAuto, kIoUring, kPortable };

// The real file system. kAuto uses io_uring when the kernel allows it and
// falls back to the portable backend (with one warning on stderr) when not.
std::shared_ptr<FileSystem> NewPosixFileSystem(IoBackend backend = IoBackend::kAuto);

// Reads a whole file or the range [offset, offset+len) into memory, checked
// for short reads. Used by readers of small files (headers, checkpoints).
Result<std::vector<std::byte>> ReadRange(File& f, uint64_t offset, size_t len);

}  // namespace vecwal
