// Checkpoint files: an index and its payloads at one exact LSN.
//
// Layout (docs/FORMAT.md, "Checkpoint file"): a 4096-byte header block with
// the LSN, dimension, metric, index description, counts and a table of
// sections, each with its offset, length and CRC32C; then the sections, each
// starting on a 4096-byte boundary: the index (FAISS bytes, loadable by stock
// faiss::read_index, then vecwal's slot table) and the payloads.
//
// A checkpoint is written to `<name>.tmp` with O_DIRECT, fsynced, renamed to
// its final name and the directory fsynced: it appears whole or not at all.
//
// Thread safety: a CheckpointWriter is used by one thread; reading a file
// touches nothing shared.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "index/vector_index.h"
#include "io/aligned_buffer.h"
#include "io/file_system.h"

namespace vecwal::recovery {

inline constexpr uint32_t kCheckpointVersion = 1;

struct CheckpointInfo {
  uint64_t lsn = 0;  // holds exactly the ops with LSN <= lsn
  index::IndexSpec spec;
  uint64_t live_count = 0;
  uint64_t payload_count = 0;
  uint64_t file_bytes = 0;
};

std::string CheckpointFileName(uint64_t lsn);  // "ckpt-<lsn as 16 hex>.vwc"

// The LSN in a checkpoint file name; nullopt for any other name.
std::optional<uint64_t> ParseCheckpointFileName(const std::string& name);

// The LSNs of the checkpoint files in `dir`, newest first.
Result<std::vector<uint64_t>> ListCheckpoints(FileSystem& fs, const std::string& dir);

// A checkpoint no longer kept is renamed to kSpareCheckpointName (one at a
// time; any other is removed), and the next checkpoint is written over it.
// Unlinking a 3 GB checkpoint took the file system ~400 ms, during which
// every log sync waited ~30 ms; a fresh file's blocks are allocated as it is
// written, an overwrite's are not. The spare is never read: it is no
// checkpoint until the new one's header, written last, is synced and the
// file renamed. The price: a spare file's disk space beside the kept ones.
inline constexpr const char* kSpareCheckpointName = "ckpt-spare.vwc.spare";
Status RetireCheckpoint(FileSystem& fs, const std::string& dir, uint64_t lsn);

// DIR/copy/ holds a second copy of the newest checkpoint while a store keeps
// fewer generations than it should because damaged ones were retired (a
// Scrub's repair, an Open's fallback), until the checkpoints are enough again:
// without it, one bad file then left nothing to open. Open reads it only
// where no checkpoint in DIR verifies.
inline constexpr const char* kCheckpointCopyDir = "copy";

using Payloads = std::map<uint64_t, std::vector<std::byte>>;

// How a checkpoint shares the device with the log. A log write that queues
// behind a checkpoint write waits for all of it: beside 1 MiB writes a 4 KiB
// synced write's p99 tripled here, beside 256 KiB ones it grew 1.5x. So while
// `log_active` says the log is taking writes (the store: its durable LSN moved
// within the last 5 ms), the checkpoint writes kQuietWriteBytes at a time, one
// write in flight; otherwise whole stages, four at a time, as fast as the
// device takes them. Asked once per stage, on the thread that writes the
// checkpoint.
struct CheckpointPacing {
  std::function<bool()> log_active;  // empty: whole stages always
};
inline constexpr size_t kQuietWriteBytes = 256 << 10;
// 4 MiB stages (and writes) doubled the append p99 beside back-to-back
// checkpoints at 1M vectors, however the log's activity was sensed.
inline constexpr size_t kCheckpointStageBytes = 1 << 20;

// Writes a checkpoint of `idx` and `payloads` at `lsn` into `dir`, and
// returns its path once it is durable under its final name.
Result<std::string> WriteCheckpoint(FileSystem& fs, const std::string& dir, uint64_t lsn,
                                    const index::VectorIndex& idx, const Payloads& payloads);
// The same from an index already serialized (VectorIndex::Serialize's bytes),
// so that the file is written without holding the index.
Result<std::string> WriteCheckpoint(FileSystem& fs, const std::string& dir, uint64_t lsn,
                                    const index::IndexSpec& spec, uint64_t live_count,
                                    std::span<const std::byte> index_bytes, const Payloads& payloads,
                                    const CheckpointPacing& pacing = {});
// Produces the index section's next bytes straight into `room` (the free
// part of a staging buffer), filling it unless fewer are left, and returns how
// many it wrote; 0 once the section is whole (IndexExport::Next's contract).
using IndexSectionSource = std::function<Result<size_t>(std::span<std::byte> room)>;
// The same with the index section produced by `source`, in pieces (from an
// IndexExport, while writes go on): each byte is copied once, into the stage
// the file is written from.
Result<std::string> WriteCheckpoint(FileSystem& fs, const std::string& dir, uint64_t lsn,
                                    const index::IndexSpec& spec, uint64_t live_count,
                                    const IndexSectionSource& source, const Payloads& payloads,
                                    const CheckpointPacing& pacing = {});

// Copies the checkpoint at `from` into the directory `to_dir` under the same
// name, as WriteCheckpoint writes one (a .tmp file, synced, renamed, the
// directory synced), and returns what it holds. Each section's CRC is checked
// as it is read, before the copy is named: Corruption names `from`'s damaged
// section. The copy is not read back here.
Result<CheckpointInfo> CopyCheckpoint(FileSystem& fs, const std::string& from, const std::string& to_dir,
                                      const CheckpointPacing& pacing = {});

struct LoadedCheckpoint {
  CheckpointInfo info;
  std::unique_ptr<index::VectorIndex> index;
  Payloads payloads;
};

// One section of a checkpoint file, as its header block describes it.
struct CheckpointSection {
  std::string name;  // "index" or "payloads"
  uint64_t offset = 0, length = 0;
  uint32_t crc = 0;
  std::string problem;  // empty when its bytes match its CRC
};

struct CheckpointReport {
  CheckpointInfo info;
  std::vector<CheckpointSection> sections;
  bool ok() const;
  std::string problems() const;  // the sections' problems, "; "-joined; empty where ok()
};

// Reads the header block only (its CRC is checked).
Result<CheckpointInfo> ReadCheckpointInfo(FileSystem& fs, const std::string& path);
// Reads the header and every section and checks each CRC, loading nothing
// (each section streams through 8 MiB): what an inspector, a scrub or a
// backup's read-back runs on a file a live process may be using. An error
// means the header block itself is unreadable; section damage is reported
// per section.
Result<CheckpointReport> VerifyCheckpoint(FileSystem& fs, const std::string& path);
// Reads and verifies every byte of a checkpoint; errors name the file, the
// section and its offset.
Result<LoadedCheckpoint> LoadCheckpoint(FileSystem& fs, const std::string& path);

}  // namespace vecwal::recovery
