# Built by native/build.mjs, which finds libtorch and passes its location in SCOREFLOW_TORCH_* variables.
{
  "targets": [
    {
      # Plain C++ loops without libtorch headers, at -O3 so they vectorise (see fused.cc).
      "target_name": "sf_fused",
      "type": "static_library",
      "sources": ["src/fused.cc"],
      "cflags": ["-fPIC"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-O3", "-fno-trapping-math", "-fno-math-errno", "-fexceptions"]
    },
    {
      # Adam + EMA, bit-identical to the JavaScript update: no FMA contraction, no target clones.
      "target_name": "sf_exact",
      "type": "static_library",
      "sources": ["src/adam.cc"],
      "cflags": ["-fPIC"],
      "cflags_cc": ["-O3", "-ffp-contract=off", "-fno-math-errno"]
    },
    {
      "target_name": "scoreflow_torch",
      "dependencies": ["sf_fused", "sf_exact"],
      # register.cc is the entry point; each file says what it holds in its header.
      "sources": ["src/register.cc", "src/addon.cc", "src/kernels.cc", "src/group_norm.cc", "src/conv.cc",
                  "src/c10d.cc", "src/store.cc"],
      "include_dirs": ["<!@(node -p \"process.env.SCOREFLOW_TORCH_INCLUDES || ''\")"],
      # USE_C10D_GLOO / USE_C10D_NCCL where build.mjs found them (see c10dConfig there).
      "defines": ["_GLIBCXX_USE_CXX11_ABI=<!(node -p \"process.env.SCOREFLOW_TORCH_CXX11_ABI || '1'\")",
                  "<!@(node -p \"process.env.SCOREFLOW_TORCH_DEFINES || ''\")"],
      "cflags!": ["-O3"],
      "cflags_cc!": ["-fno-rtti", "-fno-exceptions", "-O3"],
      # -std: what libtorch's headers ask for (build.mjs reads ATen/ATen.h); it comes after, so it
      # overrides, the -std=gnu++17 of Node's common.gypi.
      "cflags_cc": ["-O2", "-fexceptions", "-frtti", "-Wno-unused-parameter", "-Wno-deprecated-declarations",
                    "-std=<!(node -p \"process.env.SCOREFLOW_TORCH_CXXSTD || 'gnu++17'\")"],
      "libraries": [
        "-L<!(node -p \"process.env.SCOREFLOW_TORCH_LIBDIR || ''\")",
        "-Wl,-rpath,<!(node -p \"process.env.SCOREFLOW_TORCH_LIBDIR || ''\")",
        "<!@(node -p \"process.env.SCOREFLOW_TORCH_LIBS || ''\")"
      ]
    }
  ]
}
