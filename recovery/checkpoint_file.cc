#include "recovery/checkpoint_file.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <deque>
#include <future>

#include "io/crc32c.h"
#include "io/little_endian.h"
#include "recovery/io_threads.h"
#include "wal/format.h"

namespace vecwal::recovery {
namespace {

constexpr uint64_t kMagic = 0x4b434c4157434556ull;  // bytes "VECWALCK"
constexpr size_t kHeaderBytes = 4096;
constexpr size_t kMaxDescription = 1024;
constexpr size_t kTableOffset = 1088;
constexpr size_t kEntryBytes = 32;
constexpr size_t kCrcOffset = kHeaderBytes - 4;

enum SectionKind : uint32_t { kIndexSection = 1, kPayloadSection = 2 };
const char* SectionName(uint32_t k) { return k == kIndexSection ? "index" : k == kPayloadSection ? "payloads" : "?"; }

struct Section {
  uint32_t kind = 0;
  uint64_t offset = 0, length = 0;
  uint32_t crc = 0;
};

// Streams a section into the file through five aligned staging buffers,
// with its CRC: while one fills, the others are written (O_DIRECT, so every
// write is block-aligned) by IoThreads, so copying and checksumming overlap
// the device's work. While the log is quiet four stages are in flight at
// once (two left this disk idle between writes: a 3 GB checkpoint took 1.97 s
// against 1.76 s, medians of six); while it is active (CheckpointPacing) one,
// in kQuietWriteBytes pieces, so that a log write never queues behind more
// than one such piece.
class SectionWriter {
 public:
  SectionWriter(File& f, uint64_t offset, const CheckpointPacing& pacing)
      : f_(f),
        pacing_(pacing),
        offset_(offset) {
    stages_.reserve(kStages);
    for (size_t i = 0; i < kStages; ++i)  // only filled bytes are written
      stages_.emplace_back(kCheckpointStageBytes, 4096, AlignedBuffer::kUninitialized);
  }
  ~SectionWriter() { (void)WaitUntil(0); }
  Status Append(std::span<const std::byte> b) {
    while (!b.empty()) {
      VECWAL_RETURN_IF_ERROR(Fill([&](std::span<std::byte> room) -> Result<size_t> {
        const size_t n = std::min(b.size(), room.size());
        std::memcpy(room.data(), b.data(), n);
        b = b.subspan(n);
        return n;
      }));
    }
    return Status::OK();
  }
  // Lets `source` write into the current stage's free room until it writes
  // less than the room (it is done), checksumming what it wrote.
  Status FillFrom(const IndexSectionSource& source) {
    bool more = true;
    while (more) {
      VECWAL_RETURN_IF_ERROR(Fill([&](std::span<std::byte> room) -> Result<size_t> {
        VECWAL_ASSIGN_OR_RETURN(size_t n, source(room));
        more = n == room.size();
        return n;
      }));
    }
    return Status::OK();
  }
  // Writes the rest, padded with zeros to the block; returns the section.
  Result<Section> Finish(uint32_t kind) {
    size_t padded = AlignUp(used_, 4096);
    std::memset(stages_[cur_].data() + used_, 0, padded - used_);
    used_ = padded;
    VECWAL_RETURN_IF_ERROR(Drain());
    VECWAL_RETURN_IF_ERROR(WaitUntil(0));
    return Section{kind, start_, length_, crc_};
  }
  uint64_t end() const { return offset_; }

 private:
  static constexpr size_t kStages = 5, kQuietInFlight = 4;
  // One call of `fill` on the current stage's free room; it returns how many
  // bytes it wrote there.
  template <typename F>
  Status Fill(F&& fill) {
    AlignedBuffer& stage = stages_[cur_];
    const std::span<std::byte> room = stage.span().subspan(used_);
    VECWAL_ASSIGN_OR_RETURN(size_t n, fill(room));
    if (n > room.size()) return Status::Corruption("checkpoint section: a source wrote past its room");
    crc_ = crc32c::Extend(crc_, room.data(), n);
    length_ += n;
    used_ += n;
    return used_ == stage.size() ? Drain() : Status::OK();
  }
  // Starts writing the current stage and moves to the next one.
  // Invariant: at most kQuietInFlight stages are in flight, the oldest ones,
  // so the stage moved to is free.
  Status Drain() {
    if (used_ == 0) return Status::OK();
    const bool log_active = pacing_.log_active && pacing_.log_active();
    VECWAL_RETURN_IF_ERROR(WaitUntil(log_active ? 0 : kQuietInFlight - 1));
    const size_t piece = log_active ? kQuietWriteBytes : used_;
    pending_.push_back(io_.Run([this, off = offset_, data = stages_[cur_].span().first(used_), piece] {
      return WriteInPieces(off, data, piece);
    }));
    offset_ += used_;
    used_ = 0;
    cur_ = (cur_ + 1) % kStages;
    return Status::OK();
  }
  // Waits until at most `n` writes are in flight, the newest; the first
  // error wins.
  Status WaitUntil(size_t n) {
    Status first;
    while (pending_.size() > n) {
      Status s = pending_.front().get();
      pending_.pop_front();
      if (first.ok()) first = s;
    }
    return first;
  }
  Status WriteInPieces(uint64_t off, std::span<const std::byte> data, size_t piece) {
    while (!data.empty()) {
      const size_t n = std::min(data.size(), piece);
      VECWAL_RETURN_IF_ERROR(f_.WriteAt(off, data.first(n)));
      off += n;
      data = data.subspan(n);
    }
    return Status::OK();
  }

  File& f_;
  const CheckpointPacing& pacing_;
  uint64_t offset_;
  const uint64_t start_ = offset_;
  std::vector<AlignedBuffer> stages_;  // kStages
  size_t cur_ = 0;
  size_t used_ = 0;
  uint64_t length_ = 0;
  uint32_t crc_ = 0;
  std::deque<std::future<Status>> pending_;  // oldest first
  IoThreads io_{kQuietInFlight};             // last: joined before the stages go
};

void EncodePayloads(const Payloads& p, std::vector<std::byte>& out, Payloads::const_iterator& it, size_t budget) {
  auto put = [&](const void* v, size_t n) {
    const auto* b = static_cast<const std::byte*>(v);
    out.insert(out.end(), b, b + n);
  };
  while (it != p.end() && out.size() < budget) {
    uint64_t id = it->first;
    uint32_t len = static_cast<uint32_t>(it->second.size());
    put(&id, 8);
    put(&len, 4);
    put(it->second.data(), len);
    ++it;
  }
}

std::string Where(const std::string& path, const Section& s) {
  return path + ": " + SectionName(s.kind) + " section at offset " + std::to_string(s.offset) + " (" +
         std::to_string(s.length) + " bytes)";
}

// A read that came back short, `read` bytes into the section.
Status EndsEarly(const std::string& path, const Section& s, uint64_t read) {
  return Status::Corruption(Where(path, s) + ": the file ends " + std::to_string(s.length - read) +
                            " bytes before the section does");
}

struct Header {
  CheckpointInfo info;
  std::vector<Section> sections;
  std::vector<std::byte> block;  // the header block as read, its CRC checked
};

Result<Header> ReadHeader(File& f, const std::string& path) {
  VECWAL_ASSIGN_OR_RETURN(uint64_t size, f.Size());
  if (size < kHeaderBytes) return Status::Corruption(path + ": " + std::to_string(size) + " bytes, no header block");
  VECWAL_ASSIGN_OR_RETURN(auto hb, ReadRange(f, 0, kHeaderBytes));
  const std::byte* p = hb.data();
  if (GetLE<uint64_t>(p, 0) != kMagic) return Status::Corruption(path + ": not a vecwal checkpoint (bad magic)");
  if (GetLE<uint32_t>(p, kCrcOffset) != crc32c::Value(p, kCrcOffset))
    return Status::Corruption(path + ": header block checksum mismatch at offset 0");
  if (uint32_t v = GetLE<uint32_t>(p, 8); v != kCheckpointVersion)
    return Status::NotSupported(path + ": checkpoint version " + std::to_string(v) + ", this build reads " +
                                std::to_string(kCheckpointVersion));
  Header h;
  h.info.lsn = GetLE<uint64_t>(p, 16);
  h.info.spec.dim = GetLE<uint32_t>(p, 24);
  h.info.spec.metric = static_cast<index::Metric>(GetLE<uint8_t>(p, 28));
  h.info.live_count = GetLE<uint64_t>(p, 32);
  h.info.payload_count = GetLE<uint64_t>(p, 40);
  uint32_t nsec = GetLE<uint32_t>(p, 48), dlen = GetLE<uint32_t>(p, 52);
  if (dlen > kMaxDescription || nsec > (kCrcOffset - kTableOffset) / kEntryBytes)
    return Status::Corruption(path + ": header block fields out of range");
  h.info.spec.description.assign(reinterpret_cast<const char*>(p + 56), dlen);
  h.info.file_bytes = size;
  h.block = std::move(hb);
  p = h.block.data();
  for (uint32_t i = 0; i < nsec; ++i) {
    const std::byte* e = p + kTableOffset + i * kEntryBytes;
    Section s{GetLE<uint32_t>(e, 0), GetLE<uint64_t>(e, 8), GetLE<uint64_t>(e, 16), GetLE<uint32_t>(e, 24)};
    if (s.offset % 4096 != 0 || s.offset < kHeaderBytes || s.offset + s.length > size)
      return Status::Corruption(Where(path, s) + ": outside the file of " + std::to_string(size) + " bytes");
    h.sections.push_back(s);
  }
  return h;
}

// A section's bytes, read straight into an aligned buffer (sections start on
// a block boundary): no zeroing, no copy out of a bounce buffer.
struct SectionBytes {
  AlignedBuffer buf;
  std::span<const std::byte> bytes;
};

struct OpenedCheckpoint {
  std::unique_ptr<File> file;
  Header header;
};

Result<OpenedCheckpoint> OpenCheckpoint(FileSystem& fs, const std::string& path) {
  FileOpenOptions ro;
  VECWAL_ASSIGN_OR_RETURN(auto f, fs.Open(path, ro));
  VECWAL_ASSIGN_OR_RETURN(Header h, ReadHeader(*f, path));
  return OpenedCheckpoint{std::move(f), std::move(h)};
}

Result<SectionBytes> ReadSectionBytes(File& f, const std::string& path, const Section& s) {
  const size_t a = std::max<size_t>(f.alignment(), 1);
  SectionBytes out{AlignedBuffer(AlignUp(s.length, a), std::max<size_t>(a, 64), AlignedBuffer::kUninitialized), {}};
  VECWAL_ASSIGN_OR_RETURN(size_t got, f.ReadAt(s.offset, out.buf.span()));
  if (got < s.length) return EndsEarly(path, s, got);
  out.bytes = out.buf.span().first(s.length);
  return out;
}

// Whether `crc`, computed over section `s`'s bytes, is the one its entry
// holds. A section's CRC32C is the line its bytes cross to be trusted: an
// index section that matches goes to FAISS's own parser, which trusts the
// counts it reads (READVECTOR resizes to any length below 2^40 before it
// reads an element; ArrayInvertedLists resizes to any nlist). A CRC detects
// damage, not forgery, and the store's directory is the store's alone, so
// what matches is what CheckpointWriter wrote. libFuzzer's comparison
// tracing would read the computed CRC off this comparison and write it into
// its input, handing FAISS bytes no writer made (checkpoint_fuzz found a
// 128 GiB vector that way); so the comparison is kept from the fuzzer's
// instrumentation, out of line. The fuzz target forges CRCs itself, only
// where vecwal's own parsers read the bytes.
#if defined(__clang__)
__attribute__((noinline, no_sanitize("coverage")))
#else
__attribute__((noinline))
#endif
bool SectionCrcMatches(const Section& s, uint32_t crc) {
  return crc == s.crc;
}

// A section's bytes once they match its CRC.
Result<SectionBytes> ReadVerifiedSection(File& f, const std::string& path, const Section& s) {
  VECWAL_ASSIGN_OR_RETURN(auto sec, ReadSectionBytes(f, path, s));
  if (!SectionCrcMatches(s, crc32c::Value(sec.bytes)))
    return Status::Corruption(Where(path, s) + ": checksum mismatch");
  return sec;
}

// A section's CRC32C, computed as it is read in pieces: verifying a 3 GB
// checkpoint (Scrub, a backup's read-back, the inspector) takes 8 MiB of
// memory, not a second copy of the index.
Result<uint32_t> StreamSectionCrc(File& f, const std::string& path, const Section& s) {
  constexpr uint64_t kPiece = 8 << 20;
  const size_t a = std::max<size_t>(f.alignment(), 1);
  AlignedBuffer buf(AlignUp(std::min(s.length, kPiece), a), std::max<size_t>(a, 64), AlignedBuffer::kUninitialized);
  uint32_t crc = 0;
  for (uint64_t done = 0; done < s.length;) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(s.length - done, buf.size()));
    VECWAL_ASSIGN_OR_RETURN(size_t got, f.ReadAt(s.offset + done, buf.span().first(AlignUp(want, a))));
    if (got < want)
      return EndsEarly(path, s, done + got);
    crc = crc32c::Extend(crc, buf.data(), want);
    done += want;
  }
  return crc;
}

// The index section, loaded. Where the index can place its vectors straight
// into its own storage, the section streams through three 8 MiB buffers
// (two reads in flight while one is checksummed and placed) and the index is used
// only once the whole section matched its CRC; otherwise it is read whole,
// verified, and parsed by FAISS.
Result<std::unique_ptr<index::VectorIndex>> LoadIndexSection(File& f, const std::string& path,
                                                            const index::IndexSpec& spec, const Section& s) {
  const size_t a = std::max<size_t>(f.alignment(), 1);
  AlignedBuffer head(std::min<uint64_t>(AlignUp(index::kLoaderHeadBytes, a), AlignUp(s.length, a)),
                     std::max<size_t>(a, 64), AlignedBuffer::kUninitialized);
  VECWAL_ASSIGN_OR_RETURN(size_t head_got, f.ReadAt(s.offset, head.span()));
  auto loader = index::NewIndexLoader(spec, head.span().first(std::min<uint64_t>(head_got, s.length)), s.length);
  if (loader == nullptr) {
    VECWAL_ASSIGN_OR_RETURN(auto sec, ReadVerifiedSection(f, path, s));
    return index::LoadFaissIndex(spec, sec.bytes);
  }
  // The tail (ids and tables) is read first, so that its tables are built
  // while the vectors stream; the stream reads it again, for the checksum.
  if (const uint64_t t = loader->tail_offset(); t < s.length) {
    const uint64_t from = t / a * a;
    AlignedBuffer tb(static_cast<size_t>(AlignUp(s.length - from, a)), std::max<size_t>(a, 64),
                     AlignedBuffer::kUninitialized);
    VECWAL_ASSIGN_OR_RETURN(size_t got, f.ReadAt(s.offset + from, tb.span()));
    if (got < s.length - from)
      return EndsEarly(path, s, from + got);
    VECWAL_RETURN_IF_ERROR(loader->FeedTail(tb.span().subspan(static_cast<size_t>(t - from))
                                                .first(static_cast<size_t>(s.length - t))));
  }
  // Several reads in flight: one 8 MiB read at a time left the device idle
  // between reads (the load waited on the disk for ~80% of its time).
  constexpr size_t kChunk = 8 << 20;
  constexpr size_t kInFlight = 3;
  const uint64_t chunks = (s.length + kChunk - 1) / kChunk;
  std::vector<AlignedBuffer> bufs;
  for (size_t i = 0; i < std::min<uint64_t>(kInFlight, chunks); ++i)
    bufs.emplace_back(kChunk, std::max<size_t>(a, 64), AlignedBuffer::kUninitialized);
  std::vector<size_t> got_of(bufs.size());  // bytes each buffer's read got
  std::deque<std::future<Status>> reads;     // oldest first
  IoThreads io(static_cast<unsigned>(bufs.size()));  // after bufs and reads: joined before they go
  auto read = [&](uint64_t chunk) {
    const uint64_t at = chunk * kChunk;
    const size_t n = static_cast<size_t>(AlignUp(std::min<uint64_t>(kChunk, s.length - at), a));
    const size_t b = chunk % bufs.size();
    return io.Run([&f, &s, &got_of, buf = bufs[b].data(), b, at, n]() -> Status {
      VECWAL_ASSIGN_OR_RETURN(got_of[b], f.ReadAt(s.offset + at, {buf, n}));
      return Status::OK();
    });
  };
  uint64_t issued = 0;
  for (; issued < bufs.size(); ++issued) reads.push_back(read(issued));
  uint32_t crc = 0;
  for (uint64_t chunk = 0; chunk < chunks; ++chunk) {
    VECWAL_RETURN_IF_ERROR(reads.front().get());
    reads.pop_front();
    const size_t got = got_of[chunk % bufs.size()];
    const uint64_t off = chunk * kChunk;
    const size_t want = static_cast<size_t>(std::min<uint64_t>(kChunk, s.length - off));
    if (got < want)
      return EndsEarly(path, s, off + got);
    const std::span<const std::byte> piece{bufs[chunk % bufs.size()].data(), want};
    crc = crc32c::Extend(crc, piece.data(), piece.size());
    VECWAL_RETURN_IF_ERROR(loader->Feed(piece));
    if (issued < chunks) reads.push_back(read(issued++));  // into the buffer just placed
  }
  if (!SectionCrcMatches(s, crc)) return Status::Corruption(Where(path, s) + ": checksum mismatch");
  return loader->Finish();
}

Result<SectionBytes> ReadSection(File& f, const std::string& path, const Header& h, uint32_t kind) {
  for (const auto& s : h.sections)
    if (s.kind == kind) return ReadVerifiedSection(f, path, s);
  return Status::Corruption(path + ": no " + SectionName(kind) + " section");
}

Result<Payloads> DecodePayloads(std::span<const std::byte> b, uint64_t count, const std::string& where) {
  Payloads out;
  size_t pos = 0;
  for (uint64_t i = 0; i < count; ++i) {
    if (b.size() - pos < 12) return Status::Corruption(where + ": payload " + std::to_string(i) + " truncated");
    uint64_t id = GetLE<uint64_t>(b.data(), pos);
    uint32_t len = GetLE<uint32_t>(b.data(), pos + 8);
    pos += 12;
    if (b.size() - pos < len) return Status::Corruption(where + ": payload of id " + std::to_string(id) + " truncated");
    out.emplace(id, std::vector<std::byte>(b.begin() + pos, b.begin() + pos + len));
    pos += len;
  }
  if (pos != b.size()) return Status::Corruption(where + ": trailing bytes after " + std::to_string(count) + " payloads");
  return out;
}

}  // namespace

std::string CheckpointFileName(uint64_t lsn) { return wal::NumberedFileName("ckpt-", lsn, ".vwc"); }

Status RetireCheckpoint(FileSystem& fs, const std::string& dir, uint64_t lsn) {
  const std::string path = dir + "/" + CheckpointFileName(lsn);
  VECWAL_ASSIGN_OR_RETURN(auto names, fs.ListDir(dir));
  if (std::find(names.begin(), names.end(), kSpareCheckpointName) != names.end()) return fs.Remove(path);
  return fs.Rename(path, dir + "/" + kSpareCheckpointName);
}

std::optional<uint64_t> ParseCheckpointFileName(const std::string& name) {
  return wal::ParseNumberedFileName(name, "ckpt-", ".vwc");
}

Result<std::vector<uint64_t>> ListCheckpoints(FileSystem& fs, const std::string& dir) {
  VECWAL_ASSIGN_OR_RETURN(auto names, fs.ListDir(dir));
  std::vector<uint64_t> lsns;
  for (const auto& n : names)
    if (auto l = ParseCheckpointFileName(n)) lsns.push_back(*l);
  std::sort(lsns.rbegin(), lsns.rend());
  return lsns;
}

namespace {

Result<std::string> WriteCheckpointFile(FileSystem& fs, const std::string& dir, uint64_t lsn,
                                        const index::IndexSpec& spec, uint64_t live_count,
                                        const std::function<Status(SectionWriter&)>& write_index,
                                        const Payloads& payloads, const CheckpointPacing& pacing) {
  if (spec.description.size() > kMaxDescription)
    return Status::InvalidArgument("index description longer than " + std::to_string(kMaxDescription) + " bytes");
  const std::string final_path = dir + "/" + CheckpointFileName(lsn);
  const std::string tmp = final_path + ".tmp";
  (void)fs.Remove(tmp);  // a crash's leftover
  // Overwrite a retired checkpoint's file where there is one: its blocks are
  // allocated already, so the writes need no allocation and nothing is freed.
  const bool recycled = fs.Rename(dir + "/" + kSpareCheckpointName, tmp).ok();
  FileOpenOptions o;
  o.writable = true;
  o.create = o.exclusive = !recycled;
  VECWAL_ASSIGN_OR_RETURN(auto f, fs.Open(tmp, o));
  std::vector<Section> sections;
  uint64_t at = kHeaderBytes;
  {
    SectionWriter w(*f, at, pacing);
    VECWAL_RETURN_IF_ERROR(write_index(w));
    VECWAL_ASSIGN_OR_RETURN(Section s, w.Finish(kIndexSection));
    sections.push_back(s);
    at = w.end();
  }
  {
    SectionWriter w(*f, at, pacing);
    std::vector<std::byte> chunk;
    for (auto it = payloads.begin(); it != payloads.end();) {
      chunk.clear();
      EncodePayloads(payloads, chunk, it, 1 << 20);
      VECWAL_RETURN_IF_ERROR(w.Append(chunk));
    }
    VECWAL_ASSIGN_OR_RETURN(Section s, w.Finish(kPayloadSection));
    sections.push_back(s);
    at = w.end();
  }
  // The old file's bytes past the new end go; made durable with the rest.
  if (recycled) VECWAL_RETURN_IF_ERROR(fs.Truncate(tmp, at));
  AlignedBuffer hb(kHeaderBytes, 4096);
  std::byte* p = hb.data();
  PutLE(p, 0, kMagic);
  PutLE(p, 8, kCheckpointVersion);
  PutLE(p, 12, static_cast<uint32_t>(kHeaderBytes));
  PutLE(p, 16, lsn);
  PutLE(p, 24, spec.dim);
  PutLE(p, 28, static_cast<uint8_t>(spec.metric));
  PutLE(p, 32, live_count);
  PutLE(p, 40, static_cast<uint64_t>(payloads.size()));
  PutLE(p, 48, static_cast<uint32_t>(sections.size()));
  PutLE(p, 52, static_cast<uint32_t>(spec.description.size()));
  std::memcpy(p + 56, spec.description.data(), spec.description.size());
  for (size_t i = 0; i < sections.size(); ++i) {
    std::byte* e = p + kTableOffset + i * kEntryBytes;
    PutLE(e, 0, sections[i].kind);
    PutLE(e, 8, sections[i].offset);
    PutLE(e, 16, sections[i].length);
    PutLE(e, 24, sections[i].crc);
  }
  PutLE(p, kCrcOffset, crc32c::Value(p, kCrcOffset));
  VECWAL_RETURN_IF_ERROR(f->WriteAt(0, hb.span()));
  VECWAL_RETURN_IF_ERROR(f->Sync());
  f.reset();
  VECWAL_RETURN_IF_ERROR(fs.Rename(tmp, final_path));
  VECWAL_RETURN_IF_ERROR(fs.SyncDir(dir));
  return final_path;
}

}  // namespace

Result<std::string> WriteCheckpoint(FileSystem& fs, const std::string& dir, uint64_t lsn,
                                    const index::VectorIndex& idx, const Payloads& payloads) {
  return WriteCheckpointFile(fs, dir, lsn, idx.spec(), idx.size(),
                             [&](SectionWriter& w) {
                               return idx.Serialize([&](std::span<const std::byte> b) { return w.Append(b); });
                             },
                             payloads, {});
}

Result<std::string> WriteCheckpoint(FileSystem& fs, const std::string& dir, uint64_t lsn,
                                    const index::IndexSpec& spec, uint64_t live_count,
                                    std::span<const std::byte> index_bytes, const Payloads& payloads,
                                    const CheckpointPacing& pacing) {
  return WriteCheckpointFile(fs, dir, lsn, spec, live_count,
                             [&](SectionWriter& w) { return w.Append(index_bytes); }, payloads, pacing);
}

Result<std::string> WriteCheckpoint(FileSystem& fs, const std::string& dir, uint64_t lsn,
                                    const index::IndexSpec& spec, uint64_t live_count,
                                    const IndexSectionSource& source, const Payloads& payloads,
                                    const CheckpointPacing& pacing) {
  return WriteCheckpointFile(fs, dir, lsn, spec, live_count, [&](SectionWriter& w) { return w.FillFrom(source); },
                             payloads, pacing);
}

Result<CheckpointInfo> CopyCheckpoint(FileSystem& fs, const std::string& from, const std::string& to_dir,
                                      const CheckpointPacing& pacing) {
  VECWAL_ASSIGN_OR_RETURN(auto c, OpenCheckpoint(fs, from));
  const Header& h = c.header;
  File& src = *c.file;
  const std::string final_path = to_dir + "/" + CheckpointFileName(h.info.lsn);
  const std::string tmp = final_path + ".tmp";
  FileOpenOptions o;
  o.writable = o.create = o.exclusive = true;
  VECWAL_ASSIGN_OR_RETURN(auto f, fs.Open(tmp, o));
  // A copy that failed is no checkpoint: its header, written last, never
  // reached it, and the partial file goes.
  struct RemoveUnlessDone {
    FileSystem& fs;
    const std::string& path;
    bool done = false;
    ~RemoveUnlessDone() {
      if (!done) (void)fs.Remove(path);
    }
  } cleanup{fs, tmp};
  const size_t a = std::max<size_t>(src.alignment(), 1);
  for (const Section& s : h.sections) {
    // Each section is read straight into the stage it is written from, its
    // CRC taken on the way: bytes that changed on the store's disk since the
    // checkpoint was written are found here, before the copy is named.
    SectionWriter w(*f, s.offset, pacing);
    uint64_t done = 0;
    VECWAL_RETURN_IF_ERROR(w.FillFrom([&](std::span<std::byte> room) -> Result<size_t> {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(s.length - done, room.size()));
      if (n == 0) return size_t{0};
      if (AlignUp(n, a) > room.size())  // a stage is a whole number of blocks
        return Status::InvalidArgument(from + ": block size " + std::to_string(a) + " does not divide a copy stage");
      VECWAL_ASSIGN_OR_RETURN(size_t got, src.ReadAt(s.offset + done, room.first(AlignUp(n, a))));
      if (got < n)
        return EndsEarly(from, s, done + got);
      done += n;
      return n;
    }));
    VECWAL_ASSIGN_OR_RETURN(Section copied, w.Finish(s.kind));
    if (!SectionCrcMatches(s, copied.crc))
      return Status::Corruption(Where(from, s) + ": checksum mismatch (read to copy it to " + to_dir + ")");
  }
  AlignedBuffer hb(kHeaderBytes, 4096);
  std::memcpy(hb.data(), h.block.data(), kHeaderBytes);
  VECWAL_RETURN_IF_ERROR(f->WriteAt(0, hb.span()));
  VECWAL_RETURN_IF_ERROR(f->Sync());
  f.reset();
  VECWAL_RETURN_IF_ERROR(fs.Rename(tmp, final_path));
  cleanup.done = true;
  VECWAL_RETURN_IF_ERROR(fs.SyncDir(to_dir));
  return h.info;
}

Result<CheckpointInfo> ReadCheckpointInfo(FileSystem& fs, const std::string& path) {
  VECWAL_ASSIGN_OR_RETURN(auto c, OpenCheckpoint(fs, path));
  return c.header.info;
}

bool CheckpointReport::ok() const {
  return std::all_of(sections.begin(), sections.end(), [](const auto& s) { return s.problem.empty(); });
}

std::string CheckpointReport::problems() const {
  std::string all;
  for (const auto& s : sections)
    if (!s.problem.empty()) all += (all.empty() ? "" : "; ") + s.problem;
  return all;
}

Result<CheckpointReport> VerifyCheckpoint(FileSystem& fs, const std::string& path) {
  VECWAL_ASSIGN_OR_RETURN(auto c, OpenCheckpoint(fs, path));
  File* f = c.file.get();
  const Header& h = c.header;
  CheckpointReport r;
  r.info = h.info;
  for (const auto& s : h.sections) {
    CheckpointSection out{SectionName(s.kind), s.offset, s.length, s.crc, ""};
    auto crc = StreamSectionCrc(*f, path, s);
    if (!crc.ok()) out.problem = crc.status().ToString();
    else if (!SectionCrcMatches(s, *crc)) out.problem = Status::Corruption(Where(path, s) + ": checksum mismatch").ToString();
    r.sections.push_back(std::move(out));
  }
  for (uint32_t kind : {kIndexSection, kPayloadSection})
    if (std::none_of(h.sections.begin(), h.sections.end(), [&](const Section& s) { return s.kind == kind; }))
      r.sections.push_back({SectionName(kind), 0, 0, 0, path + ": no " + std::string(SectionName(kind)) + " section"});
  return r;
}

Result<LoadedCheckpoint> LoadCheckpoint(FileSystem& fs, const std::string& path) {
  VECWAL_ASSIGN_OR_RETURN(auto c, OpenCheckpoint(fs, path));
  File* f = c.file.get();
  const Header& h = c.header;
  LoadedCheckpoint out;
  out.info = h.info;
  {
    auto s = std::find_if(h.sections.begin(), h.sections.end(), [](const Section& x) { return x.kind == kIndexSection; });
    if (s == h.sections.end()) return Status::Corruption(path + ": no " + SectionName(kIndexSection) + " section");
    auto idx = LoadIndexSection(*f, path, h.info.spec, *s);
    if (!idx.ok()) return idx.status().WithContext(path + ": index section");
    out.index = std::move(idx).value();
  }
  if (out.index->size() != h.info.live_count)
    return Status::Corruption(path + ": index holds " + std::to_string(out.index->size()) + " ids, header says " +
                              std::to_string(h.info.live_count));
  VECWAL_ASSIGN_OR_RETURN(auto pb, ReadSection(*f, path, h, kPayloadSection));
  VECWAL_ASSIGN_OR_RETURN(out.payloads, DecodePayloads(pb.bytes, h.info.payload_count, path + ": payloads section"));
  return out;
}

}  // namespace vecwal::recovery
