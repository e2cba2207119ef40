// The functions the addon exports to JS (addon.cc), which register.cc puts on `exports`; the
// typed surface is TorchAddon in src/core/backend/torch/addon.ts.
#pragma once

#include <node_api.h>

#include <vector>

namespace sf {

struct AddonFunction {
  const char* name;
  napi_callback cb;
};

// init, ops, run, create, read, free, stats, setThreads, info, adam: each expects its
// environment's State as its callback data.
const std::vector<AddonFunction>& addonFunctions();

}  // namespace sf
