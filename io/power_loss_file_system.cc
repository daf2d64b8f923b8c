#include "io/power_loss_file_system.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <span>
#include <unordered_map>

namespace vecwal {
namespace {

namespace stdfs = std::filesystem;

std::string Parent(const std::string& path) {
  auto k = path.rfind('/');
  return k == std::string::npos ? std::string() : path.substr(0, k);
}

class RecordingFile final : public File {
 public:
  RecordingFile(std::unique_ptr<File> base, PowerLossRecorder* rec) : base_(std::move(base)), rec_(rec) {}
  const std::string& path() const override { return base_->path(); }
  bool is_direct() const override { return base_->is_direct(); }
  size_t alignment() const override { return base_->alignment(); }
  Result<size_t> ReadAt(uint64_t off, std::span<std::byte> dst) override { return base_->ReadAt(off, dst); }
  Status WriteAt(uint64_t off, std::span<const std::byte> src) override {
    // Recorded whatever the outcome: a failed write may have reached part of the file.
    rec_->Record({DiskOp::kWrite, path(), "", off, {src.begin(), src.end()}, 0, 0});
    return base_->WriteAt(off, src);
  }
  Status Sync() override {
    // Only writes recorded before the sync began are made durable by it.
    const uint64_t start = rec_->op_count();
    Status s = base_->Sync();
    if (s.ok()) rec_->Record({DiskOp::kSync, path(), "", start, {}, 0, 0});
    return s;
  }
  Result<uint64_t> Size() override { return base_->Size(); }
  File& base() { return *base_; }

 private:
  std::unique_ptr<File> base_;
  PowerLossRecorder* rec_;
};

class RecordingQueue final : public DurableWriteQueue {
 public:
  RecordingQueue(std::unique_ptr<DurableWriteQueue> base, PowerLossRecorder* rec) : base_(std::move(base)), rec_(rec) {}
  unsigned depth() const override { return base_->depth(); }
  std::string name() const override { return "power-loss recorder over " + base_->name(); }
  Status Submit(const WriteRequest& req) override {
    auto& f = dynamic_cast<RecordingFile&>(*req.file);
    uint64_t id = rec_->Record({DiskOp::kWrite, f.path(), "", req.offset, {req.data.begin(), req.data.end()}, 0, 0});
    ids_[req.tag] = id;
    WriteRequest inner = req;
    inner.file = &f.base();
    return base_->Submit(inner);
  }
  Status Wait(std::vector<WriteCompletion>& out, bool block) override {
    const size_t first = out.size();
    VECWAL_RETURN_IF_ERROR(base_->Wait(out, block));
    for (size_t i = first; i < out.size(); ++i) {
      auto it = ids_.find(out[i].tag);
      if (it == ids_.end()) continue;
      if (out[i].status.ok()) rec_->Record({DiskOp::kDurable, "", "", 0, {}, 0, it->second});
      ids_.erase(it);
    }
    return Status::OK();
  }
  void Wake() override { base_->Wake(); }

 private:
  std::unique_ptr<DurableWriteQueue> base_;
  PowerLossRecorder* rec_;
  std::unordered_map<uint64_t, uint64_t> ids_;  // tag -> write id; owner thread only
};

// --- the image ------------------------------------------------------------

struct Pending {
  size_t op_index;
  uint64_t write_id;
  uint64_t offset;
  const std::vector<std::byte>* data;
  size_t len;  // of data: less once a truncation cut the write short
  std::span<const std::byte> bytes() const { return std::span(*data).first(len); }
};

struct FileObj {
  std::vector<std::byte> durable;
  std::vector<Pending> pending;
};
using Obj = std::shared_ptr<FileObj>;

void Put(std::vector<std::byte>& content, uint64_t off, std::span<const std::byte> b) {
  if (content.size() < off + b.size()) content.resize(off + b.size());
  std::memcpy(content.data() + off, b.data(), b.size());
}

// Keeps a random subset of the write's 512-byte sectors.
void PutTorn(std::vector<std::byte>& content, const Pending& p, std::mt19937_64& rng) {
  const auto d = p.bytes();
  for (size_t s = 0; s < d.size(); s += 512)
    if (rng() % 2) Put(content, p.offset + s, d.subspan(s, std::min<size_t>(512, d.size() - s)));
}

}  // namespace

const char* ToString(CrashVariant v) {
  switch (v) {
    case CrashVariant::kDropVolatile: return "drop volatile";
    case CrashVariant::kKeepVolatile: return "keep volatile";
    case CrashVariant::kTornLast: return "tear the newest write";
    case CrashVariant::kRandomSubset: return "random subset, torn, reordered";
  }
  return "?";
}

uint64_t PowerLossRecorder::Record(DiskOp op) {
  std::lock_guard lk(mu_);
  if (op.kind == DiskOp::kWrite) op.write_id = next_write_id_++;
  uint64_t id = op.write_id;
  ops_.push_back(std::move(op));
  return id;
}

std::vector<DiskOp> PowerLossRecorder::ops() const {
  std::lock_guard lk(mu_);
  return ops_;
}

uint64_t PowerLossRecorder::op_count() const {
  std::lock_guard lk(mu_);
  return ops_.size();
}

Result<std::unique_ptr<File>> PowerLossRecorder::Open(const std::string& path, const FileOpenOptions& o) {
  const bool created = o.create && !stdfs::exists(path);
  VECWAL_ASSIGN_OR_RETURN(auto f, base_->Open(path, o));
  // Zero-fill is written and fdatasynced inside Open: durable zeros.
  if (created) Record({DiskOp::kCreate, path, "", 0, {}, o.zero_fill_bytes, 0});
  return std::unique_ptr<File>(std::make_unique<RecordingFile>(std::move(f), this));
}

Result<std::unique_ptr<DurableWriteQueue>> PowerLossRecorder::NewWriteQueue(unsigned depth, DurableWriteMode mode) {
  VECWAL_ASSIGN_OR_RETURN(auto q, base_->NewWriteQueue(depth, mode));
  return std::unique_ptr<DurableWriteQueue>(std::make_unique<RecordingQueue>(std::move(q), this));
}

Status PowerLossRecorder::SyncDir(const std::string& dir) {
  const uint64_t start = op_count();
  VECWAL_RETURN_IF_ERROR(base_->SyncDir(dir));
  Record({DiskOp::kSyncDir, dir, "", start, {}, 0, 0});
  return Status::OK();
}

Status PowerLossRecorder::Rename(const std::string& from, const std::string& to) {
  Record({DiskOp::kRename, from, to, 0, {}, 0, 0});
  return base_->Rename(from, to);
}

Status PowerLossRecorder::Remove(const std::string& path) {
  Record({DiskOp::kRemove, path, "", 0, {}, 0, 0});
  return base_->Remove(path);
}

Status PowerLossRecorder::Truncate(const std::string& path, uint64_t size) {
  Record({DiskOp::kTruncate, path, "", size, {}, 0, 0});
  return base_->Truncate(path, size);
}

Status BuildCrashImage(const std::vector<DiskOp>& ops, size_t n, CrashVariant variant, std::mt19937_64& rng,
                       const std::string& recorded_root, const std::string& out_root) {
  std::map<std::string, Obj> live, durable;  // the names as the process saw them, and as synced
  std::unordered_map<uint64_t, Obj> writer_of;
  // Directories renamed while recording (a reindex names its finished
  // store so): files stay keyed by the path under the directory's first
  // name, and these say where that directory is now, as the process sees it
  // and as synced ("" where a rename's removal is synced and its new name
  // is not).
  std::map<std::string, std::string> dir_live, dir_durable;
  // The path under the first names of the directories it lies in.
  auto physical = [&](const std::string& path) {
    for (const auto& [first, now] : dir_live)
      if (path == now || path.rfind(now + "/", 0) == 0) return first + path.substr(now.size());
    return path;
  };
  auto has_files_under = [&](const std::string& dir) {
    auto it = live.lower_bound(dir + "/");
    return it != live.end() && it->first.rfind(dir + "/", 0) == 0;
  };
  auto obj_for = [&](const std::string& path) {
    auto& o = live[path];
    if (!o) {  // written without a recorded create: it existed before recording began
      o = std::make_shared<FileObj>();
      durable[path] = o;
    }
    return o;
  };
  auto make_durable = [](FileObj& f, auto pred) {
    std::vector<Pending> keep;
    for (const auto& p : f.pending) {
      if (pred(p)) Put(f.durable, p.offset, p.bytes());
      else keep.push_back(p);
    }
    f.pending = std::move(keep);
  };
  for (size_t i = 0; i < n && i < ops.size(); ++i) {
    const DiskOp& raw = ops[i];
    const std::string& as_named = raw.path;  // the name the process used
    // The op with its paths under the directories' first names (a write's
    // bytes stay in `ops`, which Pending points into).
    const DiskOp op{raw.kind, physical(raw.path), raw.to.empty() ? raw.to : physical(raw.to),
                    raw.offset, {},  // the bytes: ops[i].data
                    raw.zeros, raw.write_id};
    switch (op.kind) {
      case DiskOp::kCreate: {
        auto o = std::make_shared<FileObj>();
        o->durable.assign(op.zeros, std::byte{0});
        live[op.path] = o;
        break;
      }
      case DiskOp::kWrite: {
        auto o = obj_for(op.path);
        o->pending.push_back({i, op.write_id, op.offset, &ops[i].data, ops[i].data.size()});
        writer_of[op.write_id] = o;
        break;
      }
      case DiskOp::kDurable: {
        auto it = writer_of.find(op.write_id);
        if (it != writer_of.end()) make_durable(*it->second, [&](const Pending& p) { return p.write_id == op.write_id; });
        break;
      }
      case DiskOp::kSync:
        if (auto it = live.find(op.path); it != live.end())
          make_durable(*it->second, [&](const Pending& p) { return p.op_index < op.offset; });
        break;
      case DiskOp::kSyncDir:
        for (auto it = durable.begin(); it != durable.end();)
          it = Parent(it->first) == op.path && !live.count(it->first) ? durable.erase(it) : std::next(it);
        for (const auto& [path, o] : live)
          if (Parent(path) == op.path) durable[path] = o;
        // A renamed directory's new name is durable once the directory it
        // is in is synced; its old name's removal, once that one's is.
        for (auto& [first, now] : dir_live) {
          std::string& synced = dir_durable[first];
          if (Parent(now) == as_named) synced = now;
          else if (!synced.empty() && synced != now && Parent(synced) == as_named) synced.clear();
        }
        break;
      case DiskOp::kRename:
        if (!live.count(op.path) && has_files_under(op.path)) {  // a directory
          if (!dir_live.count(op.path)) dir_durable[op.path] = op.path;
          dir_live[op.path] = raw.to;
          break;
        }
        if (auto it = live.find(op.path); it != live.end()) {
          live[op.to] = it->second;
          live.erase(op.path);
        }
        break;
      case DiskOp::kRemove:
        live.erase(op.path);
        break;
      case DiskOp::kTruncate:
        // Taken as durable at once; volatile writes keep what lies below the
        // new size (a truncation discards only the bytes past it).
        if (auto it = live.find(op.path); it != live.end()) {
          auto& f = *it->second;
          f.durable.resize(op.offset);
          std::vector<Pending> keep;
          for (Pending p : f.pending) {
            if (p.offset >= op.offset) continue;
            p.len = static_cast<size_t>(std::min<uint64_t>(p.len, op.offset - p.offset));
            keep.push_back(p);
          }
          f.pending = std::move(keep);
        }
        break;
    }
  }

  // The names the disk shows: per directory, the synced ones or the newest.
  std::map<std::string, Obj> names;
  if (variant == CrashVariant::kDropVolatile) {
    names = durable;
  } else if (variant == CrashVariant::kRandomSubset) {
    std::map<std::string, bool> keep_dir;
    for (const auto& m : {live, durable})
      for (const auto& [path, o] : m) keep_dir.emplace(Parent(path), rng() % 2 == 0);
    for (const auto& [path, o] : durable)
      if (!keep_dir[Parent(path)]) names[path] = o;
    for (const auto& [path, o] : live)
      if (keep_dir[Parent(path)]) names[path] = o;
  } else {
    names = live;
  }
  // Where each renamed directory is in this image: its synced name, or the
  // newest, or either (kRandomSubset).
  std::map<std::string, std::string> dir_image;
  for (const auto& [first, now] : dir_live) {
    const std::string& synced = dir_durable[first];
    switch (variant) {
      case CrashVariant::kDropVolatile: dir_image[first] = synced; break;
      case CrashVariant::kRandomSubset: dir_image[first] = rng() % 2 == 0 ? synced : now; break;
      default: dir_image[first] = now; break;
    }
  }
  // The path a file is found at in the image; "" where its directory is lost.
  auto imaged = [&](const std::string& path) {
    for (const auto& [first, at] : dir_image)
      if (path.rfind(first + "/", 0) == 0) return at.empty() ? std::string() : at + path.substr(first.size());
    return path;
  };
  // The newest volatile write anywhere: the one kTornLast tears.
  size_t newest = SIZE_MAX;
  for (const auto& [path, o] : live)
    for (const auto& p : o->pending) newest = newest == SIZE_MAX ? p.op_index : std::max(newest, p.op_index);

  for (const auto& [first_path, o] : names) {
    const std::string path = imaged(first_path);
    if (path.empty()) continue;
    if (path.rfind(recorded_root + "/", 0) != 0)
      return Status::InvalidArgument("recorded path " + path + " is outside " + recorded_root);
    std::vector<std::byte> content = o->durable;
    for (const auto& p : o->pending) {
      switch (variant) {
        case CrashVariant::kDropVolatile: break;
        case CrashVariant::kKeepVolatile: Put(content, p.offset, p.bytes()); break;
        case CrashVariant::kTornLast:
          if (p.op_index == newest) PutTorn(content, p, rng);
          else Put(content, p.offset, p.bytes());
          break;
        case CrashVariant::kRandomSubset:
          switch (rng() % 3) {
            case 0: break;
            case 1: Put(content, p.offset, p.bytes()); break;
            case 2: PutTorn(content, p, rng); break;
          }
          break;
      }
    }
    const std::string out = out_root + path.substr(recorded_root.size());
    stdfs::create_directories(Parent(out));
    std::ofstream f(out, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(content.data()), static_cast<std::streamsize>(content.size()));
    if (!f) return Status::IOError("cannot write crash image file " + out);
  }
  return Status::OK();
}

}  // namespace vecwal
