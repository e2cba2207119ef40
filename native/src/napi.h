// N-API helpers of the addon's exported functions (addon.cc): errors as JS exceptions with one line
// of message, argument reading, numbers back.
#pragma once

#include <node_api.h>

#include <c10/util/Exception.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace sf {

struct JsError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline std::string firstLine(const std::string& s) {
  const auto p = s.find('\n');
  return p == std::string::npos ? s : s.substr(0, p);
}

#define NAPI_OK(call)                                                        \
  do {                                                                       \
    if ((call) != napi_ok) throw JsError("N-API call failed: " #call);       \
  } while (0)

template <typename Fn>
napi_value guarded(napi_env env, const char* what, Fn&& fn) {
  try {
    return fn();
  } catch (const c10::Error& e) {
    napi_throw_error(env, nullptr, (std::string(what) + ": " + firstLine(e.what_without_backtrace())).c_str());
  } catch (const std::exception& e) {
    napi_throw_error(env, nullptr, (std::string(what) + ": " + firstLine(e.what())).c_str());
  }
  return nullptr;
}

inline int32_t argInt(napi_env env, napi_value v) {
  int32_t r = 0;
  NAPI_OK(napi_get_value_int32(env, v, &r));
  return r;
}

inline napi_value num(napi_env env, double v) {
  napi_value r;
  NAPI_OK(napi_create_double(env, v, &r));
  return r;
}

}  // namespace sf
