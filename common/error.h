// The one error type of vmlaunch, and Result<T>, the value-or-error every fallible call returns.
//
// Errors are values, never exceptions: common/ and helper/ build without exception support.
// An Error crosses a process boundary only serialized (encode_error in broker_protocol.h, or a
// D-Bus error named after its code): its code, its errno and its context, nothing else.
#pragma once

#include <cerrno>
#include <string>
#include <utility>
#include <variant>

namespace vl {

/// What kind of failure an Error is; callers branch on this, people read the context.
enum class ErrorCode : unsigned char {
  kSystem,       ///< a system call failed; sys_errno says why
  kInvalid,      ///< input (config, XML, request, name) is malformed or violates a rule
  kUnsupported,  ///< well-formed input asking for something vmlaunch does not do
  kNotFound,     ///< a named object (VM, zone, file) does not exist
  kConflict,     ///< the object exists or is in use (already running, MAC taken)
  kDenied,       ///< the caller is not allowed to do this
  kInternal,     ///< a bug or an impossible state
};

/// Stable lower-case name of a code ("system", "invalid", ...), used on the wire.
const char* error_code_name(ErrorCode code);
/// Inverse of error_code_name; unknown names map to kInternal.
ErrorCode error_code_from_name(std::string_view name);

/// A failure: what kind, the errno if a system call failed, and a context naming the step and
/// the object ("Failed to open disk '/srv/a.img'").
struct Error {
  ErrorCode code = ErrorCode::kInternal;
  int sys_errno = 0;
  std::string context;

  /// The error as one line for people: the context, then ": strerror" for system errors.
  std::string message() const;

  /// A system error from the current errno.
  static Error from_errno(std::string context) { return from_errno(errno, std::move(context)); }
  /// A system error from an explicit errno value.
  static Error from_errno(int err, std::string context) {
    return Error{ErrorCode::kSystem, err, std::move(context)};
  }
  /// A non-system error of the given kind.
  static Error make(ErrorCode code, std::string context) {
    return Error{code, 0, std::move(context)};
  }
  static Error invalid(std::string context) { return make(ErrorCode::kInvalid, std::move(context)); }
  static Error unsupported(std::string context) {
    return make(ErrorCode::kUnsupported, std::move(context));
  }

  /// The same error with "outer: " prepended to the context.
  Error wrap(std::string_view outer) const&;
  Error wrap(std::string_view outer) &&;
};

/// A value or an Error. [[nodiscard]]: an ignored Result is a swallowed error.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const& { return std::get<1>(v_); }
  Error&& error() && { return std::get<1>(std::move(v_)); }

 private:
  std::variant<T, Error> v_;
};

/// Success or an Error.
template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), failed_(true) {}  // NOLINT

  bool ok() const { return !failed_; }
  explicit operator bool() const { return ok(); }
  const Error& error() const& { return error_; }
  Error&& error() && { return std::move(error_); }

 private:
  Error error_;
  bool failed_ = false;
};

}  // namespace vl

/// Evaluates a Result<T> expression; on error returns the error from the enclosing function,
/// otherwise yields the value. (A GNU statement expression: it keeps call sites linear.)
#define VL_TRY(expr)                                        \
  ({                                                        \
    auto vl_try_result_ = (expr);                           \
    if (!vl_try_result_) return std::move(vl_try_result_).error(); \
    std::move(vl_try_result_).value();                      \
  })

/// Evaluates a Result<void> expression and returns its error from the enclosing function.
#define VL_CHECK(expr)                                                           \
  do {                                                                           \
    if (auto vl_check_result_ = (expr); !vl_check_result_)                       \
      return std::move(vl_check_result_).error();                                \
  } while (0)
