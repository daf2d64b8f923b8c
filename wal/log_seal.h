// LogSeal: the highest LSN a log is known to have acknowledged, kept beside
// its segments in `dir`/SEAL, so that damage to the newest records is told
// from a write torn by a crash.
//
// A crash can tear only writes in flight, which were never acknowledged. The
// reader can tell such a tail from damage to acknowledged records only when a
// later record says what was acknowledged (`acked`); the newest records have
// none after them. The seal is that later word: written with every LSN up to
// it durable, at Close (a restart after a clean close loses nothing to a
// "torn tail") and whenever segments are released (every checkpoint). A log
// that ends below its seal has lost acknowledged records, and opening it is an
// error, or, under salvage, a dropped range.
//
// Two slots, written in turn, so that a write torn by a crash leaves the other
// one (older, and still true: an acknowledged LSN stays acknowledged) to read.
// Layout: docs/FORMAT.md.
#pragma once

#include <cstdint>
#include <algorithm>
#include <memory>
#include <optional>
#include <string>

#include "io/file_system.h"

namespace vecwal::wal {

inline constexpr char kSealFileName[] = "SEAL";

class LogSeal {
 public:
  // Reads `dir`/SEAL. No file, or no slot that verifies: sealed_lsn() 0 and
  // note() says which (damage to the seal loses its protection, no record).
  static Result<std::unique_ptr<LogSeal>> Open(FileSystem& fs, const std::string& dir);

  uint64_t sealed_lsn() const { return sealed_lsn_; }
  // The first sealed LSN that a log whose valid records end at last_lsn no
  // longer holds, of those a reader from `from` needs (all of them up to
  // sealed_lsn() are then lost); nullopt where none is.
  std::optional<uint64_t> FirstLost(uint64_t last_lsn, uint64_t from) const {
    if (sealed_lsn_ <= last_lsn || sealed_lsn_ < from) return std::nullopt;
    return std::max(last_lsn + 1, from);
  }
  const std::string& note() const { return note_; }
  std::string path() const { return dir_ + "/" + kSealFileName; }

  // Records that every LSN <= lsn was acknowledged, durably, in the older
  // slot. The caller passes only LSNs that are durable. Not thread-safe.
  Status Seal(uint64_t lsn);

 private:
  LogSeal(FileSystem& fs, std::string dir) : fs_(fs), dir_(std::move(dir)) {}

  FileSystem& fs_;
  std::string dir_;
  std::unique_ptr<File> file_;  // opened at the first Seal
  uint64_t sealed_lsn_ = 0;
  uint64_t next_seq_ = 1;
  std::string note_;
};

}  // namespace vecwal::wal
