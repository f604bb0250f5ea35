// Host functions: native code a guest can import, and what such code sees
// of the guest that called it.
//
//   auto linker = std::make_shared<keel::Linker>();
//   // Type (i32, i64) -> i32, derived from the callable.
//   linker->Define("host", "scale", [](keel::Caller& caller, int32_t x, int64_t factor) {
//     return x * static_cast<int32_t>(factor);
//   });
#ifndef KEEL_HOST_H_
#define KEEL_HOST_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "keel/call.h"
#include "keel/status.h"
#include "keel/value.h"

namespace keel {

// Per-instance state owned by the instance and reachable from host
// functions (e.g. a WASI context). Used on the instance's thread only.
class HostState {
 public:
  virtual ~HostState() = default;
  // The executor calls this before each call on the instance, so state of
  // one call (e.g. captured output) does not leak into the next.
  virtual void OnCallStart() {}
  // The executor calls this when a call on the instance succeeded, so the
  // host can add what it saw to the output (e.g. the captured stdout).
  virtual void AnnotateOutput(CallOutput& /*output*/) {}
  // The executor calls this when a call on the instance failed, so the host
  // can add what it saw (e.g. the guest's stderr) to the error.
  virtual void AnnotateError(Error& /*error*/) const {}

  // Fresh state for every call: Snapshot runs once, when the instance's
  // state is recorded right after its init, and Reset whenever the
  // instance is brought back to that state before another call; Reset
  // returns to what Snapshot saw. The defaults refuse: a host state keel
  // knows nothing of may carry one call's data into the next, so an
  // instance holding it gets a fresh instance per call instead. Override
  // both (a state with nothing to undo returns success from each).
  [[nodiscard]] virtual Result<void> Snapshot() {
    return MakeError(ErrorCode::kFailedPrecondition, "the instance's host state cannot be reset");
  }
  [[nodiscard]] virtual Result<void> Reset() {
    return MakeError(ErrorCode::kFailedPrecondition, "the instance's host state cannot be reset");
  }
};

// A value for the host functions of one call, given as
// CallOptions::context and read in a host function with
// caller.context<T>(). It shares ownership of the value, so the caller can
// keep a pointer too and read what the host functions left there once the
// call has resolved. Host functions run on a worker thread while the call
// runs: anything the caller also touches meanwhile needs its own
// synchronisation. Copyable.
class HostContext {
 public:
  HostContext() = default;
  // Implicit, so that {.context = std::make_shared<Session>()} reads well.
  template <typename T>
  HostContext(std::shared_ptr<T> value)  // NOLINT(google-explicit-constructor)
      : value_(std::move(value)), type_(&typeid(T)), is_const_(std::is_const_v<T>) {}

  // The value if it is a T (const T for a value given as const), else
  // nullptr; nullptr when empty.
  template <typename T>
  T* get() const {
    if (type_ == nullptr || *type_ != typeid(T) || (is_const_ && !std::is_const_v<T>)) return nullptr;
    return static_cast<T*>(const_cast<void*>(value_.get()));
  }
  explicit operator bool() const { return value_ != nullptr; }

 private:
  std::shared_ptr<const void> value_;
  const std::type_info* type_ = nullptr;
  bool is_const_ = false;
};

// What a host function sees of the instance that called it. Valid only
// during the host call, on the calling thread.
class Caller {
 public:
  virtual ~Caller() = default;

  // The instance's linear memory (empty if it has none). Valid until the
  // host function returns: no thread may read or write it after that (a
  // reset relies on it to know which pages the call wrote).
  virtual std::span<uint8_t> Memory() = 0;

  // Bounds-checked copies; kTrap/kMemoryOutOfBounds style errors as
  // kInvalidArgument naming the range when out of bounds.
  [[nodiscard]] Result<void> Read(uint64_t offset, std::span<uint8_t> out);
  [[nodiscard]] Result<void> Write(uint64_t offset, std::span<const uint8_t> in);

  // True once an interrupt aimed at the running call was requested. Host
  // functions that block must wake up and return Error(kInterrupted).
  virtual bool interrupted() const = 0;

  // `hook` runs (on the requesting thread) when an interrupt for the running
  // call is requested, so a blocked host function can wake itself. Cleared
  // when the host function returns. Runs at once if already interrupted.
  virtual void SetInterruptHook(std::function<void()> hook) = 0;

  // The instance's state (PoolOptions::host_state_factory), or nullptr.
  virtual HostState* host_state() = 0;

  // The context of the call this host function runs for
  // (CallOptions::context) if it holds a T, else nullptr.
  template <typename T>
  T* context() const {
    return call_context().get<T>();
  }
  // That context; empty when the call was submitted without one.
  const HostContext& call_context() const;
};

// A host function. Writes results.size() values of the declared types into
// `results`. An Error ends the guest's call with that error: kInterrupted
// becomes an interrupted call; anything else becomes a trap of kind
// kHostError (kExit traps keep their kind) carrying the message.
using HostFunc = std::function<Result<void>(Caller& caller, std::span<const Value> args,
                                            std::span<Value> results)>;

namespace host_internal {

template <typename T>
inline constexpr bool kIsWasmNumber =
    std::is_same_v<T, float> || std::is_same_v<T, double> ||
    (std::is_integral_v<T> && !std::is_same_v<T, bool> && (sizeof(T) == 4 || sizeof(T) == 8));

template <typename T>
constexpr ValType TypeOf() {
  static_assert(kIsWasmNumber<T>,
                "host function parameters and results are 32- or 64-bit integers, float or double");
  if constexpr (std::is_same_v<T, float>) return ValType::kF32;
  if constexpr (std::is_same_v<T, double>) return ValType::kF64;
  return sizeof(T) == 4 ? ValType::kI32 : ValType::kI64;
}

template <typename T>
T FromValue(const Value& v) {
  if constexpr (std::is_same_v<T, float>) return v.f32();
  else if constexpr (std::is_same_v<T, double>) return v.f64();
  else if constexpr (sizeof(T) == 4) return static_cast<T>(v.i32());
  else return static_cast<T>(v.i64());
}

template <typename T>
Value ToValue(T x) {
  if constexpr (std::is_same_v<T, float>) return Value::F32(x);
  else if constexpr (std::is_same_v<T, double>) return Value::F64(x);
  else if constexpr (sizeof(T) == 4) return Value::I32(static_cast<int32_t>(x));
  else return Value::I64(static_cast<int64_t>(x));
}

// Results: void, one number, or a std::tuple of numbers (multi-value).
template <typename R>
struct Results {
  static std::vector<ValType> Types() { return {TypeOf<R>()}; }
  static void Store(const R& r, std::span<Value> out) { out[0] = ToValue(r); }
};
template <>
struct Results<void> {
  static std::vector<ValType> Types() { return {}; }
};
template <typename... T>
struct Results<std::tuple<T...>> {
  static std::vector<ValType> Types() { return {TypeOf<T>()...}; }
  static void Store(const std::tuple<T...>& r, std::span<Value> out) {
    StoreAll(r, out, std::index_sequence_for<T...>{});
  }
  template <size_t... I>
  static void StoreAll(const std::tuple<T...>& r, std::span<Value> out, std::index_sequence<I...>) {
    ((out[I] = ToValue(std::get<I>(r))), ...);
  }
};

// A return type R, or Result<R> for a host function that can fail.
template <typename R>
struct Returns {
  using Value = R;
  static constexpr bool kFallible = false;
};
template <typename R>
struct Returns<Result<R>> {
  using Value = R;
  static constexpr bool kFallible = true;
};

template <typename F>
struct Signature : Signature<decltype(&F::operator())> {};
template <typename R, typename... A>
struct Signature<R (*)(A...)> {
  using Return = R;
  using Args = std::tuple<A...>;
};
template <typename R, typename... A>
struct Signature<R (*)(A...) noexcept> : Signature<R (*)(A...)> {};
template <typename C, typename R, typename... A>
struct Signature<R (C::*)(A...) const> : Signature<R (*)(A...)> {};
template <typename C, typename R, typename... A>
struct Signature<R (C::*)(A...) const noexcept> : Signature<R (*)(A...)> {};
template <typename C, typename R, typename... A>
struct Signature<R (C::*)(A...)> {
  static_assert(sizeof(C) == 0,
                "host functions run on several worker threads at once: the callable's "
                "operator() must be const (no mutable lambdas)");
};

// Parameters: optionally Caller& first, then numbers.
template <typename Args>
struct Params;
template <typename... A>
struct Params<std::tuple<A...>> {
  static constexpr bool kCaller = false;
  using Numbers = std::tuple<A...>;
};
template <typename... A>
struct Params<std::tuple<Caller&, A...>> {
  static constexpr bool kCaller = true;
  using Numbers = std::tuple<A...>;
};

template <typename F, typename... N, size_t... I>
decltype(auto) Invoke(const F& fn, Caller& caller, std::span<const Value> args, std::tuple<N...>*,
                      std::index_sequence<I...>) {
  using P = Params<typename Signature<F>::Args>;
  if constexpr (P::kCaller) {
    return fn(caller, FromValue<std::decay_t<N>>(args[I])...);
  } else {
    return fn(FromValue<std::decay_t<N>>(args[I])...);
  }
}

template <typename F>
struct Wrapped {
  using Sig = Signature<std::decay_t<F>>;
  using Numbers = typename Params<typename Sig::Args>::Numbers;
  using Ret = Returns<typename Sig::Return>;

  static FuncType Type() {
    return FuncType{ParamTypes(static_cast<Numbers*>(nullptr)), Results<typename Ret::Value>::Types()};
  }
  template <typename... N>
  static std::vector<ValType> ParamTypes(std::tuple<N...>*) {
    return {TypeOf<std::decay_t<N>>()...};
  }

  static Result<void> Call(const F& fn, Caller& caller, std::span<const Value> args,
                           std::span<Value> results) {
    auto invoke = [&]() -> decltype(auto) {
      return Invoke(fn, caller, args, static_cast<Numbers*>(nullptr),
                    std::make_index_sequence<std::tuple_size_v<Numbers>>{});
    };
    using R = typename Ret::Value;
    if constexpr (Ret::kFallible) {
      auto r = invoke();
      if (!r) return tl::unexpected(std::move(r.error()));
      if constexpr (!std::is_void_v<R>) Results<R>::Store(*r, results);
      return {};
    } else if constexpr (std::is_void_v<R>) {
      invoke();
      return {};
    } else {
      Results<R>::Store(invoke(), results);
      return {};
    }
  }
};

}  // namespace host_internal

// Host functions by (module, name). Immutable once shared; thread-safe for
// reads.
class Linker {
 public:
  struct Entry {
    FuncType type;
    HostFunc fn;
  };
  // Replaces an existing definition of the same name.
  void Define(std::string module, std::string name, FuncType type, HostFunc fn);

  // Defines a host function whose type is derived from `fn`: parameters,
  // after an optional leading `Caller&`, and results are 32- and 64-bit
  // integers (i32, i64; signed or not), float (f32) or double (f64). It
  // returns void, one number, a std::tuple of numbers (multi-value), or a
  // Result of any of these to fail the call:
  //   int32_t(Caller&, int32_t, int64_t)            (i32, i64) -> (i32)
  //   std::tuple<int32_t, int32_t>(int32_t, int32_t) (i32, i32) -> (i32, i32)
  //   Result<double>(Caller&, float)                 (f32) -> (f64)
  // `fn` runs on worker threads, possibly on several at once, so it must be
  // callable as const (no mutable lambda) and copyable.
  template <typename F>
  void Define(std::string module, std::string name, F fn) {
    using W = host_internal::Wrapped<F>;
    Define(std::move(module), std::move(name), W::Type(),
           [fn = std::move(fn)](Caller& caller, std::span<const Value> args, std::span<Value> results) {
             return W::Call(fn, caller, args, results);
           });
  }

  const Entry* Find(std::string_view module, std::string_view name) const;

 private:
  std::map<std::pair<std::string, std::string>, Entry, std::less<>> entries_;
};

}  // namespace keel

#endif  // KEEL_HOST_H_
