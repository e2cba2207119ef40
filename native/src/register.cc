// The addon's entry point (the native side of src/core/backend/torch/register.ts): one State per
// JS environment (main thread or worker), so worker threads never share a tensor table; on
// `exports`, the functions of addon.cc with that State as their data, the argument buffer's sizes
// (tensors.h), and the c10d functions (c10d.cc).
#include <node_api.h>

#include "addon.h"
#include "c10d.h"
#include "tensors.h"

namespace {

void Finalize(napi_env env, void* data, void*) {
  sf::State* s = static_cast<sf::State*>(data);
  if (s->bufRef) napi_delete_reference(env, s->bufRef);
  delete s;
}

}  // namespace

NAPI_MODULE_INIT() {
  sf::State* s = new sf::State();
  napi_set_instance_data(env, s, Finalize, nullptr);
  for (const auto& f : sf::addonFunctions()) {
    napi_value fn;
    if (napi_create_function(env, f.name, NAPI_AUTO_LENGTH, f.cb, s, &fn) != napi_ok) return nullptr;
    if (napi_set_named_property(env, exports, f.name, fn) != napi_ok) return nullptr;
  }
  napi_value v;
  napi_create_int32(env, sf::kInts, &v);
  napi_set_named_property(env, exports, "kInts", v);
  napi_create_int32(env, sf::kOut, &v);
  napi_set_named_property(env, exports, "kOut", v);
  napi_create_int32(env, sf::kFloats, &v);
  napi_set_named_property(env, exports, "kFloats", v);
  if (sf::registerC10d(env, exports) != napi_ok) return nullptr;
  return exports;
}
