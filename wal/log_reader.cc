#include "wal/log_reader.h"

#include <algorithm>
#include <cstring>

#include "io/aligned_buffer.h"
#include "io/crc32c.h"
#include "wal/segment_files.h"
#include "wal/segment_window.h"

namespace vecwal::wal {

const char* ToString(RecoveryMode m) {
  switch (m) {
    case RecoveryMode::kStrict: return "strict";
    case RecoveryMode::kTolerateTail: return "tolerate_tail";
    case RecoveryMode::kSalvage: return "salvage";
  }
  return "?";
}

Result<RecoveryMode> ParseRecoveryMode(const std::string& s) {
  if (s == "strict") return RecoveryMode::kStrict;
  if (s == "tolerate_tail") return RecoveryMode::kTolerateTail;
  if (s == "salvage") return RecoveryMode::kSalvage;
  return Status::InvalidArgument("unknown recovery mode '" + s + "' (strict, tolerate_tail, salvage)");
}

namespace {

using State = SegmentFileInfo::State;

// A segment being scanned; its bytes come through a window (At), so a
// pointer from it is good until the next At.
struct Segment {
  const SegmentFileInfo* info;
  SegmentWindow* window;
  uint64_t size() const { return info->file_bytes; }
  Result<const std::byte*> At(uint64_t pos, size_t len) const { return window->At(pos, len); }
  std::string Where(uint64_t pos) const { return info->path + " offset " + std::to_string(pos); }
};

// Why a segment's record sequence stopped.
struct Stop {
  enum Kind { kSegmentEnd, kZeros, kInvalid } kind;
  uint64_t pos;
  std::string why;
};

// Valid records found past a stop.
struct Lookahead {
  uint64_t count = 0;
  uint64_t max_acked = 0;
  uint64_t first_pos = 0;
  uint64_t first_lsn = 0;
};

bool AllZero(std::span<const std::byte> s) {
  return std::all_of(s.begin(), s.end(), [](std::byte b) { return b == std::byte{0}; });
}

Result<bool> ValidRecordAt(const Segment& seg, uint64_t pos, RecordHeader* out) {
  const uint64_t size = seg.size();
  if (pos + kRecordHeaderSize > size) return false;
  VECWAL_ASSIGN_OR_RETURN(const std::byte* p, seg.At(pos, kRecordHeaderSize));
  RecordHeader h = DecodeRecordHeader(p);
  if (h.segment_id != seg.info->id || !IsKnownRecordType(h.type) || h.lsn == 0) return false;
  if (h.length > size - pos - kRecordHeaderSize) return false;
  VECWAL_ASSIGN_OR_RETURN(p, seg.At(pos, kRecordHeaderSize + h.length));
  uint32_t payload_crc = crc32c::Value(p + kRecordHeaderSize, h.length);
  if (RecordCrc(payload_crc, p, seg.info->header.epoch) != h.crc) return false;
  *out = h;
  return true;
}

// Bytes at a block start whose segment id is another segment's were left by
// an earlier life of a recycled file, unless they verify once the id is
// this segment's: then they are one of our records with its id field
// damaged (a flip there must not pass for the clean end of the log).
Result<bool> StaleRecordAt(const Segment& seg, uint64_t pos) {
  VECWAL_ASSIGN_OR_RETURN(const std::byte* p, seg.At(pos, kRecordHeaderSize));
  RecordHeader h = DecodeRecordHeader(p);
  if (h.segment_id == seg.info->id) return false;
  if (h.length > seg.size() - pos - kRecordHeaderSize) return true;
  VECWAL_ASSIGN_OR_RETURN(p, seg.At(pos, kRecordHeaderSize + h.length));
  std::byte fixed[kRecordHeaderSize];
  std::memcpy(fixed, p, kRecordHeaderSize);
  const uint64_t id = seg.info->id;
  std::memcpy(fixed + 24, &id, sizeof id);
  const uint32_t payload_crc = crc32c::Value(p + kRecordHeaderSize, h.length);
  return RecordCrc(payload_crc, fixed, seg.info->header.epoch) != h.crc;
}

class Scanner {
 public:
  Scanner(FileSystem& fs, uint64_t from_lsn, RecoveryMode mode, const RecordVisitor& visit)
      : fs_(fs), from_lsn_(from_lsn), mode_(mode), visit_(visit), window_(fs) {}

  Result<LogScanReport> Run(const std::string& dir) {
    VECWAL_ASSIGN_OR_RETURN(auto files, ListSegmentFiles(fs_, dir));
    // A read-ahead still running was set up from `files`: it ends before
    // they go, on every way out of here.
    struct EndWindow {
      SegmentWindow& w;
      ~EndWindow() { w.End(); }
    } end{window_};
    std::vector<const SegmentFileInfo*> segs;
    for (const auto& f : files) {
      report_.highest_file_id = std::max(report_.highest_file_id, f.id);
      if (f.state != State::kBlank) segs.push_back(&f);
    }
    VECWAL_RETURN_IF_ERROR(CutDamagedActivation(segs));
    segs_ = &segs;
    for (size_t i = 0; i < segs.size(); ++i) {
      index_ = i;
      const SegmentFileInfo* next = i + 1 < segs.size() ? segs[i + 1] : nullptr;
      VECWAL_RETURN_IF_ERROR(ScanOne(*segs[i], next));
    }
    report_.last_lsn = expected_ == 0 ? 0 : expected_ - 1;
    report_.bytes_read = window_.bytes_read();
    return report_;
  }

 private:
  // A header write of a rotation that a crash tore leaves the newest file
  // damaged with nothing in it: nothing was written there before the header
  // was durable. Anywhere else a damaged header is damage.
  Status CutDamagedActivation(std::vector<const SegmentFileInfo*>& segs) {
    if (segs.size() < 2 || segs.back()->state != State::kDamaged || mode_ == RecoveryMode::kStrict) return Status::OK();
    report_.tail_cut = true;
    report_.tail_note = segs.back()->path + ": " + segs.back()->problem + " (a rotation torn by a crash; dropped)";
    report_.files_to_drop.push_back(segs.back()->path);
    segs.pop_back();
    return Status::OK();
  }

  Status ScanOne(const SegmentFileInfo& info, const SegmentFileInfo* next) {
    if (info.state == State::kDamaged) {
      std::string why = info.path + ": " + info.problem;
      // Wholly below from_lsn, as the next segment's first LSN proves.
      if (mode_ != RecoveryMode::kStrict && next && next->state == State::kLive &&
          next->header.first_lsn <= from_lsn_) {
        report_.skipped.push_back(
            {expected_, next->header.first_lsn - 1, info.path, "damaged segment header: " + info.problem});
        return Status::OK();
      }
      if (mode_ != RecoveryMode::kSalvage) return Status::Corruption(why);
      uint64_t last = next && next->state == State::kLive ? next->header.first_lsn - 1 : 0;
      report_.dropped.push_back({expected_, last, info.path, "damaged segment header: " + info.problem});
      if (last != 0) expected_ = last + 1;
      return Status::OK();
    }
    ++report_.live_segments;
    const uint64_t first = info.header.first_lsn;
    if (report_.first_lsn == 0) report_.first_lsn = first;
    if (expected_ == 0) expected_ = first;
    // A gap wholly below from_lsn holds nothing the caller asked for (a store
    // whose checkpoint covers it started the log again above it).
    if (first > expected_ && first <= from_lsn_) expected_ = first;
    if (first != expected_) VECWAL_RETURN_IF_ERROR(SegmentStartMismatch(info, first));
    report_.last_segment_id = info.id;
    report_.append_in_place = false;
    // Wholly below from_lsn: the next segment's first LSN proves it.
    if (next && next->state == State::kLive && next->header.first_lsn <= from_lsn_ &&
        next->header.first_lsn >= expected_) {
      expected_ = next->header.first_lsn;
      return Status::OK();
    }
    VECWAL_RETURN_IF_ERROR(window_.Begin(info, NextToRead()));
    Segment seg{&info, &window_};
    uint64_t pos = info.header.block_size;
    for (;;) {
      VECWAL_ASSIGN_OR_RETURN(Stop stop, ScanRecords(seg, pos));
      if (stop.kind == Stop::kSegmentEnd && next) return Status::OK();
      // Damage in records below from_lsn (a segment holds those a checkpoint
      // covers beside those after it) costs the caller nothing where the
      // next valid record is at or below from_lsn: no LSN it asked for is
      // missing. Never a torn tail: the checkpoint was taken after them.
      if (stop.kind != Stop::kSegmentEnd && expected_ < from_lsn_ && mode_ != RecoveryMode::kStrict) {
        VECWAL_ASSIGN_OR_RETURN(Lookahead la, Look(seg, stop.pos + kRecordAlign));
        if (la.count > 0 && la.first_lsn <= from_lsn_) {
          report_.skipped.push_back({expected_, la.first_lsn - 1, seg.Where(stop.pos), stop.why});
          expected_ = la.first_lsn;
          pos = la.first_pos;
          continue;
        }
      }
      if (next) {
        if (next->state == State::kLive && next->header.first_lsn == expected_) return Status::OK();
        // Rotation drains every write first, so a hole before the next
        // segment held completed writes: damage, never a crash.
        if (mode_ != RecoveryMode::kSalvage)
          return Status::Corruption(seg.Where(stop.pos) + ": " + stop.why + "; expected LSN " +
                                    std::to_string(expected_) + " but the next segment starts at LSN " +
                                    (next->state == State::kLive ? std::to_string(next->header.first_lsn) : "?"));
      } else {
        VECWAL_ASSIGN_OR_RETURN(bool done, AtTail(seg, stop));
        if (done) return Status::OK();
      }
      // Salvage: resume at the next valid record, or give up on this segment.
      VECWAL_ASSIGN_OR_RETURN(Lookahead la, Look(seg, stop.pos + kRecordAlign));
      if (la.count == 0) {
        uint64_t last = next && next->state == State::kLive ? next->header.first_lsn - 1 : expected_ - 1;
        report_.dropped.push_back({expected_, last, seg.Where(stop.pos), stop.why});
        if (next && next->state == State::kLive) expected_ = next->header.first_lsn;
        return Status::OK();
      }
      report_.dropped.push_back({expected_, la.first_lsn - 1, seg.Where(stop.pos), stop.why});
      expected_ = la.first_lsn;
      pos = la.first_pos;
    }
  }

  Status SegmentStartMismatch(const SegmentFileInfo& info, uint64_t first) {
    std::string why = info.path + ": segment starts at LSN " + std::to_string(first) + " but LSN " +
                      std::to_string(expected_) + " was expected";
    if (mode_ != RecoveryMode::kSalvage || first < expected_) return Status::Corruption(why);
    report_.dropped.push_back({expected_, first - 1, info.path, why});
    expected_ = first;
    return Status::OK();
  }

  // Decides what a stop in the last segment means. Returns true when the scan
  // of the log is over, false when salvage should resume past the damage.
  Result<bool> AtTail(const Segment& seg, const Stop& stop) {
    if (stop.kind == Stop::kSegmentEnd) return true;  // full; appends go to a new segment
    VECWAL_ASSIGN_OR_RETURN(Lookahead la, Look(seg, stop.pos + kRecordAlign));
    if (la.count == 0 && stop.kind == Stop::kZeros) {
      report_.append_in_place = true;
      report_.append_offset = stop.pos;
      return true;
    }
    // Evidence that the invalid bytes held an acknowledged record, or were
    // not a record at all (the LSN they should hold is found further on).
    bool damage = la.count > 0 && (la.max_acked >= expected_ || la.first_lsn == expected_);
    if (damage) {
      std::string why = seg.Where(stop.pos) + ": " + stop.why + " at LSN " + std::to_string(expected_) +
                        ", but a valid record (LSN " + std::to_string(la.first_lsn) + ") follows at offset " +
                        std::to_string(la.first_pos) + " whose flush shows LSNs <= " + std::to_string(la.max_acked) +
                        " were acknowledged";
      if (mode_ == RecoveryMode::kSalvage) return false;
      return Status::Corruption(why);
    }
    std::string note = seg.Where(stop.pos) + ": " + stop.why + " at LSN " + std::to_string(expected_) +
                       " ends the log (torn tail" +
                       (la.count ? ", " + std::to_string(la.count) + " unacknowledged records after it discarded" : "") +
                       ")";
    if (mode_ == RecoveryMode::kStrict) return Status::Corruption(note);
    report_.tail_cut = true;
    report_.tail_note = note;
    report_.discarded_unacked = la.count;
    return true;
  }

  // Visits consecutive records from pos until one is missing or invalid.
  Result<Stop> ScanRecords(const Segment& seg, uint64_t pos) {
    const uint64_t size = seg.size();
    const uint64_t block = seg.info->header.block_size;
    for (;;) {
      if (pos + kRecordHeaderSize > size) return Stop{Stop::kSegmentEnd, pos, "end of segment"};
      VECWAL_ASSIGN_OR_RETURN(const std::byte* p, seg.At(pos, kRecordHeaderSize));
      const bool zero_header = IsZeroHeader(p);
      RecordHeader h;
      bool valid = false;
      if (!zero_header) {
        VECWAL_ASSIGN_OR_RETURN(valid, ValidRecordAt(seg, pos, &h));
      }
      if (!valid) {
        const uint64_t block_end = std::min(AlignUp(pos + 1, block), size);
        if (pos % block != 0) {
          VECWAL_ASSIGN_OR_RETURN(const std::byte* rest, seg.At(pos, block_end - pos));
          if (AllZero({rest, static_cast<size_t>(block_end - pos)})) {
            pos = block_end;  // the zero padding after a flush
            continue;
          }
          // The padding of a flush whose write a power loss tore, in a
          // recycled file: its sectors that never arrived hold the file's
          // earlier bytes, while the next flush, written beside it, did
          // arrive and begins at the next block with the very LSN expected.
          // No LSN is missing, so nothing was lost there.
          RecordHeader next;
          if (mode_ != RecoveryMode::kStrict && block_end < size) {
            VECWAL_ASSIGN_OR_RETURN(bool next_valid, ValidRecordAt(seg, block_end, &next));
            if (next_valid && next.lsn == expected_) {
              ++report_.torn_padding_skipped;
              pos = block_end;
              continue;
            }
          }
        }
        // Nothing was written here: zeros of a new file, or bytes of a
        // recycled one's earlier life (another segment id).
        if (pos % block == 0) {
          bool stale = zero_header;
          if (!stale) {
            VECWAL_ASSIGN_OR_RETURN(stale, StaleRecordAt(seg, pos));
          }
          if (stale) return Stop{Stop::kZeros, pos, "no record"};
        }
        return Stop{Stop::kInvalid, pos, "invalid record (checksum or header)"};
      }
      // ValidRecordAt made the whole record resident.
      VECWAL_ASSIGN_OR_RETURN(p, seg.At(pos, kRecordHeaderSize + h.length));
      if (h.lsn != expected_)
        return Stop{Stop::kInvalid, pos, "record has LSN " + std::to_string(h.lsn) + ", not the next"};
      if (h.lsn >= from_lsn_ && visit_) {
        LogRecord rec{h.lsn,       static_cast<RecordType>(h.type), {p + kRecordHeaderSize, h.length},
                      seg.info->id, pos,                             seg.window->Keep()};
        VECWAL_RETURN_IF_ERROR(visit_(rec));
        ++report_.records_visited;
        report_.payload_bytes_visited += h.length;
      }
      ++expected_;
      pos += RecordFootprint(h.length);
    }
  }

  // Valid records of this segment at or after `from`, with LSN >= expected.
  Result<Lookahead> Look(const Segment& seg, uint64_t from) const {
    Lookahead la;
    RecordHeader h;
    for (uint64_t pos = AlignUp(from, kRecordAlign); pos + kRecordHeaderSize <= seg.size(); pos += kRecordAlign) {
      VECWAL_ASSIGN_OR_RETURN(bool valid, ValidRecordAt(seg, pos, &h));
      if (!valid || h.lsn < expected_) continue;
      if (la.count++ == 0) {
        la.first_pos = pos;
        la.first_lsn = h.lsn;
      }
      la.max_acked = std::max(la.max_acked, h.acked);
    }
    return la;
  }

  // The segment the scan reads after the current one, for the window to
  // read ahead: not one wholly below from_lsn, which the scan skips.
  const SegmentFileInfo* NextToRead() const {
    const auto& segs = *segs_;
    const size_t k = index_ + 1;
    if (k >= segs.size() || segs[k]->state != State::kLive) return nullptr;
    if (k + 1 < segs.size() && segs[k + 1]->state == State::kLive && segs[k + 1]->header.first_lsn <= from_lsn_)
      return nullptr;
    return segs[k];
  }

  FileSystem& fs_;
  uint64_t from_lsn_;
  RecoveryMode mode_;
  const RecordVisitor& visit_;
  LogScanReport report_;
  uint64_t expected_ = 0;  // the next LSN the log must hold
  const std::vector<const SegmentFileInfo*>* segs_ = nullptr;
  size_t index_ = 0;  // of the segment being scanned
  SegmentWindow window_;
};

}  // namespace

Result<LogScanReport> ScanLog(FileSystem& fs, const std::string& dir, uint64_t from_lsn, RecoveryMode mode,
                              const RecordVisitor& visit) {
  Scanner scanner(fs, from_lsn, mode, visit);
  return scanner.Run(dir);
}

}  // namespace vecwal::wal
