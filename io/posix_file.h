// PosixFile: a File on a Linux file descriptor. Internal to io/: the write
// queues need its descriptor; nothing outside io/ includes this header.
#pragma once

#include <memory>
#include <string>

#include "io/file_system.h"
#include "io/unique_fd.h"

namespace vecwal::io_internal {

class PosixFile final : public File {
 public:
  PosixFile(std::string path, UniqueFd fd, bool direct, size_t alignment)
      : path_(std::move(path)), fd_(std::move(fd)), direct_(direct), alignment_(alignment) {}
  const std::string& path() const override { return path_; }
  bool is_direct() const override { return direct_; }
  size_t alignment() const override { return alignment_; }
  Result<size_t> ReadAt(uint64_t offset, std::span<std::byte> dst) override;
  Status WriteAt(uint64_t offset, std::span<const std::byte> src) override;
  Status Sync() override;
  Result<uint64_t> Size() override;
  int fd() const { return fd_.get(); }

 private:
  std::string path_;
  UniqueFd fd_;
  bool direct_;
  size_t alignment_;
};

// The descriptor behind `f`, which must be a PosixFile.
PosixFile& AsPosix(File& f);

std::unique_ptr<DurableWriteQueue> NewPortableWriteQueue(unsigned depth, DurableWriteMode mode);
// Null with a Status when the kernel refuses io_uring or an opcode we need.
Result<std::unique_ptr<DurableWriteQueue>> NewUringWriteQueue(unsigned depth, DurableWriteMode mode);
// Whether io_uring can be used here (probed once per process).
Status ProbeUring();

}  // namespace vecwal::io_internal
