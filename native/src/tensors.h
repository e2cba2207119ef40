// The addon's tensors and its argument buffer (the native side of src/core/backend/torch/backend.ts).
//
// Tensors live in libtorch and are named by small integer ids (slots in a per-environment table,
// State). The JS half writes a kernel's arguments into one shared Int32Array/Float64Array pair and
// calls run(opIndex); the op reads its inputs from there and writes every output's id, dtype and
// shape back into the output area of the same buffer (State::out). So a kernel call crosses the
// boundary with one number in, one number out, and no JS objects made.
//
// Header only: the ops call these accessors once per argument, and they stay inline.
#pragma once

#include <node_api.h>

#include <ATen/ATen.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace sf {

// ---------------------------------------------------------------- shared argument buffer
// Int32 slots [0, kOut) are arguments; [kOut, kInts) receive outputs. Float64 slots follow.
constexpr int kInts = 2048;
constexpr int kOut = 1024;
constexpr int kFloats = 64;
constexpr size_t kBufBytes = kInts * 4 + kFloats * 8;

enum DType : int32_t { kF32 = 0, kI32 = 1, kBool = 2 };

inline at::ScalarType scalarOf(int32_t d) {
  switch (d) {
    case kF32: return at::kFloat;
    case kI32: return at::kInt;
    case kBool: return at::kBool;
  }
  throw std::runtime_error("unknown dtype code " + std::to_string(d));
}

inline int32_t codeOf(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return kF32;
    case at::kInt: return kI32;
    case at::kBool: return kBool;
    default: throw std::runtime_error(std::string("unsupported result dtype ") + c10::toString(s));
  }
}

// tfjs knows float32, int32 and bool only: whatever ATen returns is brought back to those.
inline at::Tensor normalise(at::Tensor t) {
  const auto s = t.scalar_type();
  if (s == at::kFloat || s == at::kInt || s == at::kBool) return t;
  if (at::isFloatingType(s)) return t.to(at::kFloat);
  if (at::isIntegralType(s, /*includeBool=*/false)) return t.to(at::kInt);
  throw std::runtime_error(std::string("unsupported result dtype ") + c10::toString(s));
}

struct State {
  std::vector<at::Tensor> slots;
  std::vector<int32_t> freeIds;
  int64_t live = 0;
  int32_t* I = nullptr;
  double* F = nullptr;
  napi_ref bufRef = nullptr;
  c10::Device device{c10::kCPU};
  int outPos = 0;   // next free int in the output area
  int outCount = 0; // outputs written by the current op

  at::TensorOptions opts(at::ScalarType s) const { return at::TensorOptions().dtype(s).device(device); }

  int32_t put(at::Tensor t) {
    t = normalise(std::move(t));
    int32_t id;
    if (!freeIds.empty()) {
      id = freeIds.back();
      freeIds.pop_back();
      slots[id] = std::move(t);
    } else {
      id = static_cast<int32_t>(slots.size());
      slots.push_back(std::move(t));
    }
    ++live;
    return id;
  }

  const at::Tensor& get(int32_t id) const {
    if (id < 0 || id >= static_cast<int32_t>(slots.size()) || !slots[id].defined()) {
      throw std::runtime_error("tensor id " + std::to_string(id) + " is not live");
    }
    return slots[id];
  }

  void release(int32_t id) {
    if (id < 0 || id >= static_cast<int32_t>(slots.size()) || !slots[id].defined()) return;
    slots[id].reset();
    freeIds.push_back(id);
    --live;
  }

  // Argument accessors.
  int32_t i(int k) const { return I[k]; }
  double f(int k) const { return F[k]; }
  const at::Tensor& in(int k) const { return get(I[k]); }
  std::vector<int64_t> ints(int start, int n) const {
    std::vector<int64_t> v(static_cast<size_t>(n));
    for (int j = 0; j < n; ++j) v[j] = I[start + j];
    return v;
  }

  // Appends one output: [id, dtype, ndim, dims...] at the output cursor.
  void out(at::Tensor t) {
    const int32_t id = put(std::move(t));
    const at::Tensor& s = slots[id];
    const int64_t nd = s.dim();
    if (outPos + 3 + nd >= kInts) throw std::runtime_error("too many outputs for the argument buffer");
    I[outPos++] = id;
    I[outPos++] = codeOf(s.scalar_type());
    I[outPos++] = static_cast<int32_t>(nd);
    for (int64_t d = 0; d < nd; ++d) I[outPos++] = static_cast<int32_t>(s.size(d));
    ++outCount;
  }
  // An output whose dtype tfjs fixes (code < 0: keep what ATen gave, after normalise).
  void outAs(at::Tensor t, int32_t code) {
    if (code >= 0 && t.scalar_type() != scalarOf(code)) t = t.to(scalarOf(code));
    out(std::move(t));
  }
};

}  // namespace sf
