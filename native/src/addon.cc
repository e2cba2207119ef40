// The functions the addon exports to JS (the native side of src/core/backend/torch/addon.ts and
// register.ts): init binds the argument buffer and the device, run(op) runs one op of opTable()
// (kernels.h), create/read/free move tensors in and out of the State's table (tensors.h), and
// setThreads, stats, info, adam. Each is called with its environment's State as data
// (register.cc), and turns any C++ or libtorch error into a one-line JS exception (napi.h).
#include "addon.h"

#include <node_api.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <string>
#include <vector>

#include "adam.h"
#include "kernels.h"
#include "napi.h"
#include "tensors.h"

namespace sf {
namespace {

State* stateOf(napi_env env, napi_callback_info info, size_t* argc, napi_value* argv) {
  void* data = nullptr;
  NAPI_OK(napi_get_cb_info(env, info, argc, argv, nullptr, &data));
  return static_cast<State*>(data);
}


// init(buffer: ArrayBuffer, device: string): binds the argument buffer and the device.
napi_value Init(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  State* s = stateOf(env, info, &argc, argv);
  return guarded(env, "init", [&]() -> napi_value {
    if (argc < 2) throw JsError("init(buffer, device) needs two arguments");
    void* data = nullptr;
    size_t len = 0;
    NAPI_OK(napi_get_arraybuffer_info(env, argv[0], &data, &len));
    if (len < kBufBytes) throw JsError("argument buffer too small");
    char dev[64];
    size_t dlen = 0;
    NAPI_OK(napi_get_value_string_utf8(env, argv[1], dev, sizeof dev, &dlen));
    c10::Device device(std::string(dev, dlen));  // throws on a malformed name
    if (device.is_cuda()) {
      if (!at::hasCUDA()) throw JsError("device '" + std::string(dev, dlen) + "' asked for, but this libtorch has no CUDA (or no GPU is visible)");
      const int64_t n = static_cast<int64_t>(at::getNumGPUs());
      const int64_t idx = device.has_index() ? device.index() : 0;
      if (idx >= n) throw JsError("device '" + std::string(dev, dlen) + "' asked for, but only " + std::to_string(n) + " CUDA device(s) are visible");
      device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(idx));
    } else if (!device.is_cpu()) {
      throw JsError("device '" + std::string(dev, dlen) + "' is not supported: use cpu or cuda:N");
    }
    if (s->bufRef) napi_delete_reference(env, s->bufRef);
    NAPI_OK(napi_create_reference(env, argv[0], 1, &s->bufRef));
    s->I = static_cast<int32_t*>(data);
    s->F = reinterpret_cast<double*>(static_cast<char*>(data) + kInts * 4);
    s->device = device;
    return num(env, kBufBytes);
  });
}

// ops(): names of the ops, in the order run() numbers them.
napi_value Ops(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  stateOf(env, info, &argc, nullptr);
  return guarded(env, "ops", [&]() -> napi_value {
    const auto& t = opTable();
    napi_value arr;
    NAPI_OK(napi_create_array_with_length(env, t.size(), &arr));
    for (size_t k = 0; k < t.size(); ++k) {
      napi_value name;
      NAPI_OK(napi_create_string_utf8(env, t[k].first, NAPI_AUTO_LENGTH, &name));
      NAPI_OK(napi_set_element(env, arr, static_cast<uint32_t>(k), name));
    }
    return arr;
  });
}

// run(op): runs op with the arguments in the buffer; returns how many outputs it wrote at kOut.
napi_value Run(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  State* s = stateOf(env, info, &argc, argv);
  const auto& t = opTable();
  int32_t op = -1;
  napi_get_value_int32(env, argv[0], &op);
  const char* name = (op >= 0 && op < static_cast<int32_t>(t.size())) ? t[op].first : "run";
  return guarded(env, name, [&]() -> napi_value {
    if (s->I == nullptr) throw JsError("init() was not called");
    if (op < 0 || op >= static_cast<int32_t>(t.size())) throw JsError("unknown op " + std::to_string(op));
    s->outPos = kOut + 1;
    s->outCount = 0;
    t[op].second(*s);
    s->I[kOut] = s->outCount;
    return num(env, s->outCount);
  });
}

// create(values: TypedArray): a tensor from JS values; I0 dtype, I1 ndim, I2.. shape. Returns its id.
napi_value Create(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  State* s = stateOf(env, info, &argc, argv);
  return guarded(env, "write", [&]() -> napi_value {
    napi_typedarray_type type;
    size_t length = 0;
    void* data = nullptr;
    NAPI_OK(napi_get_typedarray_info(env, argv[0], &type, &length, &data, nullptr, nullptr));
    const at::ScalarType st = scalarOf(s->I[0]);
    std::vector<int64_t> shape = s->ints(2, s->I[1]);
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(st));
    const size_t bytes = static_cast<size_t>(t.numel()) * t.element_size();
    size_t given = length;
    switch (type) {
      case napi_float32_array: case napi_int32_array: case napi_uint32_array: given *= 4; break;
      case napi_float64_array: given *= 8; break;
      case napi_int16_array: case napi_uint16_array: given *= 2; break;
      default: break;
    }
    if (given != bytes) {
      throw JsError("values have " + std::to_string(given) + " bytes, the shape needs " + std::to_string(bytes));
    }
    if (bytes > 0) std::memcpy(t.data_ptr(), data, bytes);
    if (!s->device.is_cpu()) t = t.to(s->device);
    return num(env, s->put(std::move(t)));
  });
}

// read(id, into: TypedArray): copies the tensor's values (row-major) into `into`.
napi_value Read(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  State* s = stateOf(env, info, &argc, argv);
  return guarded(env, "read", [&]() -> napi_value {
    at::Tensor t = s->get(argInt(env, argv[0]));
    if (!t.device().is_cpu()) t = t.to(at::kCPU);  // waits for the device
    t = t.contiguous();
    napi_typedarray_type type;
    size_t length = 0;
    void* data = nullptr;
    NAPI_OK(napi_get_typedarray_info(env, argv[1], &type, &length, &data, nullptr, nullptr));
    const size_t elem = (type == napi_uint8_array || type == napi_int8_array) ? 1 : 4;
    const size_t bytes = static_cast<size_t>(t.numel()) * t.element_size();
    if (length * elem != bytes) throw JsError("destination has the wrong size");
    if (bytes > 0) std::memcpy(data, t.data_ptr(), bytes);
    return nullptr;
  });
}

// free(id).
napi_value Free(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  State* s = stateOf(env, info, &argc, argv);
  int32_t id = -1;
  napi_get_value_int32(env, argv[0], &id);
  s->release(id);
  return nullptr;
}

// stats(): [live tensors, bytes held by them (views counted in full)].
napi_value Stats(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  State* s = stateOf(env, info, &argc, nullptr);
  return guarded(env, "stats", [&]() -> napi_value {
    double bytes = 0;
    for (const auto& t : s->slots) {
      if (t.defined()) bytes += static_cast<double>(t.numel()) * t.element_size();
    }
    napi_value arr;
    NAPI_OK(napi_create_array_with_length(env, 2, &arr));
    NAPI_OK(napi_set_element(env, arr, 0, num(env, static_cast<double>(s->live))));
    NAPI_OK(napi_set_element(env, arr, 1, num(env, bytes)));
    return arr;
  });
}

// setThreads(n): libtorch intra-op threads for the calling thread's pool; returns the count in use.
napi_value SetThreads(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  stateOf(env, info, &argc, argv);
  return guarded(env, "setThreads", [&]() -> napi_value {
    const int32_t n = argc > 0 ? argInt(env, argv[0]) : 0;
    if (n > 0) at::set_num_threads(n);
    return num(env, at::get_num_threads());
  });
}

// adam(g, p, m, v, ema: Float32Array, scalars: Float64Array [scale, beta1, beta2, stepSize, sqrtBc2,
// eps, decay, count]): one Adam + EMA update in place with the mean of the gradient sum g over count
// samples (see adam.cc), over intra-op threads. Returns -1, or the index of the first non-finite
// value of g, in which case nothing was written.
napi_value Adam(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  stateOf(env, info, &argc, argv);
  return guarded(env, "adam", [&]() -> napi_value {
    if (argc < 6) throw JsError("adam(g, p, m, v, ema, scalars) needs six arguments");
    float* vec[5];
    size_t n = 0;
    for (int k = 0; k < 5; ++k) {
      napi_typedarray_type type;
      size_t length = 0;
      void* data = nullptr;
      NAPI_OK(napi_get_typedarray_info(env, argv[k], &type, &length, &data, nullptr, nullptr));
      if (type != napi_float32_array) throw JsError("adam: vectors must be Float32Arrays");
      if (k == 0) n = length;
      if (length != n) throw JsError("adam: vectors differ in length");
      vec[k] = static_cast<float*>(data);
    }
    napi_typedarray_type type;
    size_t length = 0;
    void* data = nullptr;
    NAPI_OK(napi_get_typedarray_info(env, argv[5], &type, &length, &data, nullptr, nullptr));
    if (type != napi_float64_array || length != 8) throw JsError("adam: scalars must be a Float64Array of 8");
    const double* sc = static_cast<const double*>(data);
    const sf::AdamScalars a{sc[0], sc[1], sc[2], sc[3], sc[4], sc[5], sc[6], sc[7]};
    if (!(a.count >= 1 && a.count < 16777216 && a.count == static_cast<double>(static_cast<int64_t>(a.count))))
      throw JsError("adam: count must be an integer in [1, 2^24)");
    const int64_t len = static_cast<int64_t>(n);
    const int64_t bad = sf::firstNonFinite(vec[0], 0, len);
    if (bad >= 0) return num(env, static_cast<double>(bad));
    at::parallel_for(0, len, 1 << 16, [&](int64_t b, int64_t e) { sf::adamRange(a, vec[0], vec[1], vec[2], vec[3], vec[4], b, e); });
    return num(env, -1);
  });
}

// info(): { cuda: boolean, gpus: number, threads: number, mkldnn: boolean }.
napi_value InfoFn(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  stateOf(env, info, &argc, nullptr);
  return guarded(env, "info", [&]() -> napi_value {
    napi_value o, v;
    NAPI_OK(napi_create_object(env, &o));
    const bool cuda = at::hasCUDA();
    NAPI_OK(napi_get_boolean(env, cuda, &v));
    NAPI_OK(napi_set_named_property(env, o, "cuda", v));
    NAPI_OK(napi_set_named_property(env, o, "gpus", num(env, cuda ? static_cast<double>(at::getNumGPUs()) : 0)));
    NAPI_OK(napi_set_named_property(env, o, "threads", num(env, at::get_num_threads())));
    NAPI_OK(napi_get_boolean(env, at::hasMKLDNN(), &v));
    NAPI_OK(napi_set_named_property(env, o, "mkldnn", v));
    return o;
  });
}

}  // namespace

const std::vector<AddonFunction>& addonFunctions() {
  static const std::vector<AddonFunction> fns = {{"init", Init}, {"ops", Ops},     {"run", Run},
                                                 {"create", Create}, {"read", Read}, {"free", Free},
                                                 {"stats", Stats}, {"setThreads", SetThreads}, {"info", InfoFn},
                                                 {"adam", Adam}};
  return fns;
}

}  // namespace sf
