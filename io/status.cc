#include "io/status.h"

#include <cstring>

namespace vecwal {

Status Status::FromErrno(int err, std::string_view what) {
  std::string msg = std::string(what) + ": " + std::strerror(err);
  switch (err) {
    case ENOSPC:
    case EDQUOT:
      return {Code::kNoSpace, std::move(msg), err};
    case ENOENT:
      return {Code::kNotFound, std::move(msg), err};
    case EINVAL:
      return {Code::kInvalidArgument, std::move(msg), err};
    case EOPNOTSUPP:
    case ENOSYS:
      return {Code::kNotSupported, std::move(msg), err};
    case EAGAIN:  // == EWOULDBLOCK on Linux
    case EBUSY:
      return {Code::kUnavailable, std::move(msg), err};
    default:
      return {Code::kIOError, std::move(msg), err};
  }
}

std::string Status::ToString() const {
  const char* name = "OK";
  switch (code_) {
    case Code::kOk: return "OK";
    case Code::kIOError: name = "IO error"; break;
    case Code::kCorruption: name = "Corruption"; break;
    case Code::kNotFound: name = "Not found"; break;
    case Code::kInvalidArgument: name = "Invalid argument"; break;
    case Code::kNotSupported: name = "Not supported"; break;
    case Code::kUnavailable: name = "Unavailable"; break;
    case Code::kNoSpace: name = "No space"; break;
  }
  return std::string(name) + ": " + msg_;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  Status s = *this;
  s.msg_ = std::string(context) + ": " + msg_;
  return s;
}

}  // namespace vecwal
