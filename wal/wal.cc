#include "wal/wal.h"

#include <algorithm>

#include "wal/segment_files.h"

namespace vecwal::wal {
namespace {

Status ValidateOptions(const WalOptions& o) {
  if (o.segment_bytes < (64u << 10) || o.segment_bytes % kMinBlockSize != 0)
    return Status::InvalidArgument("segment_bytes must be a multiple of 4096 and at least 64 KiB, not " +
                                   std::to_string(o.segment_bytes));
  if (o.max_writes_in_flight < 1 || o.max_writes_in_flight > 256)
    return Status::InvalidArgument("max_writes_in_flight must be 1..256, not " + std::to_string(o.max_writes_in_flight));
  if (o.max_write_bytes < kMinBlockSize)
    return Status::InvalidArgument("max_write_bytes must be at least 4096, not " + std::to_string(o.max_write_bytes));
  return Status::OK();
}

}  // namespace

Result<std::unique_ptr<Wal>> Wal::Open(const std::string& dir, WalOptions opts, const RecordVisitor& visit,
                                       uint64_t replay_from) {
  VECWAL_RETURN_IF_ERROR(ValidateOptions(opts));
  if (!opts.fs) opts.fs = NewPosixFileSystem();
  FileSystem& fs = *opts.fs;
  std::unique_ptr<Wal> wal(new Wal());
  wal->dir_ = dir;
  wal->opts_ = opts;
  VECWAL_RETURN_IF_ERROR(fs.CreateDir(dir));
  VECWAL_ASSIGN_OR_RETURN(wal->lock_, fs.LockDir(dir, opts.lock_wait_ms));

  VECWAL_ASSIGN_OR_RETURN(wal->seal_, LogSeal::Open(fs, dir));
  VECWAL_ASSIGN_OR_RETURN(wal->report_, ScanLog(fs, dir, replay_from, opts.recovery_mode, visit));
  LogScanReport& rep = wal->report_;
  rep.seal_note = wal->seal_->note();
  // A log that ends below its seal lost acknowledged records: whatever the
  // reader made of its end (a torn tail, or zeros), it is damage. Decided
  // before anything here changes the directory.
  const uint64_t sealed = wal->seal_->sealed_lsn();
  if (const auto lost = wal->seal_->FirstLost(rep.last_lsn, replay_from)) {
    const uint64_t first = *lost;
    std::string why = "LSNs " + std::to_string(first) + " to " + std::to_string(sealed) + " were acknowledged (" +
                      wal->seal_->path() + ") but the log ends at LSN " + std::to_string(rep.last_lsn);
    if (rep.tail_cut) why += ", where " + rep.tail_note;
    if (opts.recovery_mode != RecoveryMode::kSalvage) return Status::Corruption(dir + ": " + why);
    rep.dropped.push_back({first, sealed, wal->seal_->path(), why});
  }
  for (const auto& path : rep.files_to_drop) VECWAL_RETURN_IF_ERROR(fs.Remove(path));

  wal->alloc_ = std::make_unique<SegmentAllocator>(fs, dir, opts.segment_bytes, opts.spare_segments);
  WriterStart start;
  start.next_lsn = rep.last_lsn + 1;
  VECWAL_ASSIGN_OR_RETURN(auto files, ListSegmentFiles(fs, dir));
  const SegmentFileInfo* last = nullptr;
  size_t spares = 0;
  for (const auto& f : files) {
    if (f.state == SegmentFileInfo::State::kLive) {
      start.live_first_lsn[f.id] = f.header.first_lsn;
      if (f.id == rep.last_segment_id) last = &f;
    } else if (f.state == SegmentFileInfo::State::kBlank && f.file_bytes == opts.segment_bytes &&
               spares++ < opts.spare_segments + 1) {
      wal->alloc_->AdoptSpare(f.path);
    } else if (f.state == SegmentFileInfo::State::kBlank) {
      VECWAL_RETURN_IF_ERROR(fs.Remove(f.path));  // a reservation cut short, or one too many
    }
  }

  uint32_t block = 0;
  const bool behind = start.next_lsn < opts.min_next_lsn;
  start.next_lsn = std::max(start.next_lsn, opts.min_next_lsn);
  if (rep.append_in_place && !behind && last != nullptr && last->file_bytes == opts.segment_bytes) {
    FileOpenOptions rw;
    rw.writable = true;
    VECWAL_ASSIGN_OR_RETURN(start.file, fs.Open(last->path, rw));
    start.segment_id = last->id;
    start.epoch = last->header.epoch;
    start.offset = rep.append_offset;
    block = last->header.block_size;
  } else {
    // A torn or full last segment is never appended to: its end stays where
    // the new segment's first LSN says it is.
    uint64_t id = rep.highest_file_id + 1;
    VECWAL_ASSIGN_OR_RETURN(start.file, wal->alloc_->Take(id));
    block = static_cast<uint32_t>(std::max<size_t>(kMinBlockSize, start.file->alignment()));
    SegmentHeader h{id, NewSegmentEpoch(), start.next_lsn, opts.segment_bytes, block};
    VECWAL_RETURN_IF_ERROR(WriteSegmentHeader(*start.file, h));
    start.segment_id = id;
    start.epoch = h.epoch;
    start.offset = block;
    start.live_first_lsn[id] = start.next_lsn;
  }
  if (block < start.file->alignment() || block % start.file->alignment() != 0)
    return Status::NotSupported(start.file->path() + ": block size " + std::to_string(block) +
                                " does not suit the device's direct I/O alignment " +
                                std::to_string(start.file->alignment()));

  VECWAL_ASSIGN_OR_RETURN(auto queue, fs.NewWriteQueue(opts.max_writes_in_flight, opts.durable_mode));
  WriterOptions wo{opts.segment_bytes, block, opts.max_writes_in_flight, opts.max_write_bytes,
                   opts.min_concurrent_write_bytes, opts.thread_slice_us};
  wal->writer_ = std::make_unique<GroupCommitWriter>(fs, dir, wo, std::move(queue), *wal->alloc_, std::move(start));
  // Salvage dropped sealed LSNs, which the log now hands out again: the seal
  // comes down to where the log ends, or the next Open would refuse it.
  if (sealed > wal->writer_->durable_lsn()) VECWAL_RETURN_IF_ERROR(wal->seal_->Seal(wal->writer_->durable_lsn()));
  if (opts.seal_interval_ms != 0) wal->sealer_ = std::thread([w = wal.get()] { w->SealerLoop(); });
  return wal;
}

// A failed seal costs nothing acknowledged (the older slot stays true), and
// the log's own writes report a failing device: the next interval tries again.
void Wal::SealerLoop() {
  const auto interval = std::chrono::milliseconds(opts_.seal_interval_ms);
  std::unique_lock l(seal_mu_);
  while (!seal_cv_.wait_for(l, interval, [&] { return stop_sealer_; }))
    if (const uint64_t lsn = writer_->durable_lsn(); lsn > seal_->sealed_lsn()) (void)seal_->Seal(lsn);
}

Wal::~Wal() { (void)Close(); }

Status Wal::Close() {
  if (!writer_) return Status::OK();
  {
    std::lock_guard l(seal_mu_);
    stop_sealer_ = true;
  }
  seal_cv_.notify_all();
  if (sealer_.joinable()) sealer_.join();
  Status s = writer_->Close();
  alloc_->Quiesce();
  if (s.ok()) s = Seal();  // every append is durable now: a restart finds no torn tail
  return s;
}

Status Wal::Seal() {
  const uint64_t lsn = writer_->durable_lsn();
  std::lock_guard l(seal_mu_);
  if (lsn <= seal_->sealed_lsn()) return Status::OK();
  return seal_->Seal(lsn);
}

Result<uint64_t> Wal::Append(RecordType type, std::span<const std::byte> payload) {
  return writer_->Append({type, payload});
}

Result<uint64_t> Wal::Append(const Op& op) {
  std::vector<std::byte> buf;
  EncodeOp(op, buf);
  return writer_->Append({TypeOf(op), buf});
}

Status Wal::AppendMany(std::span<const RecordView> recs, std::vector<uint64_t>* lsns) {
  return writer_->AppendMany(recs, lsns);
}

void Wal::AppendManyAsync(std::span<const RecordView> recs, AppendCallback done) {
  writer_->AppendManyAsync(recs, std::move(done));
}

void Wal::AppendAsync(RecordType type, std::span<const std::byte> payload, AppendCallback done) {
  writer_->AppendAsync({type, payload}, std::move(done));
}

std::future<Result<uint64_t>> Wal::AppendAsync(RecordType type, std::span<const std::byte> payload) {
  auto promise = std::make_shared<std::promise<Result<uint64_t>>>();
  auto fut = promise->get_future();
  writer_->AppendAsync({type, payload}, [promise](const Status& s, uint64_t lsn) {
    if (s.ok()) promise->set_value(lsn);
    else promise->set_value(s);
  });
  return fut;
}

Result<size_t> Wal::ReleaseBefore(uint64_t lsn) {
  VECWAL_ASSIGN_OR_RETURN(size_t released, writer_->ReleaseBefore(lsn));
  VECWAL_RETURN_IF_ERROR(Seal());
  return released;
}

WalStats Wal::stats() const {
  return {writer_->stats(), writer_->durable_lsn(), opts_.fs->backend_name()};
}

}  // namespace vecwal::wal
