// Reads a log directory back in LSN order, verifying every record.
//
// Recovery modes, for what to do with an invalid record:
//  - kStrict:       any invalid record is an error naming segment, offset, LSN.
//  - kTolerateTail: an invalid record with no valid record after it, or only
//                   records whose flush was built before it was acknowledged
//                   (writes that were in flight at a crash), is a torn tail:
//                   the log ends there. An invalid record followed by a valid
//                   one that proves it was acknowledged is an error.
//  - kSalvage:      invalid records are skipped and every LSN range lost is
//                   reported in LogScanReport::dropped.
//
// How the proof works: each record carries `acked`, the durable LSN when its
// flush was built. Once LSN x is acknowledged, every later flush says
// acked >= x, so a later valid record with acked >= x shows that x was
// acknowledged, and its damage is corruption, not a crash.
//
// Thread safety: a scan touches only its own state; run it while no writer
// appends to the directory (Wal::Open does), or accept that it stops at the
// writer's current tail.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/file_system.h"
#include "wal/format.h"

namespace vecwal::wal {

enum class RecoveryMode { kStrict, kTolerateTail, kSalvage };
const char* ToString(RecoveryMode m);
// Parses "strict", "tolerate_tail" or "salvage".
Result<RecoveryMode> ParseRecoveryMode(const std::string& s);

struct LogRecord {
  uint64_t lsn = 0;
  RecordType type = RecordType::kOpaque;
  std::span<const std::byte> payload;  // valid during the visit, or while `keep` is held
  uint64_t segment_id = 0;
  uint64_t offset = 0;  // of the record header in its segment file
  // Owns the memory `payload` lies in. A visitor that holds it may use the
  // payload after the visit, from any thread: the reader never writes that
  // memory again while it is held.
  std::shared_ptr<const void> keep;
};

// A range of LSNs salvage skipped (first > last when damage lost no LSN).
struct DroppedRange {
  uint64_t first_lsn = 0;
  uint64_t last_lsn = 0;
  std::string where;  // file and offset
  std::string reason;
};

struct LogScanReport {
  uint64_t first_lsn = 0;  // oldest LSN still in the log; 0 when empty
  uint64_t last_lsn = 0;   // newest valid LSN; the log continues at last_lsn + 1
  uint64_t records_visited = 0;
  uint64_t payload_bytes_visited = 0;
  uint64_t bytes_read = 0;
  uint64_t live_segments = 0;
  bool tail_cut = false;           // a torn tail ended the log
  std::string tail_note;           // where and why
  uint64_t discarded_unacked = 0;  // valid records past a torn write, never acknowledged
  uint64_t torn_padding_skipped = 0;  // torn flush padding passed over, the next LSN right after it
  std::vector<DroppedRange> dropped;
  // Damage below from_lsn, in records the caller did not ask for (a store's
  // checkpoint holds their ops): passed over by tolerate_tail and salvage
  // wherever the scan finds the next record at or below from_lsn, an error
  // under strict.
  std::vector<DroppedRange> skipped;
  std::string seal_note;  // Wal::Open: a seal that could not be read (wal/log_seal.h)

  // Where appends continue. In place only when the log ends cleanly: after
  // the last record there is nothing but zeros.
  uint64_t last_segment_id = 0;  // 0 when there is no live segment
  bool append_in_place = false;
  uint64_t append_offset = 0;
  uint64_t highest_file_id = 0;            // of any segment file, live or not
  std::vector<std::string> files_to_drop;  // damaged files cut from the tail
};

using RecordVisitor = std::function<Status(const LogRecord&)>;

// Scans `dir`, calling `visit` for each record with lsn >= from_lsn in LSN
// order. Segments wholly below from_lsn are not read. A visitor error stops
// the scan and is returned.
Result<LogScanReport> ScanLog(FileSystem& fs, const std::string& dir, uint64_t from_lsn, RecoveryMode mode,
                              const RecordVisitor& visit);

}  // namespace vecwal::wal
