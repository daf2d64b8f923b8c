// Status and Result<T>: the error values of vecwal's I/O paths.
//
// A Status is OK or carries a code, the errno that caused it (0 when none) and
// a message that names what failed (file, offset, LSN). Functions on I/O paths
// return Status or Result<T> instead of throwing; the public API may turn a
// Status into an exception at its edge.
//
// Thread safety: values; share them like ints.
#pragma once

#include <cerrno>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace vecwal {

class [[nodiscard]] Status {
 public:
  enum class Code : uint8_t {
    kOk = 0,
    kIOError,
    kCorruption,
    kNotFound,
    kInvalidArgument,
    kNotSupported,
    kUnavailable,  // the resource is held by someone else (lock) or the log has failed
    kNoSpace,
  };

  Status() = default;
  static Status OK() { return Status(); }
  static Status IOError(std::string msg, int err = 0) { return {Code::kIOError, std::move(msg), err}; }
  static Status Corruption(std::string msg) { return {Code::kCorruption, std::move(msg), 0}; }
  static Status NotFound(std::string msg) { return {Code::kNotFound, std::move(msg), 0}; }
  static Status InvalidArgument(std::string msg) { return {Code::kInvalidArgument, std::move(msg), 0}; }
  static Status NotSupported(std::string msg, int err = 0) { return {Code::kNotSupported, std::move(msg), err}; }
  static Status Unavailable(std::string msg, int err = 0) { return {Code::kUnavailable, std::move(msg), err}; }
  static Status NoSpace(std::string msg) { return {Code::kNoSpace, std::move(msg), ENOSPC}; }
  // Maps an errno (as from errno or -cqe->res) to the matching code; `what`
  // names the operation and its object, e.g. "write wal-0001.log at 8192".
  static Status FromErrno(int err, std::string_view what);

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  int sys_errno() const { return errno_; }
  const std::string& message() const { return msg_; }
  bool IsCorruption() const { return code_ == Code::kCorruption; }
  bool IsNotFound() const { return code_ == Code::kNotFound; }
  bool IsNoSpace() const { return code_ == Code::kNoSpace; }
  std::string ToString() const;

  // Returns a copy whose message is prefixed with `context: `.
  Status WithContext(std::string_view context) const;

 private:
  Status(Code c, std::string msg, int err) : code_(c), errno_(err), msg_(std::move(msg)) {}
  Code code_ = Code::kOk;
  int errno_ = 0;
  std::string msg_;
};

// A T or the Status saying why there is none (abseil's StatusOr).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}           // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {}    // NOLINT: implicit by design
  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }

 private:
  std::variant<Status, T> v_;
};

}  // namespace vecwal

// Returns early from the enclosing function when `expr` is not OK.
#define VECWAL_RETURN_IF_ERROR(expr)          \
  do {                                        \
    ::vecwal::Status _vw_s = (expr);          \
    if (!_vw_s.ok()) return _vw_s;            \
  } while (0)

#define VECWAL_CONCAT_INNER(a, b) a##b
#define VECWAL_CONCAT(a, b) VECWAL_CONCAT_INNER(a, b)
// Declares `lhs` from a Result, or returns its Status.
#define VECWAL_ASSIGN_OR_RETURN(lhs, expr) \
  VECWAL_ASSIGN_OR_RETURN_IMPL(VECWAL_CONCAT(_vw_r_, __LINE__), lhs, expr)
#define VECWAL_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()
