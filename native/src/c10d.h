// c10d process groups for the addon (see c10d.cc).
#pragma once

#include <node_api.h>

namespace sf {

// Sets exports.c10d to the object of c10d functions that src/core/backend/torch/c10d.ts wraps.
napi_status registerC10d(napi_env env, napi_value exports);

}  // namespace sf
