#include "wal/record_ops.h"

#include <cstring>

namespace vecwal::wal {
namespace {

// Upsert:  u64 id, u32 dim, u32 payload_len, f32[dim], u8[payload_len]
// Delete:  u64 id
// Batch:   u32 count, then count x (u8 type, u32 len, u8[len] op payload)
// Marker:  u64 checkpoint_lsn, u32 name_len, u8[name_len]

template <typename T>
void Append(std::vector<std::byte>& out, T v) {
  size_t n = out.size();
  out.resize(n + sizeof(T));
  std::memcpy(out.data() + n, &v, sizeof(T));
}
void AppendBytes(std::vector<std::byte>& out, const void* p, size_t n) {
  size_t at = out.size();
  out.resize(at + n);
  if (n) std::memcpy(out.data() + at, p, n);
}

class Cursor {
 public:
  Cursor(std::span<const std::byte> s, uint64_t lsn) : s_(s), lsn_(lsn) {}
  template <typename T>
  bool Get(T* v) {
    if (s_.size() - pos_ < sizeof(T)) return false;
    std::memcpy(v, s_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool Take(size_t n, std::span<const std::byte>* out) {
    if (s_.size() - pos_ < n) return false;
    *out = s_.subspan(pos_, n);
    pos_ += n;
    return true;
  }
  bool AtEnd() const { return pos_ == s_.size(); }
  Status Error(const std::string& what) const {
    return Status::Corruption("record LSN " + std::to_string(lsn_) + ": " + what + " (at payload byte " +
                              std::to_string(pos_) + " of " + std::to_string(s_.size()) + ")");
  }

 private:
  std::span<const std::byte> s_;
  size_t pos_ = 0;
  uint64_t lsn_;
};

Result<OpView> ParseUpsert(Cursor& c) {
  OpView op;
  uint32_t plen = 0;
  if (!c.Get(&op.id) || !c.Get(&op.dim) || !c.Get(&plen)) return c.Error("truncated upsert header");
  if (!c.Take(size_t{op.dim} * sizeof(float), &op.vector))
    return c.Error("upsert vector of dimension " + std::to_string(op.dim) + " is truncated");
  if (!c.Take(plen, &op.payload)) return c.Error("upsert payload of " + std::to_string(plen) + " bytes is truncated");
  return op;
}

Result<OpView> ParseDelete(Cursor& c) {
  OpView op;
  op.is_delete = true;
  if (!c.Get(&op.id)) return c.Error("truncated delete");
  return op;
}

// Appends every op of a batch to `out`, or nothing when any is damaged.
Status ParseBatch(Cursor& c, uint64_t lsn, std::vector<OpView>& out) {
  const size_t first = out.size();
  auto fail = [&](Status s) {
    out.resize(first);
    return s;
  };
  uint32_t count = 0;
  if (!c.Get(&count)) return c.Error("truncated batch count");
  for (uint32_t i = 0; i < count; ++i) {
    uint8_t t = 0;
    uint32_t len = 0;
    std::span<const std::byte> body;
    if (!c.Get(&t) || !c.Get(&len) || !c.Take(len, &body))
      return fail(c.Error("batch op " + std::to_string(i) + " of " + std::to_string(count) + " is truncated"));
    Cursor sub(body, lsn);
    const bool upsert = t == static_cast<uint8_t>(RecordType::kUpsert);
    if (!upsert && t != static_cast<uint8_t>(RecordType::kDelete))
      return fail(c.Error("batch op " + std::to_string(i) + " has type " + std::to_string(t)));
    Result<OpView> op = upsert ? ParseUpsert(sub) : ParseDelete(sub);
    if (!op.ok()) return fail(op.status());
    if (!sub.AtEnd()) return fail(c.Error("batch op " + std::to_string(i) + " has trailing bytes"));
    out.push_back(*op);
  }
  return Status::OK();
}

UpsertOp Materialize(const OpView& v) {
  UpsertOp op;
  op.id = v.id;
  op.vector.resize(v.dim);
  if (v.dim) std::memcpy(op.vector.data(), v.vector.data(), v.vector.size());
  op.payload.assign(v.payload.begin(), v.payload.end());
  return op;
}

}  // namespace

RecordType TypeOf(const Op& op) {
  switch (op.index()) {
    case 0: return RecordType::kUpsert;
    case 1: return RecordType::kDelete;
    case 2: return RecordType::kBatch;
    default: return RecordType::kCheckpointMarker;
  }
}

void EncodeUpsert(uint64_t id, std::span<const float> vec, std::span<const std::byte> payload,
                  std::vector<std::byte>& out) {
  out.reserve(out.size() + 16 + vec.size_bytes() + payload.size());
  Append(out, id);
  Append(out, static_cast<uint32_t>(vec.size()));
  Append(out, static_cast<uint32_t>(payload.size()));
  AppendBytes(out, vec.data(), vec.size_bytes());
  AppendBytes(out, payload.data(), payload.size());
}

void EncodeOp(const Op& op, std::vector<std::byte>& out) {
  if (auto* u = std::get_if<UpsertOp>(&op)) {
    EncodeUpsert(u->id, u->vector, u->payload, out);
  } else if (auto* d = std::get_if<DeleteOp>(&op)) {
    Append(out, d->id);
  } else if (auto* b = std::get_if<BatchOp>(&op)) {
    Append(out, static_cast<uint32_t>(b->ops.size()));
    for (const auto& sub : b->ops) {
      std::vector<std::byte> body;
      if (auto* su = std::get_if<UpsertOp>(&sub)) {
        Append(out, static_cast<uint8_t>(RecordType::kUpsert));
        EncodeUpsert(su->id, su->vector, su->payload, body);
      } else {
        Append(out, static_cast<uint8_t>(RecordType::kDelete));
        Append(body, std::get<DeleteOp>(sub).id);
      }
      Append(out, static_cast<uint32_t>(body.size()));
      AppendBytes(out, body.data(), body.size());
    }
  } else {
    const auto& m = std::get<CheckpointMarkerOp>(op);
    Append(out, m.checkpoint_lsn);
    Append(out, static_cast<uint32_t>(m.file_name.size()));
    AppendBytes(out, m.file_name.data(), m.file_name.size());
  }
}

Result<Op> DecodeOp(RecordType type, std::span<const std::byte> payload, uint64_t lsn) {
  Cursor c(payload, lsn);
  Op result;
  switch (type) {
    case RecordType::kUpsert: {
      VECWAL_ASSIGN_OR_RETURN(OpView u, ParseUpsert(c));
      result = Materialize(u);
      break;
    }
    case RecordType::kDelete: {
      VECWAL_ASSIGN_OR_RETURN(OpView d, ParseDelete(c));
      result = DeleteOp{d.id};
      break;
    }
    case RecordType::kBatch: {
      std::vector<OpView> views;
      VECWAL_RETURN_IF_ERROR(ParseBatch(c, lsn, views));
      BatchOp b;
      b.ops.reserve(views.size());
      for (const auto& v : views) {
        if (v.is_delete) b.ops.emplace_back(DeleteOp{v.id});
        else b.ops.emplace_back(Materialize(v));
      }
      result = std::move(b);
      break;
    }
    case RecordType::kCheckpointMarker: {
      CheckpointMarkerOp m;
      uint32_t n = 0;
      std::span<const std::byte> name;
      if (!c.Get(&m.checkpoint_lsn) || !c.Get(&n) || !c.Take(n, &name)) return c.Error("truncated checkpoint marker");
      m.file_name.assign(reinterpret_cast<const char*>(name.data()), name.size());
      result = std::move(m);
      break;
    }
    default:
      return Status::Corruption("record LSN " + std::to_string(lsn) + ": type " +
                                std::to_string(static_cast<int>(type)) + " carries no op");
  }
  if (!c.AtEnd()) return c.Error("trailing bytes after the op");
  return result;
}

Status DecodeOpViews(RecordType type, std::span<const std::byte> payload, uint64_t lsn, std::vector<OpView>& out) {
  if (type == RecordType::kCheckpointMarker) return DecodeOp(type, payload, lsn).status();
  Cursor c(payload, lsn);
  const size_t first = out.size();
  switch (type) {
    case RecordType::kUpsert: {
      VECWAL_ASSIGN_OR_RETURN(OpView u, ParseUpsert(c));
      out.push_back(u);
      break;
    }
    case RecordType::kDelete: {
      VECWAL_ASSIGN_OR_RETURN(OpView d, ParseDelete(c));
      out.push_back(d);
      break;
    }
    case RecordType::kBatch:
      VECWAL_RETURN_IF_ERROR(ParseBatch(c, lsn, out));
      break;
    default:
      return Status::Corruption("record LSN " + std::to_string(lsn) + ": type " +
                                std::to_string(static_cast<int>(type)) + " carries no op");
  }
  if (!c.AtEnd()) {
    out.resize(first);
    return c.Error("trailing bytes after the op");
  }
  return Status::OK();
}

}  // namespace vecwal::wal
