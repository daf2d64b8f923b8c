// libFuzzer target: the log reader on an arbitrary segment file, in each
// recovery mode, decoding every record it hands out. Any input must give a
// result or an error, never a crash, a hang or an out-of-bounds read.
#include <filesystem>

#include "io/file_system.h"
#include "tests/fuzz/fuzz_util.h"
#include "wal/log_reader.h"
#include "wal/record_ops.h"

using namespace vecwal;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static auto fs = NewPosixFileSystem(IoBackend::kPortable);
  const std::string dir = fuzz::ScratchDir() + "/log";
  std::filesystem::create_directories(dir);
  // The input is segment 1; a second file, when the input is long enough to
  // split, is segment 2, so rotation and cross-segment rules are reached too.
  const size_t split = size > 8192 && (data[0] & 1) ? size / 2 / 4096 * 4096 : size;
  fuzz::WriteFile(dir + "/" + wal::SegmentFileName(1), data, split);
  std::filesystem::remove(dir + "/" + wal::SegmentFileName(2));
  if (split < size) fuzz::WriteFile(dir + "/" + wal::SegmentFileName(2), data + split, size - split);
  // From the start, and from an LSN inside the log, as a store reads after
  // its checkpoint (damage below that LSN is passed over).
  const uint64_t from = size > 0 ? 1 + data[size - 1] % 64 : 1;
  for (uint64_t first : {uint64_t{0}, from})
    for (auto mode : {wal::RecoveryMode::kStrict, wal::RecoveryMode::kTolerateTail, wal::RecoveryMode::kSalvage}) {
      uint64_t last = 0;
      auto rep = wal::ScanLog(*fs, dir, first, mode, [&](const wal::LogRecord& r) {
        if (r.lsn <= last || r.lsn < first) std::abort();  // LSNs handed out strictly increase, from `first`
        last = r.lsn;
        (void)wal::DecodeOp(r.type, r.payload, r.lsn);
        return Status::OK();
      });
      if (rep.ok() && rep->last_lsn < last) std::abort();
    }
  return 0;
}
